"""DICOM radiographs -> challenge ``.npy`` masks (+ overlay PNGs, DICOM SEG) with the bundle's inference config.

The bundle's ``configs/inference.json`` does all the image work (resampling, network, restoring the
original grid, largest component per vertebra); this module only feeds it and exports its output. The
``onnx`` backend runs the same steps on the exported model with onnxruntime (:mod:`spine_seg.onnx_predict`).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from spine_seg.anatomy import plausibility_problems
from spine_seg.atomic import write_text_atomic
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
CHUNK = 16  # radiographs read, segmented and written at a time (bounds the memory a long batch holds)
MIN_SIDE = 16  # pixels: smaller images are refused
OUTPUT_SUFFIXES = (".npy", ".png", "_seg.dcm")  # what predict writes per case
# The bundle's warnings and errors only: predict reports each image itself. Left out as well: the workflow's note
# that it applied this config, and the nvImageCodec DICOM reader's warning on each run that it has no GPU decoder
# (MONAI's LoadImage builds every reader it has; the bundle reads NIfTI only, predict decodes the DICOM itself).
NVIMGCODEC_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"
QUIET_LOGGING = """[loggers]
keys=root,workflow,nvimgcodec
[logger_workflow]
level=WARNING
handlers=
qualname=monai.bundle.workflows
[logger_nvimgcodec]
level=ERROR
handlers=
qualname=monai.data.nvimgcodec_pydicom_plugin
[handlers]
keys=console
[formatters]
keys=plain
[logger_root]
level=WARNING
handlers=console
[handler_console]
class=StreamHandler
level=WARNING
formatter=plain
args=(sys.stderr,)
[formatter_plain]
format=%(name)s - %(levelname)s - %(message)s
"""


def bundle_structure_names(bundle_dir: Path = DEFAULT_BUNDLE) -> list[str]:
    """The structures the bundle's own model segments, in label order: ``metadata.json``'s output
    ``channel_def`` without the background (channel 0)."""
    meta = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channels[str(k)] for k in range(1, len(channels))]


def load_state(ckpt: Path) -> tuple[dict, str]:
    """The state dict in ``ckpt`` and its key: ``""`` when plain, ``"model"`` in a trainer checkpoint. Raises
    RuntimeError naming ``ckpt`` when it is not a loadable PyTorch state dict."""
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a damaged file
        raise RuntimeError(f"{ckpt}: cannot load the weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise RuntimeError(f"{ckpt}: cannot load the weights (a state dict is expected, got {type(state).__name__})")
    return (state["model"], "model") if isinstance(state.get("model"), dict) else (state, "")


def state_classes(state: Mapping[str, Any], ckpt: Path) -> int:
    """The number of classes (background included) that the BasicUNet weights ``state``, read from ``ckpt``,
    predict: the output channels of their ``final_conv``. Raises RuntimeError naming ``ckpt`` for others."""
    bias = state.get("final_conv.bias")
    if bias is None or bias.ndim != 1:
        raise RuntimeError(f"{ckpt}: not the weights of the bundle's BasicUNet (no final_conv.bias)")
    return int(bias.shape[0])


def checkpoint_classes(ckpt: Path) -> int:
    """:func:`state_classes` of the weights in ``ckpt``."""
    return state_classes(load_state(ckpt)[0], ckpt)


def stage_classes(coarse: Path, fine: Path) -> int:
    """The class count of the stage-1 (``coarse``) and stage-2 (``fine``) weights, which must be the same."""
    classes = checkpoint_classes(coarse), checkpoint_classes(fine)
    if classes[0] != classes[1]:
        raise RuntimeError(f"{coarse} predicts {classes[0]} classes but {fine} {classes[1]}: the two stages must "
                           "come from one training set")
    return classes[1]


REFINE_CLASSES = 3  # stage 3: background, the window's vertebra, the other vertebrae


class Weights(NamedTuple):
    """The three stages' checkpoints (``refine`` is None where stage 3 is switched off) and the number of classes
    (background included) that stages 1 and 2 both predict."""

    coarse: Path
    fine: Path
    refine: Path | None
    num_classes: int


def refines(overrides: Mapping[str, object]) -> bool:
    """Whether the bundle runs stage 3: its ``refine_vertebrae``, unless ``overrides`` switch it off (``False``,
    or a string such as the command line's ``"false"``, read as the configs read it)."""
    from monai.utils import str2bool

    return str2bool(overrides.get("refine_vertebrae", True))


def bundle_weights(bundle_dir: Path = DEFAULT_BUNDLE, **overrides: object) -> Weights:
    """The stage-1, stage-2 and stage-3 checkpoints (``coarse_ckpt_path``, ``ckpt_path``, ``refine_ckpt_path`` in
    ``overrides``, default the bundle's; stage 3 only where :func:`refines`), each checked to be a loadable state
    dict, and the class count of stages 1 and 2, which must be the same: a model trained on other structures than
    the shipped one is served with its own class count. Stage 3 has :data:`REFINE_CLASSES` whatever the data set."""
    bundle_dir = Path(bundle_dir).resolve()
    coarse = Path(str(overrides.get("coarse_ckpt_path", bundle_dir / "models" / "coarse.pt")))
    ckpt = Path(str(overrides.get("ckpt_path", bundle_dir / "models" / "model.pt")))
    refine = Path(str(overrides.get("refine_ckpt_path", bundle_dir / "models" / "refine.pt"))) \
        if refines(overrides) else None
    for weights in (coarse, ckpt):
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no trained weights; train with `make train` or pass other weights")
    if refine is not None:
        if not refine.is_file():
            raise FileNotFoundError(f"{refine}: no trained weights for stage 3 (per vertebra); train them with "
                                    "`make train-refine` (weights from before 0.8.0 have none) or pass other weights")
        refine_classes = checkpoint_classes(refine)
        if refine_classes != REFINE_CLASSES:
            raise RuntimeError(f"{refine}: predicts {refine_classes} classes, not the {REFINE_CLASSES} of the "
                               "per-vertebra stage (refine_ckpt_path)")
    return Weights(coarse, ckpt, refine, stage_classes(coarse, ckpt))


def run_bundle_inference(
    datalist: list[dict[str, str]],
    output_dir: Path,
    bundle_dir: Path,
    weights: Weights,
    logging_file: Path | None = None,
    **overrides: object,
) -> None:
    """Run ``bundle_dir/configs/inference.json`` over ``datalist`` with ``weights`` (from
    :func:`bundle_weights`); writes ``<id>_seg.nii.gz`` to output_dir. ``logging_file``: a logging config to use
    instead of the bundle's ``configs/logging.conf``."""
    from monai.bundle import ConfigWorkflow

    bundle_dir = Path(bundle_dir).resolve()
    paths = {"ckpt_path": str(weights.fine), "coarse_ckpt_path": str(weights.coarse)}
    if weights.refine is not None:
        paths["refine_ckpt_path"] = str(weights.refine)
    overrides = {k: v for k, v in overrides.items() if k not in ("ckpt_path", "coarse_ckpt_path", "refine_ckpt_path")}
    workflow = ConfigWorkflow(
        config_file=str(bundle_dir / "configs" / "inference.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(logging_file or bundle_dir / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(bundle_dir),
        datalist=datalist,
        output_dir=str(output_dir),
        **paths,
        **overrides,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NVIMGCODEC_WARNING)
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()


def read_for_segmentation(path: str | Path) -> Radiograph:
    """:func:`read_radiograph`, refusing (:class:`InputFileError`) what cannot be segmented: an image under
    :data:`MIN_SIDE` pixels a side, or one whose pixels all have the same value."""
    radiograph = read_radiograph(path)
    pixels = radiograph.pixels
    if min(pixels.shape) < MIN_SIDE:
        raise InputFileError(path, f"image is {pixels.shape[0]} x {pixels.shape[1]} px; at least {MIN_SIDE} px "
                                   "a side is needed")
    if pixels.min() == pixels.max():
        raise InputFileError(path, f"image is blank (every pixel is {pixels.flat[0]}): nothing to segment")
    return radiograph


def _bundle_class_maps(
    radiographs: dict[str, Radiograph], tmp_dir: Path, run: Callable[[list[dict[str, str]], Path], None]
) -> Iterator[tuple[str, np.ndarray | str]]:
    """``(case, class map)`` from ``run(datalist, output_dir)``, the bundle's ``inference.json`` (torch
    backend), or ``(case, cause)`` for an image it failed on. The images run as one batch; if that fails, one by
    one, so that the others still come."""
    images = {case: tmp_dir / "img" / f"{case}.nii" for case in radiographs}
    for case, radiograph in radiographs.items():
        write_nifti(images[case], radiograph.pixels, radiograph.spacing)
    failed: dict[str, str] = {}
    try:
        run([{"image": str(images[c])} for c in radiographs], tmp_dir / "pred")
    except Exception:  # noqa: BLE001 - find the image(s) the bundle cannot take
        for case in radiographs:
            try:
                run([{"image": str(images[case])}], tmp_dir / "pred")
            except Exception as err:  # noqa: BLE001 - MONAI/ITK/torch raise many types
                failed[case] = f"segmentation failed ({type(err).__name__}: {err})"
    for case in radiographs:
        pred = tmp_dir / "pred" / f"{case}_seg.nii.gz"
        yield case, failed[case] if case in failed else read_nifti(pred)
        images[case].unlink()
        pred.unlink(missing_ok=True)


def _onnx_class_maps(
    radiographs: dict[str, Radiograph], segment: Callable[[np.ndarray], np.ndarray]
) -> Iterator[tuple[str, np.ndarray | str]]:
    """``(case, class map)`` from the exported ONNX model (onnx backend), or ``(case, cause)`` where it fails."""
    for case, radiograph in radiographs.items():
        try:
            yield case, segment(radiograph.pixels)
        except Exception as err:  # noqa: BLE001 - onnxruntime / numpy raise many types
            yield case, f"segmentation failed ({type(err).__name__}: {err})"


def _sources(images: list[Path], report: BatchReport) -> dict[str, Path]:
    """Case id (file stem) -> image, in input order; two images with one id are both refused (``report.bad``)."""
    report.cases = list(dict.fromkeys(Path(p).stem for p in images))
    seen: dict[str, Path] = {}
    for path in map(Path, images):
        case = path.stem
        if case in seen:
            duplicate = f"{path}: same case id {case!r} as {seen[case]}; not segmented"
            report.bad[case] = f"{report.bad[case]}; {duplicate}" if case in report.bad else duplicate
            continue
        seen[case] = path
    return {case: path for case, path in seen.items() if case not in report.bad}


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
    ``<id>_seg.dcm``, a DICOM Segmentation referencing the source image. The images are read and segmented
    :data:`CHUNK` at a time. Unreadable images, and images the model fails on, are reported in the result and
    do not stop the others; ``out_dir/checks.csv`` lists every case with its status (ok, check: an implausible
    prediction to review, bad: with the cause). The arguments (weights, format and names, output folder) are
    checked before any image is read.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnx" and overrides:
        raise ValueError(f"config overrides ({', '.join(overrides)}) apply to the torch backend only")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: the output folder is a file")
    n = num_structures(fmt.layout, fmt.channels)
    if structure_names is not None and len(structure_names) != n:
        raise ValueError(
            f"{len(structure_names)} structure names ({', '.join(structure_names)}) but the {fmt.layout} format "
            f"with {fmt.channels} channels holds {n} structures: give one name per structure of the model, and "
            "its format (--dataset-json, or --layout and --channels)"
        )
    names = structure_names or [f"Structure {k}" for k in range(1, n + 1)]
    if backend == "onnx":
        from spine_seg.onnx_predict import OnnxSegmenter

        segmenter = OnnxSegmenter(Path(onnx_model or bundle_dir / "models" / "model.onnx"))
        model, model_structures = segmenter.model_path, len(segmenter.spec.structure_labels)
    else:
        weights = bundle_weights(bundle_dir, **overrides)  # checked once, before any image is read
        model, model_structures = weights.fine, weights.num_classes - 1
        overrides = {"num_classes": weights.num_classes, **overrides}
    if model_structures != n:
        raise ValueError(
            f"{model} predicts {model_structures} structures but the {fmt.layout} format with {fmt.channels} "
            f"channels holds {n}: give the format of the data it was trained on (--dataset-json, or --layout and "
            "--channels)"
        )
    report = BatchReport()
    sources = _sources(images, report)
    cases = list(sources)
    bar = tqdm(total=len(cases), desc="predict", unit="img", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="spine-seg-") as tmp:
        quiet = Path(tmp) / "logging.conf"
        write_text_atomic(quiet, QUIET_LOGGING)

        def run(datalist: list[dict[str, str]], output_dir: Path) -> None:
            run_bundle_inference(datalist, output_dir, bundle_dir, weights, logging_file=quiet, **overrides)

        for start in range(0, len(cases), CHUNK):
            radiographs = {}
            for case in cases[start : start + CHUNK]:
                try:
                    radiographs[case] = read_for_segmentation(sources[case])
                except InputFileError as err:
                    report.bad[case] = str(err)
                except Exception as err:  # noqa: BLE001 - one odd file must not stop the batch
                    report.bad[case] = f"{sources[case]}: cannot be read ({type(err).__name__}: {err})"
            if not radiographs:
                class_maps: Iterator[tuple[str, np.ndarray | str]] = iter(())
            elif backend == "onnx":
                class_maps = _onnx_class_maps(radiographs, segmenter)
            else:
                class_maps = _bundle_class_maps(radiographs, Path(tmp), run)
            for case, class_map in class_maps:
                if isinstance(class_map, str):
                    report.bad[case] = f"{sources[case]}: {class_map}"
                else:
                    _write_case(case, radiographs[case], class_map, sources[case], out_dir, fmt, n, structure_names,
                                names if dicom_seg else None, overlays, report)
            bar.update(min(CHUNK, len(cases) - start))
    bar.close()
    report.note_earlier_outputs(out_dir, OUTPUT_SUFFIXES)
    report.write_checks(out_dir)
    return report


def _write_case(
    case: str,
    radiograph: Radiograph,
    class_map: np.ndarray,
    source: Path,
    out_dir: Path,
    fmt: ExportFormat,
    n: int,
    structure_names: list[str] | None,
    seg_names: list[str] | None,
    overlay: bool,
    report: BatchReport,
) -> None:
    """Check one predicted class map and write its ``.npy``, overlay PNG (``overlay``) and DICOM SEG (when
    ``seg_names`` are given), recording what happened in ``report``."""
    if class_map.shape != radiograph.pixels.shape:
        report.bad[case] = f"{source}: prediction {class_map.shape} differs from image {radiograph.pixels.shape}"
        return
    problems = plausibility_problems(class_map, n, structure_names)
    if problems:
        report.implausible[case] = problems
    save_npy(out_dir / f"{case}.npy", class_map_to_challenge(class_map, fmt))
    report.written.append(out_dir / f"{case}.npy")
    if overlay:
        save_overlay(out_dir / f"{case}.png", radiograph.pixels, class_map, warnings=problems, names=structure_names)
        report.written.append(out_dir / f"{case}.png")
    if seg_names is not None:
        from spine_seg.dicom_seg import write_dicom_seg  # highdicom comes with the `export` extra

        try:
            report.written.append(write_dicom_seg(out_dir / f"{case}_seg.dcm", source, class_map, seg_names))
        except Exception as err:  # noqa: BLE001 - highdicom raises many types; one bad source must not stop
            report.bad[case] = f"{source}: DICOM SEG not written ({type(err).__name__}: {err})"
