"""DICOM radiographs -> challenge ``.npy`` masks (+ overlay PNGs, DICOM SEG) with the bundle's inference config.

The bundle's ``configs/inference.json`` does all the image work (resampling, network, restoring the
original grid, largest component per vertebra); this module only feeds it and exports its output. The
``onnx`` backend runs the same steps on the exported model with onnxruntime (:mod:`spine_seg.onnx_predict`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spine_seg.anatomy import plausibility_problems
from spine_seg.batch_report import BatchReport
from spine_seg.dicom_io import Radiograph, read_radiograph
from spine_seg.errors import InputFileError
from spine_seg.export import ExportFormat, class_map_to_challenge, save_npy
from spine_seg.label_layout import num_structures
from spine_seg.nifti_io import read_nifti, write_nifti
from spine_seg.overlay import save_overlay

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CHALLENGE_FORMAT = ExportFormat("background-last", 7)
BACKENDS = ("torch", "onnx")


def check_checkpoint(ckpt: Path) -> None:
    """Raise RuntimeError naming ``ckpt`` when it is not a loadable PyTorch state dict."""
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a damaged file
        raise RuntimeError(f"{ckpt}: cannot load the weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise RuntimeError(f"{ckpt}: cannot load the weights (a state dict is expected, got {type(state).__name__})")


def run_bundle_inference(
    datalist: list[dict[str, str]], output_dir: Path, bundle_dir: Path = DEFAULT_BUNDLE, **overrides: object
) -> None:
    """Run ``bundle_dir/configs/inference.json`` over ``datalist``; writes ``<id>_seg.nii.gz`` to output_dir.

    Both stages' weights (``coarse_ckpt_path``, ``ckpt_path``; default the bundle's) are checked first."""
    from monai.bundle import ConfigWorkflow

    bundle_dir = Path(bundle_dir).resolve()
    ckpt = Path(str(overrides.pop("ckpt_path", bundle_dir / "models" / "model.pt")))
    coarse = Path(str(overrides.pop("coarse_ckpt_path", bundle_dir / "models" / "coarse.pt")))
    for weights in (coarse, ckpt):
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no trained weights; train with `make train` or pass other weights")
        check_checkpoint(weights)
    workflow = ConfigWorkflow(
        config_file=str(bundle_dir / "configs" / "inference.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(bundle_dir),
        ckpt_path=str(ckpt),
        coarse_ckpt_path=str(coarse),
        datalist=datalist,
        output_dir=str(output_dir),
        **overrides,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()


def _bundle_class_maps(
    radiographs: dict[str, Radiograph], tmp_dir: Path, bundle_dir: Path, **overrides: object
) -> Iterator[tuple[str, np.ndarray]]:
    """``(case, class map)`` from the bundle's ``inference.json`` (torch backend)."""
    for case, radiograph in radiographs.items():
        write_nifti(tmp_dir / "img" / f"{case}.nii", radiograph.pixels, radiograph.spacing)
    datalist = [{"image": str(tmp_dir / "img" / f"{c}.nii")} for c in radiographs]
    run_bundle_inference(datalist, tmp_dir / "pred", bundle_dir, **overrides)
    for case in radiographs:
        yield case, read_nifti(tmp_dir / "pred" / f"{case}_seg.nii.gz")


def _onnx_class_maps(radiographs: dict[str, Radiograph], model: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(case, class map)`` from the exported ONNX model with onnxruntime (onnx backend)."""
    from spine_seg.onnx_predict import OnnxSegmenter

    segment = OnnxSegmenter(model)
    for case, radiograph in radiographs.items():
        yield case, segment(radiograph.pixels)


def predict(
    images: list[Path],
    out_dir: str | Path,
    fmt: ExportFormat = CHALLENGE_FORMAT,
    bundle_dir: Path = DEFAULT_BUNDLE,
    overlays: bool = True,
    structure_names: list[str] | None = None,
    progress: bool = True,
    backend: str = "torch",
    onnx_model: str | Path | None = None,
    dicom_seg: bool = False,
    **overrides: object,
) -> BatchReport:
    """Segment DICOM ``images`` and write ``out_dir/<id>.npy`` (``R x C x K`` uint8) and ``<id>.png`` overlays.

    ``backend``: ``"torch"`` runs the bundle's ``inference.json`` (``overrides`` go to its config), ``"onnx"``
    runs ``onnx_model`` (default ``<bundle>/models/model.onnx``) with onnxruntime. ``dicom_seg`` also writes
    ``<id>_seg.dcm``, a DICOM Segmentation referencing the source image. Unreadable images are reported in the
    result and do not stop the others; ``out_dir/checks.csv`` lists every case with its status (ok, check: an
    implausible prediction to review, bad: with the cause).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnx" and overrides:
        raise ValueError(f"config overrides ({', '.join(overrides)}) apply to the torch backend only")
    out_dir = Path(out_dir)
    report = BatchReport()
    n = num_structures(fmt.layout, fmt.channels)
    names = structure_names or [f"Structure {k}" for k in range(1, n + 1)]
    if dicom_seg and len(names) != n:
        raise ValueError(f"{len(names)} structure names for {n} structures: {', '.join(names)}")
    radiographs, sources = {}, {}
    report.cases = list(dict.fromkeys(Path(p).stem for p in images))
    for path in tqdm(images, desc="read", unit="img", disable=not progress):
        case = Path(path).stem
        if case in sources:
            duplicate = f"{path}: same case id {case!r} as {sources[case]}; not segmented"
            report.bad[case] = f"{report.bad[case]}; {duplicate}" if case in report.bad else duplicate
            radiographs.pop(case, None)
            continue
        try:
            radiographs[case] = read_radiograph(path)
        except InputFileError as err:
            report.bad[case] = str(err)
        sources[case] = Path(path)
    with tempfile.TemporaryDirectory(prefix="spine-seg-") as tmp:
        if not radiographs:
            class_maps: Iterator[tuple[str, np.ndarray]] = iter(())
        elif backend == "onnx":
            class_maps = _onnx_class_maps(radiographs, Path(onnx_model or bundle_dir / "models" / "model.onnx"))
        else:
            class_maps = _bundle_class_maps(radiographs, Path(tmp), bundle_dir, **overrides)
        bar = tqdm(class_maps, desc="export", unit="img", total=len(radiographs), disable=not progress)
        for case, class_map in bar:
            radiograph = radiographs[case]
            if class_map.shape != radiograph.pixels.shape:
                report.bad[case] = f"{case}: prediction {class_map.shape} differs from image {radiograph.pixels.shape}"
                continue
            problems = plausibility_problems(class_map, n, structure_names)
            if problems:
                report.implausible[case] = problems
            save_npy(out_dir / f"{case}.npy", class_map_to_challenge(class_map, fmt))
            report.written.append(out_dir / f"{case}.npy")
            if overlays:
                save_overlay(out_dir / f"{case}.png", radiograph.pixels, class_map, warnings=problems)
                report.written.append(out_dir / f"{case}.png")
            if dicom_seg:
                from spine_seg.dicom_seg import write_dicom_seg  # highdicom comes with the `export` extra

                try:
                    report.written.append(write_dicom_seg(out_dir / f"{case}_seg.dcm", sources[case], class_map, names))
                except Exception as err:  # noqa: BLE001 - highdicom raises many types; one bad source must not stop
                    report.bad[case] = f"{case}: DICOM SEG not written ({type(err).__name__}: {err})"
    report.write_checks(out_dir)
    return report
