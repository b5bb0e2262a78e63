"""Deployment exports (TorchScript, ONNX) and the onnxruntime inference path against the PyTorch/MONAI originals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from monai.data import load_net_with_metadata
from monai.transforms import KeepLargestConnectedComponent, Resize, ScaleIntensityRangePercentiles

from spine_seg.model_export import build_network, export_model, inference_spec, load_network
from spine_seg.model_export import main as export_main
from spine_seg.onnx_predict import (
    SPEC_KEY,
    InferenceSpec,
    OnnxSegmenter,
    anti_alias,
    keep_largest_components,
    resize_linear,
    scale_percentiles,
)
from spine_seg.phantom import make_phantom
from spine_seg.predict import DEFAULT_BUNDLE, predict

# Not the export size (the working grid), H and W multiples of 16 as BasicUNet needs; batch 2 for the dynamic N.
ODD_INPUT = (2, 1, 208, 112)


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_torchscript_and_onnx_give_the_pytorch_logits(exported_model: dict[str, Path]) -> None:
    x = torch.randn(*ODD_INPUT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = load_network(exported_model["ckpt"])(x).numpy()
        scripted, meta, extra = load_net_with_metadata(
            exported_model["torchscript"], more_extra_files=["inference.json"]
        )
        torchscript = scripted(x).numpy()
    assert reference.shape == (2, 7, 208, 112)
    assert _relative_error(torchscript, reference) <= 1e-4
    # MONAI's ckpt_export stored the bundle's metadata and inference config with the model
    assert meta["name"] == "Spine radiograph vertebra segmentation"
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "BasicUNet"

    session = ort.InferenceSession(str(exported_model["onnx"]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "pred")
    assert inp.shape == ["batch", 1, "height", "width"] and out.shape == ["batch", 7, "height", "width"]
    onnx_logits = session.run(["pred"], {"image": x.numpy()})[0]
    assert onnx_logits.shape == reference.shape
    assert _relative_error(onnx_logits, reference) <= 1e-4
    spec = InferenceSpec.from_json(session.get_modelmeta().custom_metadata_map[SPEC_KEY])
    assert spec == inference_spec()


def test_missing_or_wrong_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-model.pt"
    with pytest.raises(FileNotFoundError, match="no-such-model.pt: checkpoint not found"):
        export_model(missing, tmp_path / "out")
    assert export_main(["--ckpt", str(missing), "--out-dir", str(tmp_path / "out")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(RuntimeError, match="wrong.pt: not the weights of the bundle's BasicUNet"):
        export_model(wrong, tmp_path / "out")
    coarse_as_fine = tmp_path / "coarse-as-fine.pt"  # a BasicUNet of the other stage's widths
    torch.save(build_network(net_id="coarse_network_def").state_dict(), coarse_as_fine)
    with pytest.raises(RuntimeError, match="coarse-as-fine.pt: weights do not fit the bundle's network_def"):
        export_model(coarse_as_fine, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="no-such-model.onnx: no ONNX model"):
        OnnxSegmenter(tmp_path / "no-such-model.onnx")
    with pytest.raises(RuntimeError, match="wrong.pt: not a loadable ONNX model"):
        OnnxSegmenter(wrong)


def test_a_failed_export_leaves_the_earlier_files(
    exported_model: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    out = tmp_path / "models"
    out.mkdir()
    kinds = ("torchscript", "onnx", "coarse_torchscript", "coarse_onnx", "refine_torchscript", "refine_onnx")
    for kind in kinds:
        (out / exported_model[kind].name).write_bytes(b"earlier " + kind.encode())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    checks = []

    def fail_second(model: object) -> None:  # the stage-1 ONNX model fails its check; stage 3's is not yet written
        checks.append(model)
        if len(checks) == 2:
            raise onnx.checker.ValidationError("broken")

    monkeypatch.setattr(onnx.checker, "check_model", fail_second)
    with pytest.raises(onnx.checker.ValidationError):
        export_model(exported_model["ckpt"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the old set, no new or temporary files"


@pytest.mark.parametrize("shape", [(200, 100), (150, 420), (700, 300)], ids=["up", "mixed", "down"])
def test_numpy_preprocessing_matches_monai(shape: tuple[int, int]) -> None:
    """Anti-aliased resize + percentile scaling, and the bilinear resize back, as MONAI's transforms do them."""
    spec = inference_spec()
    image = np.random.default_rng(0).gamma(2.0, 40.0, shape).astype(np.float32)
    monai_work = ScaleIntensityRangePercentiles(spec.lower, spec.upper, spec.b_min, spec.b_max, clip=spec.clip)(
        Resize(spec.spatial_size, mode="bilinear", anti_aliasing=True)(image[None])
    )[0].numpy()
    ours = scale_percentiles(resize_linear(anti_alias(image, spec.spatial_size), spec.spatial_size), spec)
    assert ours.shape == tuple(spec.spatial_size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, monai_work, atol=1e-4)  # float32 rounding

    probs = np.random.default_rng(1).random((7, *spec.spatial_size), dtype=np.float32)
    back = Resize(shape, mode="bilinear")(probs).numpy()
    np.testing.assert_allclose(resize_linear(probs, shape), back, atol=1e-4)  # torch keeps coordinates in float32


def test_largest_component_matches_monai() -> None:
    class_map = np.random.default_rng(2).choice(7, size=(60, 40), p=[0.55] + [0.075] * 6).astype(np.uint8)
    labels = [1, 2, 3, 4, 5, 6]
    expected = KeepLargestConnectedComponent(applied_labels=labels, independent=True)(class_map[None].copy())
    ours = keep_largest_components(class_map, labels)
    assert not np.array_equal(ours, class_map), "the random map must have several components per label"
    np.testing.assert_array_equal(ours, np.asarray(expected)[0])


def test_onnx_stage_3_redraws_the_vertebrae_as_the_bundle_does(exported_model: dict[str, Path]) -> None:
    """The ONNX path's per-vertebra stage against the bundle's ``RefineVertebraed``, with the shipped stage-3
    weights, on a phantom's own label map."""
    import sys

    sys.path.insert(0, str(DEFAULT_BUNDLE))
    from scripts.vertebra_windows import RefineVertebraed

    assert exported_model["refine_onnx"].name == "refine.onnx"
    segmenter = OnnxSegmenter(exported_model["onnx"])
    spec = segmenter.spec
    weights = DEFAULT_BUNDLE / "models" / "refine.pt"
    bundle = RefineVertebraed("pred", "original", load_network(weights, net_id="refine_network_def"), str(weights),
                              ratio=spec.refine_ratio, size=spec.refine_size, threshold=spec.refine_threshold,
                              mend_ends=spec.refine_mend_ends, mend_middle=spec.refine_mend_middle,
                              level_sizes=list(spec.refine_level_sizes))
    shipped = json.loads((weights.parent / "refine_sizes.json").read_text())["level_sizes"]
    assert list(spec.refine_level_sizes) == shipped, "the spec carries the level sizes beside the stage-3 weights"
    image, labels = make_phantom((400, 180), seed=4)
    scaled = ScaleIntensityRangePercentiles(spec.lower, spec.upper, spec.b_min, spec.b_max, clip=spec.clip)(
        image[None].astype(np.float32))[0].numpy()
    # the top vertebra missing, or a middle one: each drawn again where its mend is on
    cases = [(labels, 0, True), (np.where(labels == 1, 0, labels).astype(np.uint8), 1, spec.refine_mend_ends),
             (np.where(labels == 3, 0, labels).astype(np.uint8), 3, spec.refine_mend_middle)]
    for case, gone, mended in cases:
        by_torch, by_onnx = bundle.refine(scaled, case), segmenter.refine_labels(image.astype(np.float32), case)
        assert by_onnx.dtype == np.uint8 and by_onnx.shape == labels.shape
        assert len(np.unique(by_torch)) >= 4, "a near-empty map would make the comparison meaningless"
        assert (by_torch == gone).any() == mended or not gone
        agreement = float((by_torch == by_onnx).mean())
        assert agreement >= 0.999, f"only {agreement:.2%} of pixels agree"


def test_onnx_backend_agrees_with_torch_backend(
    exported_model: dict[str, Path], onnx_predicted: tuple[Path, Path], tmp_path: Path
) -> None:
    """Both backends from DICOM to ``.npy``, the whole pipeline. The fixture's stage 2 is random (seed 0), so its
    map is noise, spread over the whole image; the chain mends (discrete rules on that map's windows) flip on
    sub-pixel differences there, so the pipeline is compared here with them off on both sides (the fixture's own
    ONNX run, with them on, serves the other tests). The mends themselves are compared between the backends on a
    phantom's own label map above, and on the 127 real test radiographs the two agree on at least 99.98 % of pixels
    with them on (bundle/docs, "Mending an end of the chain")."""
    import onnx

    raw, _ = onnx_predicted
    images = sorted((raw / "test" / "img").glob("*.dcm"))
    models = tmp_path / "models"
    models.mkdir()
    for name in ("coarse.onnx", "refine.onnx"):
        (models / name).write_bytes((exported_model["onnx"].parent / name).read_bytes())
    model = onnx.load(exported_model["onnx"])
    (prop,) = [p for p in model.metadata_props if p.key == SPEC_KEY]
    spec = json.loads(prop.value)
    assert spec["refine_mend_ends"] is spec["refine_mend_middle"] is True, "the spec carries inference.json's switches"
    assert spec["convex_vertebrae"] is True, "and the convex outlines' switch, which this comparison keeps on"
    assert len(spec["refine_level_sizes"]) == 6, "and the level sizes, which it keeps on too"
    prop.value = json.dumps({**spec, "refine_mend_ends": False, "refine_mend_middle": False})
    onnx.save(model, models / "model.onnx")
    onnx_report = predict(images, tmp_path / "onnx", overlays=False, progress=False, backend="onnx",
                          onnx_model=models / "model.onnx")
    torch_report = predict(images, tmp_path / "torch", overlays=False, progress=False,
                           ckpt_path=str(exported_model["ckpt"]), refine_mend_ends=False, refine_mend_middle=False)
    assert not torch_report.bad and not onnx_report.bad and len(torch_report.written) == len(images) == 2
    for image in images:
        by_torch = np.load(tmp_path / "torch" / f"{image.stem}.npy")
        by_onnx = np.load(tmp_path / "onnx" / f"{image.stem}.npy")
        assert by_onnx.shape == by_torch.shape and by_onnx.dtype == by_torch.dtype == np.uint8
        classes_torch, classes_onnx = by_torch.argmax(-1), by_onnx.argmax(-1)
        assert len(np.unique(classes_torch)) >= 3, "a near-constant map would make the comparison meaningless"
        agreement = float((classes_torch == classes_onnx).mean())
        assert agreement >= 0.99, f"{image.stem}: only {agreement:.2%} of pixels agree"
