"""``spine-seg`` command line: convert, export, predict, table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep import cli as convert_cli
from data_prep.cases import DICOM_SUFFIXES, dicom_files
from spine_seg.batch_report import CHECKS_FILE
from spine_seg.errors import run_reporting_errors
from spine_seg.evaluation_table import structure_names
from spine_seg.export import ExportFormat, export_dir, shapes_from_dataset_json
from spine_seg.label_layout import LAYOUTS, num_structures
from spine_seg.predict import BACKENDS, DEFAULT_BUNDLE, bundle_structure_names, predict


def _format(args: argparse.Namespace) -> ExportFormat:
    if args.dataset_json:
        return ExportFormat.from_dataset_json(args.dataset_json)
    return ExportFormat(args.layout, args.channels)


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-json", help="dataset.json from data_prep: gives the layout and channel count")
    parser.add_argument("--layout", choices=LAYOUTS, default="background-last", help="without --dataset-json")
    parser.add_argument("--channels", type=int, default=7, help="without --dataset-json")


def _export(args: argparse.Namespace) -> int:
    shapes = shapes_from_dataset_json(args.dataset_json) if args.dataset_json else None
    fmt = _format(args)
    names = structure_names(args.dataset_json, num_structures(fmt.layout, fmt.channels)) if args.dataset_json else None
    report = export_dir(args.pred_dir, args.out_dir, fmt, shapes, not args.no_progress, names)
    print(f"exported {len(report.written)} -> {args.out_dir}; {report.summary()}; every case's status in "
          f"{Path(args.out_dir) / CHECKS_FILE}")
    for line in report.problem_lines():
        print(line)
    return 0 if report.written and not report.bad else 1


def _dicoms(paths: list[str]) -> list[Path]:
    """The files named, and the DICOM files in the folders named; a missing path or a folder without DICOM
    files is an error (before anything is segmented)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if not p.is_dir():
            files.append(p)
            continue
        found = dicom_files(p)
        if not found:
            others = sum(1 for q in p.iterdir() if not q.name.startswith("."))
            raise FileNotFoundError(
                f"{p}: no DICOM files ({', '.join(DICOM_SUFFIXES)}) in this folder ({others} other entries); "
                "name other files one by one"
            )
        files += found
    return files


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _predict(args: argparse.Namespace) -> int:
    fmt = _format(args)
    n = num_structures(fmt.layout, fmt.channels)
    if args.structure_names:
        names = args.structure_names.split(",")
    elif args.dataset_json:
        names = structure_names(args.dataset_json, n)
    else:
        shipped = bundle_structure_names(Path(args.bundle))
        names = shipped if n == len(shipped) else None
    onnx = args.backend == "onnx"
    for option, stage in (("coarse_weights", "stage-1"), ("refine_weights", "stage-3")):
        if onnx and getattr(args, option):
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{flag} is for the torch backend; with --backend onnx the {stage} model is the one "
                             "named in --weights' metadata, beside it (write all with `make export-model`)")
    images = _dicoms(args.images)[: args.limit]
    weights = {"ckpt_path": args.weights, "coarse_ckpt_path": args.coarse_weights,
               "refine_ckpt_path": args.refine_weights}
    overrides = {k: v for k, v in weights.items() if v and not onnx}
    report = predict(
        images, args.out, fmt, Path(args.bundle), not args.no_overlay, names, not args.no_progress,
        backend=args.backend, onnx_model=args.weights if onnx else None, dicom_seg=args.dicom_seg, **overrides,
    )
    print(f"wrote {len(report.written)} files to {args.out}; {report.summary()}; every case's status in "
          f"{Path(args.out) / CHECKS_FILE}")
    for line in report.problem_lines():
        print(line)
    return 0 if report.written and not report.bad else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spine-seg", description="Vertebra segmentation of spine radiographs")
    sub = parser.add_subparsers(dest="command", required=True)
    convert_cli.build_parser(sub.add_parser("convert", help="DICOM + .mat -> NIfTI pairs + dataset.json"))

    exp = sub.add_parser("export", help="prediction NIfTI -> challenge .npy (R x C x K uint8)")
    exp.add_argument("pred_dir")
    exp.add_argument("out_dir")
    _add_format_options(exp)
    exp.add_argument("--no-progress", action="store_true")

    pred = sub.add_parser("predict", help="DICOM -> challenge .npy + overlay PNG with the bundle's weights")
    pred.add_argument("images", nargs="+", help="DICOM files, or folders of DICOM files (.dcm, .dicom)")
    pred.add_argument("--out", required=True, help="output folder")
    pred.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="MONAI bundle folder")
    pred.add_argument(
        "--weights", help="checkpoint to use instead of <bundle>/models/model.pt (model.onnx with --backend onnx)"
    )
    pred.add_argument(
        "--coarse-weights", help="stage-1 checkpoint instead of <bundle>/models/coarse.pt (torch backend)"
    )
    pred.add_argument(
        "--refine-weights",
        help="stage-3 (per-vertebra) checkpoint instead of <bundle>/models/refine.pt (torch backend)",
    )
    pred.add_argument(
        "--backend", choices=BACKENDS, default="torch",
        help="torch: the bundle's inference.json; onnx: the exported model.onnx with onnxruntime",
    )
    pred.add_argument("--dicom-seg", action="store_true", help="also write <id>_seg.dcm, a DICOM Segmentation")
    pred.add_argument(
        "--structure-names",
        help="comma-separated, in label order; default: --dataset-json's labels, else those of the bundle's "
        "metadata.json (T12,L1,L2,L3,L4,L5) where the format has as many structures",
    )
    pred.add_argument("--limit", type=_positive, help="only the first N images")
    pred.add_argument("--no-overlay", action="store_true")
    pred.add_argument("--no-progress", action="store_true")
    _add_format_options(pred)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"convert": convert_cli.run, "export": _export, "predict": _predict}[args.command]
    return run_reporting_errors(lambda: command(args))


if __name__ == "__main__":
    sys.exit(main())
