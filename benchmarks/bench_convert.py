"""Benchmark the DICOM + .mat -> NIfTI conversion; prints figures, asserts nothing.

Writes ``--count`` phantom radiographs of ``--shape`` pixels (JPEG-baseline DICOM, like the real data, with
v5 ``.mat`` masks) into a temporary challenge folder, converts them with ``data_prep.convert.convert`` and
prints seconds per image and peak resident memory (the converting process, plus its worker processes when
``--workers`` > 1). Target: <= 1.0 s/image and <= 1 GB peak.

    python benchmarks/bench_convert.py                     # 20 images of 3000 x 2500 px, 1 worker
    python benchmarks/bench_convert.py --workers 2
    python benchmarks/bench_convert.py --profile           # also cProfile one conversion (top functions)

Making the phantoms, profiling and the timed conversion each run in their own process: Linux keeps a
process's peak RSS across fork + exec, so the parent here stays small and the figures are the conversion's.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _make(root: Path, count: int, shape: tuple[int, int]) -> None:
    from spine_seg.phantom import write_challenge_folder

    write_challenge_folder(root, n_train=count, n_test=0, shape=shape, transfer_syntax="jpeg-baseline")


def _profile(src: Path, out: Path) -> None:
    from data_prep.convert import convert

    profiler = cProfile.Profile()
    profiler.enable()
    convert(src, out, workers=1, progress=False)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(15)
    print(stream.getvalue())


def _measure(src: Path, out: Path, workers: int) -> None:
    """Convert in this fresh process; print the figures as JSON (ru_maxrss is in kB on Linux)."""
    from data_prep.convert import convert

    start = time.perf_counter()
    report = convert(src, out, workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    result = {
        "elapsed": elapsed,
        "converted": len(report.converted),
        "bad": len(report.bad),
        "own_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    print(json.dumps(result))


def _run(*args: str) -> str:
    return subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="number of training images")
    parser.add_argument("--shape", type=int, nargs=2, default=(3000, 2500), metavar=("ROWS", "COLS"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also cProfile a single-image conversion")
    parser.add_argument("--keep", help="write the data and outputs here instead of a temporary folder")
    parser.add_argument("--step", choices=["make", "profile", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.shape[0], args.shape[1])
    if args.step == "make":
        return _make(Path(args.src), args.count, shape)
    if args.step == "profile":
        return _profile(Path(args.src), Path(args.out))
    if args.step == "measure":
        return _measure(Path(args.src), Path(args.out), args.workers)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_convert_"))
    size = ["--shape", str(shape[0]), str(shape[1])]
    try:
        src = tmp / "raw"
        t0 = time.perf_counter()
        _run("--step", "make", "--src", str(src), "--count", str(args.count), *size)
        size_mb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 1e6
        print(f"inputs: {args.count} x {shape[0]}x{shape[1]} px JPEG-baseline DICOM + v5 .mat, "
              f"{size_mb:.1f} MB, made in {time.perf_counter() - t0:.1f} s")
        if args.profile:
            one = tmp / "one"
            _run("--step", "make", "--src", str(one), "--count", "1", *size)
            print(_run("--step", "profile", "--src", str(one), "--out", str(tmp / "one_out")))

        out = _run("--step", "measure", "--src", str(src), "--out", str(tmp / "out"), "--workers", str(args.workers))
        result = json.loads(out.splitlines()[-1])
        converted = max(result["converted"], 1)
        out_mb = sum(p.stat().st_size for p in (tmp / "out").rglob("*") if p.is_file()) / 1e6
        print(f"converted {result['converted']}, bad {result['bad']}, outputs {out_mb:.1f} MB")
        print(f"workers {args.workers}: {result['elapsed']:.1f} s total, {result['elapsed'] / converted:.2f} s/image")
        if args.workers > 1:
            total = result["own_mb"] + args.workers * result["child_mb"]
            print(f"peak RSS: main {result['own_mb']:.0f} MB, largest worker {result['child_mb']:.0f} MB, "
                  f"all processes together at most {total:.0f} MB")
        else:
            print(f"peak RSS: {result['own_mb']:.0f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
