"""Read a 2D radiograph from DICOM as an ``R x C`` array in the DICOM's row/column order."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from warnings import WarningMessage, catch_warnings, simplefilter

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from spine_seg.errors import InputFileError

# What pydicom raises for files that are not DICOM or are cut short in the header.
_READ_ERRORS = (
    InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, BytesLengthException
)


@dataclass
class Radiograph:
    """A decoded radiograph.

    Attributes:
        pixels: ``R x C`` array, MONOCHROME2 (bright = dense), modality LUT applied; integer dtype when
            the values are integral, else float32.
        spacing: (row, column) pixel spacing in mm.
        spacing_source: the DICOM attribute the spacing came from, or ``"default"`` when none was found.
        warnings: notes about the file that did not stop the read.
    """

    pixels: np.ndarray
    spacing: tuple[float, float]
    spacing_source: str
    warnings: list[str] = field(default_factory=list)


def _spacing(ds: pydicom.Dataset, name: str) -> tuple[tuple[float, float], str, list[str]]:
    """(row, column) spacing in mm, the attribute it came from (``"default"``: none, 1.0 mm) and notes about
    spacing attributes that were there but unusable (not two positive numbers), which are ignored."""
    notes = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword not in ds or ds[keyword].is_empty:
            continue
        try:
            value = ds[keyword].value
            numbers = [float(v) for v in (value if isinstance(value, MultiValue) else [value])]
        except (TypeError, ValueError):
            numbers = []
        if len(numbers) == 2 and all(v > 0 for v in numbers):
            return (numbers[0], numbers[1]), keyword, notes
        notes.append(f"{name}: {keyword} {ds[keyword].repval} is not two positive numbers; ignored")
    return (1.0, 1.0), "default", notes


def _rescale(raw: np.ndarray, ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """The Modality LUT Sequence, else RescaleSlope/Intercept applied to ``raw`` (a missing or empty one counts as
    1 or 0, as it does when both are absent)."""
    if "ModalityLUTSequence" in ds:
        try:
            return apply_modality_lut(raw, ds)
        except Exception as err:  # noqa: BLE001 - a malformed LUT raises many types
            raise InputFileError(path, f"Modality LUT cannot be applied ({type(err).__name__}: {err})") from err
    factors = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        try:
            value = ds[keyword].value if keyword in ds else None
            factors.append(default if value is None or value == "" else float(value))
        except (TypeError, ValueError) as err:
            raise InputFileError(path, f"{keyword} {ds[keyword].repval} is not a number") from err
    slope, intercept = factors
    return raw if (slope, intercept) == (1.0, 0.0) else raw.astype(np.float64) * slope + intercept


def _truncation(path: Path, ds: pydicom.Dataset, caught: list[WarningMessage]) -> str | None:
    """Why the file looks cut short, or None. pydicom reads truncated files without raising."""
    for w in caught:
        if "End of file" in str(w.message):
            return f"file is truncated ({str(w.message).split(' in file ')[0]})"
    if not len(ds):
        return "file is truncated or empty: no data elements after the file meta information"
    last = ds.get_item(max(ds.keys()))
    if not isinstance(last, RawDataElement) or not isinstance(last.value, bytes) or last.length == 0xFFFFFFFF:
        return None
    if len(last.value) < last.length:
        return f"file is truncated: element {last.tag} has {len(last.value)} of its {last.length} bytes"
    if "PixelData" not in ds and last.value_tell + last.length < path.stat().st_size:
        return "file is truncated: it ends inside a data element, before any pixel data"
    return None


def _invert_monochrome1(raw: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Map stored MONOCHROME1 values onto MONOCHROME2 over the full stored-bits range."""
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    return (lo + hi - raw.astype(np.int64)).astype(raw.dtype)


def _compact(arr: np.ndarray) -> np.ndarray:
    """Store integral values in the smallest integer dtype that holds them, others as float32."""
    if arr.size and np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0):
        return arr.astype(np.float32)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dtype, copy=False)
    return arr.astype(np.float32)


def read_radiograph(path: str | Path) -> Radiograph:
    """Read a single-frame grayscale DICOM radiograph.

    Handles uncompressed, JPEG (baseline, lossless) and JPEG 2000 pixel data, inverts MONOCHROME1 and
    applies the modality LUT (Modality LUT Sequence or RescaleSlope/Intercept). Raises :class:`InputFileError`
    naming the file and the cause.
    """
    path = Path(path)
    try:
        with catch_warnings(record=True) as caught:
            simplefilter("always")
            ds = pydicom.dcmread(path)
    except FileNotFoundError as err:
        raise InputFileError(path, "no such file") from err
    except IsADirectoryError as err:
        raise InputFileError(path, "a folder, not a DICOM file") from err
    except InvalidDicomError as err:
        raise InputFileError(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from err
    except _READ_ERRORS as err:
        raise InputFileError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err
    truncated = _truncation(path, ds, caught)
    if truncated:
        raise InputFileError(path, truncated)
    if "PixelData" not in ds:
        raise InputFileError(path, "DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputFileError(path, f"multi-frame image ({frames} frames); a single 2D radiograph is expected")
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputFileError(
            path, f"colour image ({photometric}, {samples} samples per pixel); grayscale is expected"
        )
    try:
        raw = ds.pixel_array
    except NotImplementedError as err:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise InputFileError(path, f"unsupported transfer syntax {syntax} ({err})") from err
    except Exception as err:  # noqa: BLE001 - decoders raise many types; all mean undecodable data
        raise InputFileError(path, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err
    if raw.ndim != 2:
        raise InputFileError(path, f"pixel data has shape {raw.shape}; a 2D image is expected")
    if photometric == "MONOCHROME1":
        raw = _invert_monochrome1(raw, ds)
    spacing, source, warnings = _spacing(ds, path.name)
    if source == "default":
        warnings.append(f"{path.name}: no PixelSpacing/ImagerPixelSpacing, using 1.0 mm")
    return Radiograph(_compact(np.asarray(_rescale(raw, ds, path))), spacing, source, warnings)
