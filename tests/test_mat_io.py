"""spine_seg.mat_io.read_mask on MATLAB v5 and v7.3 (HDF5) files, good and bad."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from spine_seg.errors import InputFileError
from spine_seg.label_layout import LAYOUTS
from spine_seg.mat_io import read_mask
from spine_seg.phantom import make_phantom, mask_from_class_map, write_mat

VERSIONS = ["5", "7.3"]


@pytest.fixture
def mask() -> np.ndarray:
    """A 70 x 40 x 7 background-last mask; rows, columns and channels all differ, so no axis mix-up hides."""
    _, class_map = make_phantom((70, 40), seed=3)
    return mask_from_class_map(class_map, "background-last", 7)


def raises_input_error(path: Path, *words: str, key: str = "label_separated") -> None:
    with pytest.raises(InputFileError) as info:
        read_mask(path, key)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for word in words:  # in the cause, not in the (test-named) path
        assert word in info.value.cause, message


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip(tmp_path: Path, version: str, layout: str) -> None:
    _, class_map = make_phantom((70, 40), seed=4, num_structures=7 if layout == "one-hot" else 6)
    original = mask_from_class_map(class_map, layout, 7)
    back = read_mask(write_mat(tmp_path / "m.mat", original, version=version))
    assert back.dtype == np.uint8
    assert back.shape == (70, 40, 7)
    np.testing.assert_array_equal(back, original)


def test_v73_is_stored_like_matlab(tmp_path: Path, mask: np.ndarray) -> None:
    path = write_mat(tmp_path / "m.mat", mask, version="7.3")
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    assert scipy.io.matlab.matfile_version(path) == (2, 0)  # what SciPy reports for v7.3
    assert h5py.is_hdf5(path)
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        assert f["label_separated"].shape == (7, 40, 70)  # column-major: axes reversed
        assert f["label_separated"].attrs["MATLAB_class"] == b"uint8"
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)  # really not a v5 file


def test_v5_is_a_v5_file(tmp_path: Path, mask: np.ndarray) -> None:
    path = write_mat(tmp_path / "m.mat", mask, version="5")
    assert scipy.io.matlab.matfile_version(path) == (1, 0)
    assert not h5py.is_hdf5(path)


@pytest.mark.parametrize("version", VERSIONS)
def test_other_key_and_dtypes(tmp_path: Path, mask: np.ndarray, version: str) -> None:
    path = write_mat(tmp_path / "m.mat", mask.astype(np.float64), key="seg", version=version)
    np.testing.assert_array_equal(read_mask(path, "seg"), mask)
    path = write_mat(tmp_path / "b.mat", mask.astype(bool), version=version)
    np.testing.assert_array_equal(read_mask(path), mask)


@pytest.mark.parametrize("version", VERSIONS)
def test_missing_key(tmp_path: Path, mask: np.ndarray, version: str) -> None:
    path = write_mat(tmp_path / "m.mat", mask, key="other", version=version)
    raises_input_error(path, "no variable 'label_separated'", "other")


@pytest.mark.parametrize("version", VERSIONS)
def test_not_binary(tmp_path: Path, mask: np.ndarray, version: str) -> None:
    bad = mask.copy()
    bad[5, 5, 6] = 2
    raises_input_error(write_mat(tmp_path / "m.mat", bad, version=version), "not binary", "2")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("dtype", "value"), [(np.int8, -1), (np.float64, 0.5), (np.float64, np.nan), (np.uint16, 256)])
def test_not_binary_other_dtypes(tmp_path: Path, mask: np.ndarray, version: str, dtype: type, value: float) -> None:
    bad = mask.astype(dtype)
    bad[3, 4, 0] = value
    raises_input_error(write_mat(tmp_path / "m.mat", bad, version=version), "not binary")


@pytest.mark.parametrize("version", VERSIONS)
def test_not_3d(tmp_path: Path, mask: np.ndarray, version: str) -> None:
    raises_input_error(write_mat(tmp_path / "m.mat", mask[..., 0], version=version), "R x C x K", "(70, 40)")


def test_missing_file(tmp_path: Path) -> None:
    raises_input_error(tmp_path / "nothing.mat", "does not exist")


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path = tmp_path / "random.mat"
    path.write_bytes(rng.bytes(int(rng.integers(1, 4000))))
    raises_input_error(path, "MATLAB .mat file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mat"
    path.write_bytes(b"")
    raises_input_error(path, "MATLAB .mat file")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_truncated(tmp_path: Path, mask: np.ndarray, version: str, fraction: float) -> None:
    path = write_mat(tmp_path / "m.mat", mask, version=version)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    raises_input_error(path, "MATLAB .mat file")


@pytest.mark.parametrize("fraction", [0.4, 0.6, 0.8, 0.95])
def test_corrupt_compressed_data(tmp_path: Path, mask: np.ndarray, fraction: float) -> None:
    """A flipped byte inside the zlib stream of a compressed v5 file (zlib.error before the fix)."""
    path = write_mat(tmp_path / "m.mat", mask, version="5")
    data = bytearray(path.read_bytes())
    offset = int(len(data) * fraction)
    assert offset > 136  # past the 128-byte header and the 8-byte miCOMPRESSED tag
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputFileError) as info:
        read_mask(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert "MATLAB .mat file" in info.value.cause
