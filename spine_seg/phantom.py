"""Small synthetic spine radiographs and challenge-format test data (DICOM + ``.mat`` masks).

Everything here is deterministic for a given seed. Arrays are ``R x C`` (rows, columns), like the DICOM
pixel data; masks are ``R x C x K`` like the challenge's ``label_separated`` variable.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pydicom
import scipy.io
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from spine_seg.label_layout import from_class_map
from spine_seg.mat_io import DEFAULT_KEY

__all__ = [
    "TRANSFER_SYNTAXES",
    "make_phantom",
    "mask_from_class_map",
    "write_challenge_folder",
    "write_dicom",
    "write_mat",
]

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}
SOP_CLASSES = {"DX": DigitalXRayImageStorageForPresentation, "CR": ComputedRadiographyImageStorage}

# ``mask_from_class_map(class_map, layout, channels)``: the exact inverse of ``to_class_map``.
mask_from_class_map = from_class_map


def _rounded_box_distance(
    rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float], half: tuple[float, float], radius: float,
    angle: float,
) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a rotated rounded rectangle.

    ``rows``/``cols`` broadcast to the grid; ``half`` is (half height, half width); ``angle`` in radians.
    """
    dr, dc = rows - centre[0], cols - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    v = np.abs(dr * cos - dc * sin) - (half[0] - radius)
    u = np.abs(dr * sin + dc * cos) - (half[1] - radius)
    outside = np.hypot(np.maximum(u, 0), np.maximum(v, 0))
    return outside + np.minimum(np.maximum(u, v), 0) - radius


def make_phantom(
    shape: tuple[int, int] = (256, 160), seed: int = 0, num_structures: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a synthetic AP spine radiograph.

    Returns ``(image, class_map)``, both ``R x C`` uint8 with ``(R, C) = shape``: the image is a soft-tissue
    gradient with Gaussian noise and ``num_structures`` bright vertebral bodies (rounded, slightly tilted
    rectangles with a brighter cortical rim, each a little larger than the one above) stacked top to bottom
    down the middle with small gaps; the class map is 0 for background and ``1..num_structures`` for the
    bodies from top to bottom. Where two bodies touch the upper one keeps the pixel. Sizes are in pixels
    (the phantom has no physical spacing); image values are 8-bit grey levels, body ~ +70..125 over tissue.
    """
    rows_n, cols_n = int(shape[0]), int(shape[1])
    if rows_n < 8 * num_structures or cols_n < 16 or num_structures < 1:
        raise ValueError(f"shape {shape} is too small for {num_structures} structures")
    rng = np.random.default_rng(seed)
    r = np.arange(rows_n, dtype=np.float32)[:, None]
    c = np.arange(cols_n, dtype=np.float32)[None, :]

    # Soft tissue: brighter along the body's midline, darker towards the sides, a gentle top-bottom ramp.
    x = (c - cols_n / 2) / (cols_n / 2)
    y = r / rows_n
    image = 45.0 + 45.0 * np.exp(-2.5 * x**2) + 20.0 * y + rng.normal(0.0, 4.0, (rows_n, cols_n)).astype(np.float32)
    class_map = np.zeros((rows_n, cols_n), dtype=np.uint8)

    # Body heights grow by ~8 % per level; gaps are ~30 % of a body's height.
    growth = 1.0 + 0.08 * np.arange(num_structures)
    heights = growth * rng.uniform(0.97, 1.03, num_structures)
    gap = 0.3 * heights.mean()
    top, bottom = 0.08 * rows_n, 0.94 * rows_n
    scale = (bottom - top) / (heights.sum() + gap * (num_structures - 1))
    heights, gap = heights * scale, gap * scale
    row0 = top
    for k in range(num_structures):
        h = heights[k]
        w = min(1.5 * h * (1.0 + 0.04 * k), 0.6 * cols_n)
        centre = (row0 + h / 2 + rng.uniform(-0.03, 0.03) * h, cols_n / 2 + rng.uniform(-0.03, 0.03) * cols_n)
        angle = np.deg2rad(rng.uniform(-4.0, 4.0))
        radius = 0.2 * min(h, w)
        # Only evaluate the distance inside the body's bounding box (keeps 3000 x 2500 fast).
        reach = 0.5 * np.hypot(h, w) + 2
        r0, r1 = max(int(centre[0] - reach), 0), min(int(centre[0] + reach) + 1, rows_n)
        c0, c1 = max(int(centre[1] - reach), 0), min(int(centre[1] + reach) + 1, cols_n)
        dist = _rounded_box_distance(r[r0:r1], c[:, c0:c1], centre, (h / 2, w / 2), radius, angle)
        inside = dist <= 0
        rim = max(1.0, 0.08 * min(h, w))
        box = image[r0:r1, c0:c1]
        box += np.where(inside, 70.0 + 10.0 * k / num_structures, 0.0)
        box += np.where(inside & (dist > -rim), 45.0, 0.0)
        labels = class_map[r0:r1, c0:c1]
        labels[inside & (labels == 0)] = k + 1
        row0 += h + gap
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), class_map


def _stored_pixels(image: np.ndarray, bits: int, monochrome1: bool) -> np.ndarray:
    if image.ndim != 2:
        raise ValueError(f"expected an R x C image, got shape {image.shape}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    top = 2**bits - 1
    if image.size and (image.min() < 0 or image.max() > top):
        raise ValueError(f"image values {image.min()}..{image.max()} do not fit in {bits} unsigned bits")
    dtype = np.uint8 if bits == 8 else np.uint16
    stored = image.astype(np.int64)
    if monochrome1:
        stored = top - stored
    return np.ascontiguousarray(stored.astype(dtype))


def write_dicom(
    path: str | Path,
    image: np.ndarray,
    *,
    transfer_syntax: str = "explicit",
    monochrome1: bool = False,
    spacing: tuple[float, float] | None = None,
    spacing_attr: str = "PixelSpacing",
    rescale: tuple[float, float] | None = None,
    bits: int = 8,
    modality: str = "DX",
) -> Path:
    """Write ``image`` (``R x C``, non-negative integers below ``2**bits``) as a single-frame DICOM file.

    ``transfer_syntax``: ``"explicit"`` (uncompressed), ``"jpeg-baseline"`` (Pillow JPEG, quality 95; 8-bit
    only; lossy), ``"jpeg2000"`` (lossless) or ``"rle"``. ``monochrome1`` stores ``2**bits - 1 - image`` with
    PhotometricInterpretation MONOCHROME1, so a reader that inverts MONOCHROME1 gets ``image`` back.
    ``spacing`` is the (row, column) pixel spacing in mm, written to ``spacing_attr`` (``"PixelSpacing"`` or
    ``"ImagerPixelSpacing"``); None writes no spacing. ``rescale = (slope, intercept)`` adds
    RescaleSlope/RescaleIntercept; the stored values stay ``image``. ``modality`` is ``"DX"`` or ``"CR"``.
    """
    path = Path(path)
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; choose one of {', '.join(TRANSFER_SYNTAXES)}")
    if transfer_syntax == "jpeg-baseline" and bits != 8:
        raise ValueError("JPEG baseline holds 8-bit data only")
    if spacing_attr not in ("PixelSpacing", "ImagerPixelSpacing"):
        raise ValueError(f"spacing_attr must be PixelSpacing or ImagerPixelSpacing, not {spacing_attr!r}")
    stored = _stored_pixels(np.asarray(image), bits, monochrome1)

    sop_class = SOP_CLASSES[modality]
    sop_instance = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID

    ds = pydicom.Dataset()
    ds.file_meta = meta
    now = datetime.datetime(2024, 1, 1, 12, 0, 0)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = f"PHANTOM-{path.stem}"
    ds.PatientName = "Phantom^Spine"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.BodyPartExamined = "SPINE"
    ds.ViewPosition = "AP"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PatientOrientation = ["R", "F"]

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if spacing is not None:
        setattr(ds, spacing_attr, [f"{float(spacing[0]):g}", f"{float(spacing[1]):g}"])
    if rescale is not None:
        ds.RescaleSlope = f"{float(rescale[0]):g}"
        ds.RescaleIntercept = f"{float(rescale[1]):g}"
        ds.RescaleType = "US"

    if transfer_syntax == "jpeg-baseline":
        buffer = io.BytesIO()
        Image.fromarray(stored, mode="L").save(buffer, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
        if transfer_syntax != "explicit":
            ds.compress(TRANSFER_SYNTAXES[transfer_syntax], generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path


_MAT73_HEADER = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 12:00:00 2024 HDF5 schema 1.00 ."


def write_mat(path: str | Path, mask: np.ndarray, *, key: str = DEFAULT_KEY, version: str = "5") -> Path:
    """Write ``mask`` (any array, usually ``R x C x K`` uint8) as variable ``key`` of a MATLAB ``.mat`` file.

    ``version="5"`` uses SciPy (compressed); ``version="7.3"`` writes HDF5 like MATLAB does: a 512-byte
    userblock holding the MAT header and the array stored with its axes reversed (column-major), so
    :func:`spine_seg.mat_io.read_mask` returns the ``R x C x K`` array either way.
    """
    path = Path(path)
    mask = np.asarray(mask)
    if version == "5":
        scipy.io.savemat(path, {key: mask}, do_compression=True)
        return path
    if version != "7.3":
        raise ValueError(f"version must be '5' or '7.3', not {version!r}")
    with h5py.File(path, "w", userblock_size=512) as f:
        dataset = f.create_dataset(key, data=np.ascontiguousarray(mask.transpose()), compression="gzip")
        dataset.attrs["MATLAB_class"] = np.bytes_(mask.dtype.name if mask.dtype != np.bool_ else "logical")
    header = _MAT73_HEADER.encode("ascii").ljust(116, b" ") + b" " * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(512, b"\x00"))
    return path


def write_challenge_folder(
    root: str | Path,
    n_train: int = 4,
    n_test: int = 2,
    shape: tuple[int, int] = (256, 160),
    seed: int = 0,
    *,
    layout: str = "background-last",
    channels: int = 7,
    mat_version: str = "5",
    shapes: Sequence[tuple[int, int]] | None = None,
    **dicom_kwargs: object,
) -> Path:
    """Write phantoms in the challenge layout and return ``root``.

    Creates ``root/train/img/NNN.dcm`` + ``root/train/label/NNN.mat`` for ids ``001..n_train`` and
    ``root/test/img/NNN.dcm`` for ids ``501..500+n_test``. Case number ``i`` (1, 2, ..., 501, ...) uses seed
    ``seed * 1000 + i``; the k-th case written (training first, k from 0) has shape ``shapes[k % len(shapes)]``
    when ``shapes`` is given, else ``shape``. Masks are
    ``R x C x channels`` uint8 in ``layout``, saved as ``.mat`` ``mat_version``; ``dicom_kwargs`` go to
    :func:`write_dicom`.
    """
    root = Path(root)
    folders = {name: root / name for name in ("train/img", "train/label", "test/img")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    ids = [(f"{i:03d}", i, True) for i in range(1, n_train + 1)]
    ids += [(f"{500 + i:03d}", 500 + i, False) for i in range(1, n_test + 1)]
    for k, (case_id, number, is_train) in enumerate(ids):
        case_shape = shapes[k % len(shapes)] if shapes else shape
        num = channels if layout == "one-hot" else channels - 1
        image, class_map = make_phantom(case_shape, seed=seed * 1000 + number, num_structures=num)
        if is_train:
            write_dicom(folders["train/img"] / f"{case_id}.dcm", image, **dicom_kwargs)  # type: ignore[arg-type]
            mask = from_class_map(class_map, layout, channels)
            write_mat(folders["train/label"] / f"{case_id}.mat", mask, version=mat_version)
        else:
            write_dicom(folders["test/img"] / f"{case_id}.dcm", image, **dicom_kwargs)  # type: ignore[arg-type]
    return root
