"""Write and read 2D NIfTI images whose first two axes are the DICOM rows and columns.

``monai.transforms.LoadImage`` (NibabelReader or ITKReader) gives back the stored array unchanged, so an
``R x C`` radiograph written here loads as ``R x C`` again, on the same axes as the ``.mat`` mask.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from spine_seg.atomic import atomic_path
from spine_seg.errors import InputFileError


def spacing_affine(spacing: tuple[float, float]) -> np.ndarray:
    """4x4 affine with the (row, column) pixel spacing in mm on the diagonal, rows and columns negated.

    NIfTI affines are RAS; ITK, DICOM and 3D Slicer work in LPS. The negated axes make ITK read an identity
    direction, which is what ITK writes for a 2D mask without an affine (MONAI Label's writer does), so a
    mask it returns lands on the image in a viewer.
    """
    return np.diag([-float(spacing[0]), -float(spacing[1]), 1.0, 1.0])


def write_nifti(path: str | Path, array: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> None:
    """Atomically write an ``R x C`` array (its dtype kept) to ``path`` (``.nii`` or ``.nii.gz``)."""
    if array.ndim != 2:
        raise ValueError(f"expected an R x C array, got shape {array.shape}")
    img = nib.Nifti1Image(np.asarray(array), spacing_affine(spacing))
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def read_nifti(path: str | Path) -> np.ndarray:
    """Read a 2D NIfTI back as an ``R x C`` array (a trailing singleton axis is dropped); a missing, unreadable or
    not 2D file raises :class:`InputFileError` naming it."""
    try:
        arr = np.asanyarray(nib.load(path).dataobj)
    except FileNotFoundError as err:
        raise InputFileError(path, "no such file") from err
    except Exception as err:  # noqa: BLE001 - nibabel / gzip / zlib raise many types for a damaged file
        raise InputFileError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputFileError(path, f"expected a 2D image, got shape {arr.shape}")
    return arr
