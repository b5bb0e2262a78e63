"""Segment radiographs with the exported ONNX model and onnxruntime, without torch or the MONAI bundle.

This re-implements ``bundle/configs/inference.json`` in numpy/scipy. Stage 1 (``coarse.onnx`` beside the
model): resize the whole image to the coarse grid (bilinear, Gaussian anti-aliasing when shrinking, as
``monai.transforms.Resize``), percentile intensity scaling, network, argmax, largest component per label,
nearest resize back; then the box around those vertebrae (the bundle's ``SpineBoxCrop``), zero-padded where
it leaves the image. Stage 2 (``model.onnx``): the same resize and scaling of the crop to the fine grid,
network, softmax, bilinear resize of the probabilities back to the box and paste into the image
(``Invertd``), argmax and the largest component per label. Stage 3 (``refine.onnx``, where exported): one square
window per vertebra of that map (an end vertebra that breaks the chain moved next to its neighbour where
``refine_mend_ends`` is on, a squeezed middle one to its neighbours' midpoint where ``refine_mend_middle`` is, and
each side the case's scale times its level's size where ``refine_level_sizes`` holds them),
cut from the percentile-scaled image and resized to the stage's grid, network, the centre-class probability resized
back and pasted; each pixel takes the vertebra of the highest probability over the threshold (the bundle's
``scripts/vertebra_windows.py``), and the largest component per label again. Last, where ``convex_vertebrae`` is on,
each vertebra grows to its convex hull over the background (``scripts/class_map.py``). The parameters travel
inside the ``.onnx`` file (metadata key :data:`SPEC_KEY`, written by :mod:`spine_seg.model_export` from
``inference.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import erf

from spine_seg.bundle_geometry import geometry

SPEC_KEY = "spine_seg.inference"
INPUT_NAME = "image"
OUTPUT_NAME = "pred"
# BasicUNet pools four times; the exported graph has no padding branch, so H and W must be multiples of 16.
SIZE_MULTIPLE = 16

refine_windows, window_overlap, paste_best, convex_labels = (
    geometry.refine_windows, geometry.window_overlap, geometry.paste_best, geometry.convex_labels)


@dataclass(frozen=True)
class InferenceSpec:
    """The pre- and postprocessing parameters of ``inference.json`` that the ONNX path needs."""

    spatial_size: tuple[int, int]
    anti_aliasing: bool
    lower: float
    upper: float
    b_min: float
    b_max: float
    clip: bool
    structure_labels: tuple[int, ...]
    keep_largest_component: bool
    coarse_spatial_size: tuple[int, int]
    crop_margins: tuple[float, float, float]
    crop_aspect: float
    coarse_model: str = "coarse.onnx"
    refine_model: str = ""  # empty: no stage 3
    refine_ratio: float = 1.6
    refine_size: int = 128
    refine_threshold: float = 0.5
    refine_mend_ends: bool = False
    refine_mend_middle: bool = False
    refine_level_sizes: tuple[float, ...] = ()  # empty: each window sized by its own vertebra
    convex_vertebrae: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> InferenceSpec:
        raw = json.loads(text)
        raw["spatial_size"] = tuple(int(s) for s in raw["spatial_size"])
        raw["structure_labels"] = tuple(int(s) for s in raw["structure_labels"])
        raw["coarse_spatial_size"] = tuple(int(s) for s in raw["coarse_spatial_size"])
        raw["crop_margins"] = tuple(float(m) for m in raw["crop_margins"])
        raw["refine_level_sizes"] = tuple(float(v) for v in raw.get("refine_level_sizes", ()))
        return cls(**raw)


def gaussian_kernel(sigma: float, truncated: float = 4.0) -> np.ndarray:
    """MONAI's ``gaussian_1d(sigma, approx="erf")``: the Gaussian integrated over each pixel, not normalised."""
    tail = int(max(sigma * truncated, 0.5) + 0.5)
    x = np.arange(-tail, tail + 1, dtype=np.float64)
    t = 0.70710678 / abs(sigma)
    return np.clip(0.5 * (erf(t * (x + 0.5)) - erf(t * (x - 0.5))), 0.0, None)


def anti_alias(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Smooth ``image`` before shrinking it to ``size`` (sigma ``(factor - 1) / 2`` per shrunk axis, zero padding)."""
    out = image
    for axis, n_out in enumerate(size):
        sigma = max((image.shape[axis] / n_out - 1.0) / 2.0, 0.0)
        if sigma > 0:
            out = ndimage.correlate1d(out, gaussian_kernel(sigma), axis=axis, mode="constant", cval=0.0)
    return out


def resize_linear(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize the last ``len(size)`` axes with (bi)linear interpolation, half-pixel centres, edges clamped.

    The same sampling as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
    """
    out = np.asarray(array, dtype=np.float32)
    first = out.ndim - len(size)
    for axis, n_out in enumerate(size, start=first):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        shape = [1] * out.ndim
        shape[axis] = n_out
        w = (src - i0).astype(np.float32).reshape(shape)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out


def resize_nearest(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2D map, as ``torch.nn.functional.interpolate(mode="nearest")``."""
    index = [
        np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)).astype(np.int64), n_in - 1)
        for n_in, n_out in zip(labels.shape, size, strict=True)
    ]
    return labels[np.ix_(*index)]


def spine_box(labels: np.ndarray, margins: Sequence[float], aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` of the box around labels > 0: the bundle's ``SpineBoxCrop`` (no shift, no zoom).

    A copy on purpose: the bundle's ``scripts/spine_crop.py`` needs torch and MONAI, and this backend must not;
    ``tests/test_spine_crop.py`` keeps the two equal."""
    rows, cols = np.nonzero(labels > 0)
    if rows.size == 0:
        return np.zeros(2, dtype=int), np.asarray(labels.shape)
    vertebra = (rows.max() + 1 - rows.min()) / max(1, np.unique(labels[rows, cols]).size)
    top, bottom, side = margins
    row_lo, row_hi = rows.min() - top * vertebra, rows.max() + 1 + bottom * vertebra
    width = max(cols.max() + 1 - cols.min() + 2 * side * vertebra, (row_hi - row_lo) / aspect)
    size = np.array([max(row_hi - row_lo, width * aspect), width])
    start = np.round(np.array([(row_lo + row_hi) / 2, (cols.min() + cols.max() + 1) / 2]) - size / 2).astype(int)
    return start, start + np.maximum(np.round(size).astype(int), 1)


def box_slices(start: np.ndarray, end: np.ndarray, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(in the image, in the box)`` of the part of the box ``start:end`` that lies inside ``shape``."""
    lo, hi = np.maximum(start, 0), np.minimum(end, shape)
    return tuple(map(slice, lo, hi)), tuple(map(slice, lo - start, hi - start))


def scale_percentiles(image: np.ndarray, spec: InferenceSpec) -> np.ndarray:
    """``ScaleIntensityRangePercentiles``: map the lower/upper percentiles to ``b_min``/``b_max``."""
    a_min, a_max = (float(v) for v in np.percentile(image, [spec.lower, spec.upper]))
    if a_max == a_min:  # MONAI shifts a constant image and skips the clip
        return (image - a_min + spec.b_min).astype(np.float32)
    out = (image - a_min) / (a_max - a_min) * (spec.b_max - spec.b_min) + spec.b_min
    if spec.clip:
        out = np.clip(out, spec.b_min, spec.b_max)
    return out.astype(np.float32)


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def keep_largest_components(class_map: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Per label (each 1 or more), keep its largest 8-connected component and set the label's other pixels to 0;
    each label's components are found within its bounding box, as the bundle's ``KeepLargestPerLabel`` does."""
    out = class_map.copy()
    full = np.ones((3,) * class_map.ndim, dtype=bool)
    boxes = ndimage.find_objects(class_map.astype(np.int32, copy=False), max(labels, default=0))
    for label in labels:
        if boxes[label - 1] is None:
            continue
        region = out[boxes[label - 1]]
        foreground = region == label
        components, count = ndimage.label(foreground, structure=full)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        keep = np.zeros(sizes.shape[0], dtype=bool)
        keep[np.argsort(sizes)[::-1][:1]] = True  # the tie-break of MONAI's get_largest_connected_component_mask
        region[foreground & ~keep[components]] = 0
    return out


def _session(ort: Any, path: Path, options: Any, providers: list[str]) -> Any:
    """An onnxruntime session on ``path``; RuntimeError naming the file if it is not a loadable ONNX model."""
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        raise RuntimeError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {err})") from err


class OnnxSegmenter:
    """An exported model plus its inference parameters; call it on an ``R x C`` image to get a class map."""

    def __init__(self, model_path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: no ONNX model; write one with `make export-model`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = _session(ort, self.model_path, options, providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise ValueError(f"{self.model_path}: no '{SPEC_KEY}' metadata; export it with spine_seg.model_export")
        self.spec = InferenceSpec.from_json(meta[SPEC_KEY])
        for grid in (self.spec.spatial_size, self.spec.coarse_spatial_size):
            if any(s % SIZE_MULTIPLE for s in grid):
                raise ValueError(f"{self.model_path}: working grid {grid} is not a multiple of 16")
        coarse_path = self.model_path.parent / self.spec.coarse_model
        if not coarse_path.is_file():
            raise FileNotFoundError(f"{coarse_path}: no stage-1 ONNX model beside {self.model_path.name}; "
                                    "write both with `make export-model`")
        self.coarse = _session(ort, coarse_path, options, providers)
        self.refine = None
        if self.spec.refine_model:
            refine_path = self.model_path.parent / self.spec.refine_model
            if not refine_path.is_file():
                raise FileNotFoundError(f"{refine_path}: no stage-3 ONNX model beside {self.model_path.name}; "
                                        "write all three with `make export-model`")
            self.refine = _session(ort, refine_path, options, providers)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw network output ``N x K x H x W`` for an ``N x 1 x H x W`` float32 batch."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def _work(self, image: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """``image`` resized to ``size`` (anti-aliased if the spec says so), percentile-scaled: ``1 x 1 x H x W``."""
        if self.spec.anti_aliasing:
            image = anti_alias(image, size)
        return scale_percentiles(resize_linear(image, size), self.spec)[None, None]

    def _keep_largest(self, class_map: np.ndarray) -> np.ndarray:
        return keep_largest_components(class_map, self.spec.structure_labels) if self.spec.keep_largest_component \
            else class_map

    def coarse_labels(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: the ``R x C`` label map of the whole image whose box stage 2 segments."""
        logits = self.coarse.run([OUTPUT_NAME], {INPUT_NAME: self._work(image, self.spec.coarse_spatial_size)})[0]
        labels = keep_largest_components(logits[0].argmax(axis=0).astype(np.uint8), self.spec.structure_labels)
        return resize_nearest(labels, image.shape)

    def refine_labels(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Stage 3: ``labels`` (``R x C``) redrawn per vertebra on ``image`` (``R x C``); the labels are kept."""
        spec, size = self.spec, (self.spec.refine_size,) * 2
        found = refine_windows(labels, max(spec.structure_labels, default=0), spec.refine_ratio,
                               spec.refine_mend_ends, spec.refine_mend_middle, spec.refine_level_sizes or None)
        if not found:
            return np.zeros_like(labels)
        scaled, batch = scale_percentiles(image, spec), []
        for window in found.values():
            side, inside, part = window_overlap(window, image.shape)
            patch = np.zeros((side, side), dtype=np.float32)
            patch[part] = scaled[inside]
            batch.append(resize_linear(anti_alias(patch, size), size))  # cut_window always anti-aliases
        logits = self.refine.run([OUTPUT_NAME], {INPUT_NAME: np.stack(batch)[:, None].astype(np.float32)})[0]
        pieces = ((label, resize_linear(prob, (window_overlap(window, labels.shape)[0],) * 2), window)
                  for prob, (label, window) in zip(softmax(logits, axis=1)[:, 1], found.items(), strict=True))
        return paste_best(pieces, labels.shape, spec.refine_threshold)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``R x C`` image (any real dtype) -> ``R x C`` uint8 class map on the image's own grid."""
        spec = self.spec
        image = np.asarray(image, dtype=np.float32)
        start, end = spine_box(self.coarse_labels(image), spec.crop_margins, spec.crop_aspect)
        in_image, in_box = box_slices(start, end, image.shape)
        crop = np.zeros(tuple(end - start), dtype=np.float32)
        crop[in_box] = image[in_image]
        probs = softmax(self.logits(self._work(crop, spec.spatial_size))[0], axis=0)
        full = np.zeros((probs.shape[0], *image.shape), dtype=np.float32)
        full[(slice(None), *in_image)] = resize_linear(probs, crop.shape)[(slice(None), *in_box)]
        labels = self._keep_largest(full.argmax(axis=0).astype(np.uint8))
        if self.refine is not None:
            labels = self._keep_largest(self.refine_labels(image, labels))
        return convex_labels(labels, spec.structure_labels) if spec.convex_vertebrae else labels
