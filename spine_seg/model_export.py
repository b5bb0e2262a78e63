"""Export the bundle's trained network for deployment: TorchScript ``model.ts`` and ONNX ``model.onnx``.

TorchScript comes from MONAI's own ``ckpt_export`` (the function behind ``python -m monai.bundle ckpt_export``;
BasicUNet scripts without tracing), so the ``.ts`` file carries ``metadata.json`` and ``inference.json``.
ONNX uses ``torch.onnx.export(dynamo=False)`` (the TorchScript-based exporter; the dynamo exporter would need
``onnxscript``) with dynamic batch, height and width. All stages are exported: ``model.*`` (fine), ``coarse.*``
(stage 1, which finds the box the fine stage segments) and ``refine.*`` (stage 3, which redraws each vertebra in its
own window; unless ``inference.json`` switches it off with ``refine_vertebrae``). The trace drops BasicUNet's padding
branch for odd feature-map sizes, so the ONNX models take heights and widths that are multiples of 16 only (the
working grids always are). The ``.onnx`` file also carries the pre/postprocessing parameters for
:mod:`spine_seg.onnx_predict`.

    python -m spine_seg.model_export --ckpt bundle/models/model.pt --out-dir bundle/models
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from spine_seg.atomic import atomic_path
from spine_seg.onnx_predict import INPUT_NAME, OUTPUT_NAME, SPEC_KEY, InferenceSpec
from spine_seg.predict import DEFAULT_BUNDLE, load_state, stage_classes, state_classes

ONNX_OPSET = 17


def _config_files(bundle_dir: Path) -> tuple[Path, Path]:
    return bundle_dir / "configs" / "inference.json", bundle_dir / "configs" / "metadata.json"


def _parser(bundle_dir: Path, num_classes: int | None = None, refine_ckpt: Path | None = None) -> Any:
    """``inference.json`` with ``metadata.json``; ``num_classes`` (background included) and ``refine_ckpt`` (stage 3's
    weights, whose level sizes lie beside them) replace the config's."""
    from monai.bundle import ConfigParser

    if str(bundle_dir) not in sys.path:  # the bundle's `scripts` package, as `monai.bundle run` adds it
        sys.path.insert(0, str(bundle_dir))
    config, meta = _config_files(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.read_meta(str(meta))
    if num_classes is not None:
        parser["num_classes"] = num_classes
    if refine_ckpt is not None:
        parser["refine_ckpt_path"] = str(refine_ckpt)
    return parser


def _load_state(ckpt: Path) -> tuple[dict, str]:
    """:func:`~spine_seg.predict.load_state`, with a clear error for a missing file."""
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found; train with `make train` or pass --ckpt")
    return load_state(ckpt)


def build_network(
    bundle_dir: str | Path = DEFAULT_BUNDLE, net_id: str = "network_def", num_classes: int | None = None
) -> Any:
    """A freshly initialised ``net_id`` (``network_def``, ``coarse_network_def`` or ``refine_network_def``) of
    ``inference.json``, with ``num_classes`` outputs instead of the config's when given (stage 3 has three)."""
    return _parser(Path(bundle_dir), num_classes).get_parsed_content(net_id)


def load_network(ckpt: str | Path, bundle_dir: str | Path = DEFAULT_BUNDLE, net_id: str = "network_def") -> Any:
    """The bundle's ``net_id`` with the weights of ``ckpt`` (loaded strictly), on the CPU, in eval mode; it has
    as many classes as the weights."""
    ckpt = Path(ckpt)
    return _fitted_network(_load_state(ckpt)[0], ckpt, Path(bundle_dir), net_id)


def _fitted_network(state: dict, ckpt: Path, bundle_dir: Path, net_id: str) -> Any:
    """:func:`load_network` with the weights ``state`` already read from ``ckpt``."""
    net = build_network(bundle_dir, net_id, state_classes(state, ckpt))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(f"{ckpt}: weights do not fit the bundle's {net_id} ({err})") from err
    return net.eval()


def inference_spec(bundle_dir: str | Path = DEFAULT_BUNDLE, num_classes: int | None = None,
                   refine_ckpt: str | Path | None = None) -> InferenceSpec:
    """Read the ONNX path's parameters from ``inference.json`` (Resized, ScaleIntensityRangePercentilesd, ...),
    for a model of ``num_classes`` classes instead of the config's when given, and stage 3's level sizes from beside
    ``refine_ckpt`` (default: the config's stage-3 weights)."""
    parser = _parser(Path(bundle_dir), num_classes, None if refine_ckpt is None else Path(refine_ckpt))
    transforms = parser["preprocessing"]["transforms"]
    ids = {t.get("_target_"): f"preprocessing#transforms#{i}" for i, t in enumerate(transforms)}
    coarse_id, crop_id = "scripts.spine_crop.CoarseSpineMaskd", "scripts.spine_crop.SpineBoxCropd"
    missing = {"Resized", "ScaleIntensityRangePercentilesd", coarse_id, crop_id} - set(ids)
    if missing:
        raise ValueError(f"inference.json preprocessing has no {', '.join(sorted(missing))}")

    def get(ref: str, default: object = None) -> Any:
        return parser.get_parsed_content(ref) if ref in parser else default

    resize, scale = ids["Resized"], ids["ScaleIntensityRangePercentilesd"]
    refine = bool(get("refine_vertebrae", False))
    if get(f"{resize}#mode", "area") != "bilinear":
        raise ValueError("the ONNX path implements Resized(mode='bilinear') only")
    return InferenceSpec(
        spatial_size=tuple(int(s) for s in get(f"{resize}#spatial_size")),
        anti_aliasing=bool(get(f"{resize}#anti_aliasing", False)),
        lower=float(get(f"{scale}#lower")),
        upper=float(get(f"{scale}#upper")),
        b_min=float(get(f"{scale}#b_min")),
        b_max=float(get(f"{scale}#b_max")),
        clip=bool(get(f"{scale}#clip", False)),
        structure_labels=tuple(int(v) for v in get("structure_labels")),
        keep_largest_component=bool(get("keep_largest_component", True)),
        coarse_spatial_size=tuple(int(s) for s in get(f"{ids[coarse_id]}#spatial_size")),
        crop_margins=tuple(float(m) for m in get(f"{ids[crop_id]}#margins")),
        crop_aspect=float(get(f"{ids[crop_id]}#aspect")),
        refine_model="refine.onnx" if refine else "",
        refine_ratio=float(get("refine#ratio", 1.6)),
        refine_size=int(get("refine#size", 128)),
        refine_threshold=float(get("refine#threshold", 0.5)),
        refine_mend_ends=bool(get("refine#mend_ends", False)),
        refine_mend_middle=bool(get("refine#mend_middle", False)),
        refine_level_sizes=tuple(float(v) for v in (get("refine#level_sizes") if refine else None) or ()),
        convex_vertebrae=bool(get("convex_vertebrae", False)),
    )


def export_torchscript(
    ckpt: str | Path, out: str | Path, bundle_dir: str | Path = DEFAULT_BUNDLE, net_id: str = "network_def",
    num_classes: int | None = None,
) -> Path:
    """Write ``out`` (``.ts``) with MONAI's ``ckpt_export`` after checking that ``ckpt`` fits ``net_id``. The
    ``inference.json`` stored in ``out`` has ``num_classes`` (default: the weights' class count; stage 3's
    three classes are not the model's): ``ckpt_export`` stores the config file as it is on disk, so it gets a
    copy with that ``num_classes``."""
    from monai.bundle import ConfigParser, ckpt_export

    ckpt, out, bundle_dir = Path(ckpt), Path(out), Path(bundle_dir)
    state, key = _load_state(ckpt)
    _fitted_network(state, ckpt, bundle_dir, net_id)  # ckpt_export copies weights non-strictly; refuse a mismatch
    config, meta = _config_files(bundle_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spine-seg-") as tmp:
        stored = Path(tmp) / config.name
        classes = num_classes or state_classes(state, ckpt)
        stored.write_text(json.dumps({**ConfigParser.load_config_file(config), "num_classes": classes}, indent=4))
        ckpt_export(
            net_id, filepath=str(out), ckpt_file=str(ckpt), meta_file=str(meta), config_file=str(stored),
            key_in_ckpt=key, bundle_root=str(bundle_dir),
        )
    return out


def export_onnx(net: Any, out: str | Path, spec: InferenceSpec) -> Path:
    """Write ``net`` as ONNX (input ``image``, output ``pred``; dynamic N, H, W) with ``spec`` as metadata."""
    import onnx
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 1, *spec.spatial_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # The legacy exporter is deprecated, and the trace warns about BasicUNet's shape test for padding, which
        # is false for every multiple of 16; InstanceNorm without running stats is the same in train and eval.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*instance_norm.*train=True")
        warnings.filterwarnings("ignore", message=".*Constant folding - Only steps=1")  # strided slices stay
        torch.onnx.export(
            net, (dummy,), str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, opset_version=ONNX_OPSET, dynamo=False,
        )
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, {SPEC_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def export_model(
    ckpt: str | Path,
    out_dir: str | Path,
    bundle_dir: str | Path = DEFAULT_BUNDLE,
    coarse_ckpt: str | Path | None = None,
    refine_ckpt: str | Path | None = None,
) -> dict[str, Path]:
    """Write ``model.ts``/``.onnx`` from ``ckpt``, ``coarse.ts``/``.onnx`` from ``coarse_ckpt`` and, where
    ``inference.json`` runs stage 3, ``refine.ts``/``.onnx`` from ``refine_ckpt`` (defaults: the bundle's
    ``models/coarse.pt``, ``models/refine.pt``) into ``out_dir``; returns ``{"torchscript", "onnx",
    "coarse_torchscript", "coarse_onnx"[, "refine_torchscript", "refine_onnx"]}``. The checkpoints are checked before
    anything is written, and the files replace earlier ones together, only once all are written: a failed export
    leaves the old set as it was."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    coarse_ckpt = Path(coarse_ckpt or bundle_dir / "models" / "coarse.pt")
    refine_ckpt = Path(refine_ckpt or bundle_dir / "models" / "refine.pt")
    net, coarse = load_network(ckpt, bundle_dir), load_network(coarse_ckpt, bundle_dir, "coarse_network_def")
    classes = stage_classes(coarse_ckpt, Path(ckpt))
    spec = inference_spec(bundle_dir, classes, refine_ckpt)
    stages = {"": (Path(ckpt), net, "network_def", "model"),
              "coarse_": (coarse_ckpt, coarse, "coarse_network_def", Path(spec.coarse_model).stem)}
    if spec.refine_model:
        stages["refine_"] = (refine_ckpt, load_network(refine_ckpt, bundle_dir, "refine_network_def"),
                             "refine_network_def", Path(spec.refine_model).stem)
    targets = {f"{prefix}{kind}": out_dir / f"{stem}.{suffix}" for prefix, (*_, stem) in stages.items()
               for kind, suffix in (("torchscript", "ts"), ("onnx", "onnx"))}
    with contextlib.ExitStack() as stack:  # all to temporary files; renamed only once all are written
        tmp = {kind: stack.enter_context(atomic_path(path)) for kind, path in targets.items()}
        for prefix, (weights, network, net_id, _) in stages.items():
            export_torchscript(weights, tmp[f"{prefix}torchscript"], bundle_dir, net_id, classes)
            export_onnx(network, tmp[f"{prefix}onnx"], spec)
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the bundle's checkpoint to TorchScript and ONNX")
    parser.add_argument("--ckpt", default=str(DEFAULT_BUNDLE / "models" / "model.pt"), help="PyTorch state dict")
    parser.add_argument("--coarse-ckpt", default=str(DEFAULT_BUNDLE / "models" / "coarse.pt"), help="stage 1")
    parser.add_argument("--refine-ckpt", default=str(DEFAULT_BUNDLE / "models" / "refine.pt"), help="stage 3")
    parser.add_argument("--out-dir", default=str(DEFAULT_BUNDLE / "models"), help="where model.ts/.onnx go")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="MONAI bundle folder (configs/)")
    args = parser.parse_args(argv)
    try:
        written = export_model(args.ckpt, args.out_dir, args.bundle, args.coarse_ckpt, args.refine_ckpt)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
