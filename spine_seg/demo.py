"""``make demo``: segment a few radiographs with the shipped weights; writes ``.npy`` masks and overlay PNGs.

Uses the real test radiographs in ``--raw``/test/img when present, otherwise generates phantom radiographs
(and says so: the shipped model is trained on real X-rays, so phantom results only show the pipeline runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.cases import dicom_files
from spine_seg.batch_report import CHECKS_FILE
from spine_seg.predict import DEFAULT_BUNDLE, bundle_structure_names, predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="../shared/data/aasce", help="folder in the challenge layout")
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--count", type=int, default=4, help="number of radiographs")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    args = parser.parse_args(argv)
    out = Path(args.out)
    images = dicom_files(Path(args.raw) / "test" / "img")[: args.count]
    if images:
        print(f"demo: {len(images)} real radiographs from {Path(args.raw) / 'test' / 'img'}")
    else:
        from spine_seg.phantom import write_challenge_folder

        root = write_challenge_folder(out / "phantom-input", n_train=0, n_test=args.count, shape=(1024, 512))
        images = dicom_files(root / "test" / "img")
        print(f"demo: {args.raw} not found, so using {len(images)} generated PHANTOM radiographs in {root}")
    bundle = Path(args.bundle)
    report = predict(images, out, bundle_dir=bundle, structure_names=bundle_structure_names(bundle))
    for line in report.problem_lines():
        print(line)
    npys = sorted(p for p in report.written if p.suffix == ".npy")
    print(f"demo: wrote {len(npys)} masks (.npy, R x C x 7 uint8) and their overlay PNGs to {out.resolve()}")
    print(f"  {report.summary()}; each case's status (ok / check / bad): {out / CHECKS_FILE}")
    for p in npys:
        print(f"  {p}  {p.with_suffix('.png')}")
    return 0 if npys and not report.bad else 1


if __name__ == "__main__":
    sys.exit(main())
