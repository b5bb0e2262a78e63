"""spine_seg.dicom_io.read_radiograph: transfer syntaxes, photometry, rescale, spacing and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, JPEGLosslessSV1

from spine_seg.dicom_io import read_radiograph
from spine_seg.errors import InputFileError
from spine_seg.phantom import TRANSFER_SYNTAXES, make_phantom, write_dicom

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
LOSSLESS = ["explicit", "jpeg2000", "rle"]


def shipped(name: str) -> Path:
    """A test file inside the pydicom wheel (pydicom-data is not installed; nothing is downloaded)."""
    path = PYDICOM_TEST_FILES / name
    if not path.is_file():
        pytest.fail(f"{name} is not shipped with this pydicom ({pydicom.__version__})")
    return path


@pytest.fixture
def image() -> np.ndarray:
    """An asymmetric 70 x 40 phantom with a bright marker in the top-left corner."""
    img, _ = make_phantom((70, 40), seed=7)
    img[:4, :3] = 250
    return img


def raises_input_error(path: Path, *words: str) -> InputFileError:
    """Read ``path`` expecting an InputFileError whose one-line message names the file and every word."""
    with pytest.raises(InputFileError) as info:
        read_radiograph(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for word in words:  # in the cause, not in the (test-named) path
        assert word in info.value.cause, message
    return info.value


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_syntaxes_read_back_exactly(tmp_path: Path, image: np.ndarray, syntax: str) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, transfer_syntax=syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    radiograph = read_radiograph(path)
    assert radiograph.pixels.shape == (70, 40)
    np.testing.assert_array_equal(radiograph.pixels, image)


def test_jpeg_baseline_reads_back_within_tolerance(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, transfer_syntax="jpeg-baseline")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.PixelData[:1] != b"" and b"\xff\xd8" in ds.PixelData[:64]  # a JPEG codestream, encapsulated
    pixels = read_radiograph(path).pixels
    assert pixels.shape == image.shape
    diff = np.abs(pixels.astype(np.int64) - image)
    assert diff.mean() < 3
    assert diff[:4, :3].mean() < 30  # the marker is still in the top-left corner
    assert not np.array_equal(pixels, image)  # lossy: proves the data really went through JPEG


@pytest.mark.parametrize("syntax", [*LOSSLESS, "jpeg-baseline"])
def test_monochrome1_reads_like_monochrome2(tmp_path: Path, image: np.ndarray, syntax: str) -> None:
    m1 = write_dicom(tmp_path / "m1.dcm", image, transfer_syntax=syntax, monochrome1=True)
    m2 = write_dicom(tmp_path / "m2.dcm", image, transfer_syntax=syntax)
    ds = pydicom.dcmread(m1)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    stored = ds.pixel_array.astype(np.int64)
    assert np.abs(stored - (255 - image.astype(np.int64))).mean() < 3  # stored inverted
    a, b = read_radiograph(m1).pixels, read_radiograph(m2).pixels
    if syntax == "jpeg-baseline":
        assert np.abs(a.astype(np.int64) - b).mean() < 3
    else:
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, image)


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("monochrome1", [False, True])
def test_16_bit(tmp_path: Path, image: np.ndarray, syntax: str, monochrome1: bool) -> None:
    wide = image.astype(np.uint16) * 257  # uses the full 0..65535 range
    path = write_dicom(tmp_path / "a.dcm", wide, transfer_syntax=syntax, bits=16, monochrome1=monochrome1)
    assert pydicom.dcmread(path).BitsAllocated == 16
    pixels = read_radiograph(path).pixels
    assert pixels.max() > 255
    np.testing.assert_array_equal(pixels, wide)


@pytest.mark.parametrize(
    ("slope", "intercept", "bits"), [(2.0, -1024.0, 16), (1.0, 100.0, 8), (0.5, 0.0, 8)]
)
def test_rescale_is_applied(tmp_path: Path, image: np.ndarray, slope: float, intercept: float, bits: int) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, rescale=(slope, intercept), bits=bits)
    pixels = read_radiograph(path).pixels
    expected = image.astype(np.float64) * slope + intercept
    np.testing.assert_allclose(pixels, expected)
    if slope == 0.5:
        assert pixels.dtype == np.float32  # half-integers are not squeezed into an integer type
    else:
        assert np.issubdtype(pixels.dtype, np.integer)


def test_rescale_with_monochrome1(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, monochrome1=True, rescale=(3.0, -5.0))
    np.testing.assert_array_equal(read_radiograph(path).pixels, image.astype(np.int64) * 3 - 5)


def test_spacing_from_pixel_spacing(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, spacing=(0.25, 0.4))
    radiograph = read_radiograph(path)
    assert radiograph.spacing == (0.25, 0.4)
    assert radiograph.spacing_source == "PixelSpacing"
    assert radiograph.warnings == []


def test_spacing_from_imager_pixel_spacing(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, spacing=(0.15, 0.175), spacing_attr="ImagerPixelSpacing")
    assert "PixelSpacing" not in pydicom.dcmread(path)
    radiograph = read_radiograph(path)
    assert (radiograph.spacing, radiograph.spacing_source) == ((0.15, 0.175), "ImagerPixelSpacing")


def test_pixel_spacing_wins_over_imager_pixel_spacing(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, spacing=(0.2, 0.3))
    ds = pydicom.dcmread(path)
    ds.ImagerPixelSpacing = ["0.5", "0.6"]
    ds.save_as(path)
    assert read_radiograph(path).spacing == (0.2, 0.3)


@pytest.mark.parametrize("value", ["0.2", ["0", "0.3"], ["-1", "1"]])
def test_unusable_spacing_is_ignored_with_a_warning(tmp_path: Path, image: np.ndarray, value: object) -> None:
    path = write_dicom(tmp_path / "odd.dcm", image)
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = value
    ds.ImagerPixelSpacing = ["0.5", "0.6"]
    ds.save_as(path)
    radiograph = read_radiograph(path)
    assert (radiograph.spacing, radiograph.spacing_source) == ((0.5, 0.6), "ImagerPixelSpacing")
    assert len(radiograph.warnings) == 1 and "odd.dcm: PixelSpacing" in radiograph.warnings[0]
    assert "not two positive numbers" in radiograph.warnings[0]


def test_non_numeric_spacing_is_ignored(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "odd.dcm", image, spacing=(0.2, 0.2))
    path.write_bytes(path.read_bytes().replace(b"0.2\\0.2", b"abc\\def"))
    radiograph = read_radiograph(path)
    assert (radiograph.spacing, radiograph.spacing_source) == ((1.0, 1.0), "default")
    assert any("not two positive numbers" in w for w in radiograph.warnings), radiograph.warnings


def test_rescale_slope_or_intercept_alone(tmp_path: Path, image: np.ndarray) -> None:
    as_float = image.astype(np.float64)
    for keyword, value, expected in [("RescaleSlope", "2", as_float * 2), ("RescaleIntercept", "-7", as_float - 7)]:
        path = write_dicom(tmp_path / f"{keyword}.dcm", image)
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.save_as(path)
        np.testing.assert_array_equal(read_radiograph(path).pixels, expected)
    path = write_dicom(tmp_path / "empty.dcm", image, rescale=(2.0, 0.0))
    ds = pydicom.dcmread(path)
    ds.RescaleSlope = ""  # empty: counts as 1
    ds.save_as(path)
    np.testing.assert_array_equal(read_radiograph(path).pixels, image)


def test_non_numeric_rescale_is_a_clear_error(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, rescale=(2.0, 0.0))
    slope = b"\x28\x00\x53\x10DS\x02\x002 "  # (0028,1053) RescaleSlope, DS of 2 bytes: "2 "
    assert slope in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(slope, slope[:-2] + b"x "))
    raises_input_error(path, "RescaleSlope", "is not a number")


def test_modality_lut_sequence_is_applied(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image)
    ds = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", list(range(1000, 1256)))
    ds.ModalityLUTSequence = pydicom.Sequence([item])
    ds.save_as(path)
    np.testing.assert_array_equal(read_radiograph(path).pixels, image.astype(np.int64) + 1000)


def test_no_spacing_defaults_to_1mm_with_a_warning(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "nospacing.dcm", image)
    radiograph = read_radiograph(path)
    assert (radiograph.spacing, radiograph.spacing_source) == ((1.0, 1.0), "default")
    assert len(radiograph.warnings) == 1
    assert "nospacing.dcm" in radiograph.warnings[0] and "1.0 mm" in radiograph.warnings[0]


def test_cr_modality(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, modality="CR")
    ds = pydicom.dcmread(path)
    assert (ds.Modality, ds.SOPClassUID) == ("CR", "1.2.840.10008.5.1.4.1.1.1")
    np.testing.assert_array_equal(read_radiograph(path).pixels, image)


def test_written_file_is_valid_dx(tmp_path: Path, image: np.ndarray) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", image))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.Modality == "DX" and ds.PatientID and ds.StudyInstanceUID != ds.SeriesInstanceUID
    assert (ds.Rows, ds.Columns) == image.shape


# --- JPEG lossless (process 14, selection value 1, transfer syntax 1.2.840.10008.1.2.4.70) -------------------

_DC_COUNTS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # ITU T.81 table K.3 (categories 0..11)


def jpeg_lossless_sv1(image: np.ndarray) -> bytes:
    """Encode an 8-bit ``R x C`` image as a JPEG lossless SV1 codestream (a tiny reference encoder).

    Nothing installed encodes JPEG lossless, and the pydicom wheel ships no grayscale SV1 file.
    """
    x = image.astype(np.int64)
    rows, cols = x.shape
    pred = np.empty_like(x)
    pred[0, 0] = 128
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    codes, code, k = {}, 0, 0
    for length, n in enumerate(_DC_COUNTS, start=1):
        for _ in range(n):
            codes[k] = format(code, f"0{length}b")
            code, k = code + 1, k + 1
        code <<= 1
    bits = []
    for d in (x - pred).ravel().tolist():
        ssss = abs(d).bit_length()
        bits.append(codes[ssss])
        if ssss:
            bits.append(format(d if d > 0 else d + (1 << ssss) - 1, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        data.append(int(stream[i : i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0)
    sof = b"\xff\xc3\x00\x0b\x08" + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    dht = b"\xff\xc4" + (3 + 16 + 12).to_bytes(2, "big") + b"\x00" + bytes(_DC_COUNTS) + bytes(range(12))
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


def test_jpeg_lossless_sv1_grayscale(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([jpeg_lossless_sv1(image)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(read_radiograph(path).pixels, image)


def test_jpeg_lossless_shipped_file() -> None:
    """pydicom's wheel has no ``JPEG-LL.dcm``, but ships an RGB SV1 file; it decodes like its RLE twin."""
    assert not (PYDICOM_TEST_FILES / "JPEG-LL.dcm").exists()
    jpeg_ll = shipped("SC_rgb_jpeg_gdcm.dcm")
    ds = pydicom.dcmread(jpeg_ll)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(shipped("SC_rgb_rle.dcm")).pixel_array)
    raises_input_error(jpeg_ll, "colour image", "RGB")  # decodable, but not a grayscale radiograph


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm"]
)
def test_shipped_encodings_match_uncompressed(name: str) -> None:
    """Files compressed by other tools (JPEG-LS, JPEG 2000, RLE) read like the uncompressed original."""
    reference = read_radiograph(shipped("MR_small.dcm")).pixels
    assert reference.shape == (64, 64) and reference.std() > 0
    np.testing.assert_array_equal(read_radiograph(shipped(name)).pixels, reference)


# --- bad files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", ["explicit", "jpeg-baseline", "rle"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_file(tmp_path: Path, image: np.ndarray, syntax: str, fraction: float) -> None:
    path = write_dicom(tmp_path / "a.dcm", image, transfer_syntax=syntax)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    raises_input_error(path, "truncated")


def test_truncated_inside_file_meta(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image)
    path.write_bytes(path.read_bytes()[:200])
    raises_input_error(path, "truncated")


def test_shipped_truncated_file() -> None:
    raises_input_error(shipped("MR_truncated.dcm"), "truncated")


def test_no_pixel_data(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    raises_input_error(path, "no pixel data")


def test_unsupported_transfer_syntax(tmp_path: Path, image: np.ndarray) -> None:
    """MPEG-2 has no pixel data decoder in pydicom (JPEG-LS would decode: pylibjpeg-libjpeg handles it)."""
    path = write_dicom(tmp_path / "a.dcm", image, transfer_syntax="jpeg-baseline")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(path)
    raises_input_error(path, "unsupported transfer syntax", MPEG2MPML)


def test_colour_image(tmp_path: Path) -> None:
    raises_input_error(shipped("SC_rgb_small_odd.dcm"), "colour image", "3 samples per pixel")


def test_multi_frame(tmp_path: Path, image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", image)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([image, image]).tobytes()
    ds.save_as(path)
    raises_input_error(path, "multi-frame", "2 frames")


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "random.dcm"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    error = raises_input_error(path, "not a DICOM file", "'DICM' marker")
    assert "force" not in error.cause, "no advice meant for pydicom's API"


def test_missing_file_or_folder(tmp_path: Path) -> None:
    raises_input_error(tmp_path / "missing.dcm", "no such file")
    raises_input_error(tmp_path, "a folder, not a DICOM file")
