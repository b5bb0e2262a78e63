"""Command line: ``python -m data_prep SRC OUT`` (also ``spine-seg convert``)."""

from __future__ import annotations

import argparse
import os
import sys

from data_prep.convert import Options, convert
from spine_seg.errors import run_reporting_errors
from spine_seg.label_layout import LAYOUTS
from spine_seg.mat_io import DEFAULT_KEY


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    parser.add_argument("src", help="raw folder: train/img + train/label + test/img, or flat .dcm/.mat files")
    parser.add_argument("out", help="output folder for imagesTr/, labelsTr/, imagesTs/ and dataset.json")
    parser.add_argument("--label-key", default=DEFAULT_KEY, help="variable name in the .mat files")
    parser.add_argument("--channels", type=int, default=7, help="expected channel count K of the masks")
    parser.add_argument("--label-layout", choices=LAYOUTS, help="override layout detection")
    parser.add_argument("--structure-names", help="comma-separated names of the structures, in channel order")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any file is bad")
    parser.add_argument(
        "--new-source", action="store_true",
        help="out holds a conversion of another folder, a copy of the same data set: convert src into it anyway",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    options = Options(args.label_key, args.channels, args.label_layout)
    names = args.structure_names.split(",") if args.structure_names else None
    report = convert(args.src, args.out, options, names, args.workers, progress=not args.no_progress,
                     new_source=args.new_source)
    print(report.table())
    print(f"dataset: {os.path.join(args.out, 'dataset.json')}")
    if not (report.converted or report.skipped) or (args.strict and report.bad):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
