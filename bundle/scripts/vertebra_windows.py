"""Stage 3: one square window per vertebra, where a third network redraws that vertebra's outline.

A window is centred on a vertebra's bounding box and ``ratio`` times its larger side; it is resized to ``size x
size`` pixels (about 2 px of the radiograph per pixel at 128, against about 4-5 for stage 2's grid). The network
has three classes: background, the vertebra at the window's centre, the other vertebrae. Training cuts the windows
around the expert vertebrae (:class:`VertebraWindowsd`, one sample per vertebra, cut larger than needed so that
``RandAffined`` can move and scale them); inference (:class:`RefineVertebraed`) cuts them around the vertebrae of
stage 2's label map, resizes the centre-class probabilities back and gives each pixel the vertebra of the highest
probability where that is over ``threshold`` (``paste_best``, window by window). Nothing is renamed: each window
keeps the label stage 2 gave it. With ``mend_ends``, an end vertebra that breaks an otherwise regular chain has its
window moved one step beyond its neighbour first (``mend_end_windows``); with ``mend_middle``, a squeezed or missing
middle vertebra has it moved to the midpoint of its neighbours (``mend_middle_windows``). With ``level_sizes`` (one
per structure, ``scripts/level_sizes.py``), each window's side is the case's scale times its level's size.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize, ScaleIntensityRangePercentiles

from .vertebra_geometry import Window, paste_best, refine_windows, vertebra_windows, window_overlap
from .weights import load_network


def cut_window(image: np.ndarray, window: Window, size: int, mode: str = "bilinear") -> torch.Tensor:
    """The square ``window`` of ``image`` (``R x C``), zero outside the image, resized to ``1 x size x size``
    (``bilinear``: anti-aliased, as the bundle's other ``Resized``; ``nearest-exact`` for label maps)."""
    side, inside, part = window_overlap(window, image.shape)
    patch = torch.zeros((1, side, side), dtype=torch.float32)
    patch[(0, *part)] = torch.as_tensor(np.asarray(image[inside], dtype=np.float32))
    resize = Resize((size, size), mode=mode, anti_aliasing=mode == "bilinear")
    return torch.as_tensor(resize(patch)).float()


def uncut_window(prob: torch.Tensor, window: Window, shape: Sequence[int]) -> np.ndarray:
    """A ``size x size`` probability map back on the window's own pixels of an image of ``shape``: ``side x side``
    (bilinear), ``side`` as :func:`window_overlap` gives it; :func:`paste_best` puts it in place."""
    side = window_overlap(window, shape)[0]
    return torch.nn.functional.interpolate(prob[None, None].float(), size=(side, side), mode="bilinear")[0, 0].numpy()


@torch.no_grad()
def window_probabilities(network: torch.nn.Module, image: np.ndarray, windows: Sequence[Window], size: int,
                         device: str | torch.device = "cpu") -> Iterator[np.ndarray]:
    """The stage-3 ``network``'s centre-class probability for each window of ``image`` (``R x C``, scaled to
    [0, 1]), one batch for all: per window a ``side x side`` map on its own pixels (:func:`uncut_window`), made
    as it is consumed."""
    batch = torch.stack([cut_window(image, w, size) for w in windows]).to(device)
    prob = torch.softmax(network(batch).float(), 1)[:, 1].cpu()
    return (uncut_window(p, w, image.shape) for p, w in zip(prob, windows, strict=True))


class VertebraWindowsd(MapTransform):
    """One sample per vertebra of ``d[label_key]`` (``(1, H, W)``, labels 0..``num_classes``-1): ``keys``' square
    windows ``ratio`` times the vertebra's larger side, resized to ``(1, size, size)``; the image keys bilinear,
    ``label_key`` nearest and relabelled 0 background, 1 the window's vertebra, 2 the other vertebrae. Each sample
    also holds its ``"vertebra"`` label. Returns a list of dicts (a multi-sample transform, like
    ``RandCropByPosNegLabeld``); a case without vertebrae gives an empty list."""

    def __init__(self, keys: KeysCollection, label_key: str = "label", num_classes: int = 7, ratio: float = 1.6,
                 size: int = 128, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key, self.num, self.ratio, self.size = label_key, num_classes - 1, float(ratio), int(size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        d = dict(data)
        arrays = {key: torch.as_tensor(d[key])[0].cpu().numpy() for key in self.key_iterator(d)}
        label = torch.as_tensor(d[self.label_key])[0].cpu().numpy()
        samples = []
        for k, window in vertebra_windows(label, self.num, self.ratio).items():
            sample = {"vertebra": k}
            for key, array in arrays.items():
                if key == self.label_key:
                    target = np.where(label == k, 1, np.where(label > 0, 2, 0))
                    sample[key] = cut_window(target, window, self.size, mode="nearest-exact")
                else:
                    sample[key] = cut_window(array, window, self.size)
            samples.append(sample)
        return samples


class RefineVertebraed(MapTransform):
    """Redraw each vertebra of the label map ``d[key]`` (``(1, H, W)``, labels 0..``num_classes``-1) in its own
    window of the image ``d[image_key]`` (``(1, H, W)``, the original radiograph) with the stage-3 ``network``.

    The image is scaled to [0, 1] between its ``percentiles``; each window is cut as :class:`VertebraWindowsd`
    cuts it, segmented, and the centre-class probability pasted back; each pixel takes the vertebra of the highest
    probability where that is over ``threshold``, else background. The labels are stage 2's. With ``mend_ends``, the
    window of an end vertebra (1 or the last) that breaks an otherwise regular chain goes one step beyond its
    neighbour instead (:func:`mend_end_windows`); with ``mend_middle``, that of a middle vertebra squeezed (or
    missing) between neighbours that leave room for one body goes to their midpoint (:func:`mend_middle_windows`,
    after the ends). With ``level_sizes`` (one per structure), each side is then the case's scale times its
    level's size (:func:`level_sized_windows`). ``network`` gets the weights of ``ckpt_path`` on first use. The map
    keeps its type, metadata and shape.
    """

    def __init__(self, keys: KeysCollection, image_key: str, network: torch.nn.Module, ckpt_path: str,
                 num_classes: int = 7, ratio: float = 1.6, size: int = 128, threshold: float = 0.5,
                 percentiles: Sequence[float] = (0.5, 99.5), device: str | torch.device = "cpu",
                 mend_ends: bool = False, mend_middle: bool = False, level_sizes: Sequence[float] | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.network, self.ckpt_path = image_key, network, str(ckpt_path)
        self.mend_ends, self.mend_middle = bool(mend_ends), bool(mend_middle)
        self.num, self.ratio, self.size, self.threshold = num_classes - 1, float(ratio), int(size), float(threshold)
        if level_sizes is not None and len(level_sizes) != self.num:
            raise ValueError(f"stage 3's level sizes (refine_sizes.json beside its weights) give {len(level_sizes)} "
                             f"sizes for {self.num} structures: weights of another data set?")
        self.level_sizes = None if level_sizes is None else [float(v) for v in level_sizes]
        self.scale = ScaleIntensityRangePercentiles(*percentiles, b_min=0.0, b_max=1.0, clip=True)
        self.device = torch.device(device)
        self._loaded = False

    @torch.no_grad()
    def refine(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``labels`` (``R x C``) redrawn on ``image`` (``R x C``, scaled to [0, 1]): ``R x C`` uint8."""
        found = refine_windows(labels, self.num, self.ratio, self.mend_ends, self.mend_middle, self.level_sizes)
        if not found:
            return np.zeros_like(labels, dtype=np.uint8)
        windows = list(found.values())
        probs = window_probabilities(self.network, image, windows, self.size, self.device)
        return paste_best(zip(found, probs, windows, strict=True), labels.shape, self.threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if not self._loaded:
            load_network(self.network, self.ckpt_path, "stage-3 (per-vertebra)", self.device)
            self._loaded = True
        image = torch.as_tensor(self.scale(torch.as_tensor(d[self.image_key]).float()))[0].cpu().numpy()
        for key in self.key_iterator(d):
            pred = d[key]
            if tuple(pred.shape) != (1, *image.shape):
                raise ValueError(f"{getattr(pred, 'meta', {}).get('filename_or_obj', key)}: label map of shape "
                                 f"{tuple(pred.shape)} but image {tuple(d[self.image_key].shape)}")
            out = pred.clone()
            out[0] = torch.as_tensor(self.refine(image, torch.as_tensor(pred)[0].cpu().numpy()))
            d[key] = out
        return d
