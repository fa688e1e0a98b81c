"""DICOM to 8-bit frames: the display pipeline's steps checked on hand-computed pixels, on files the tests write
with pydicom and on the test files pydicom's wheel ships (never its downloadable ones)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from hdkd.data.dicom import is_dicom, read_dicom_frames
from hdkd.errors import ConfigError, DataError


def shipped(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's wheel does not ship {name}")
    return path


def write_dicom(
    path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **tags
) -> str:
    """A minimal Secondary Capture file, explicit VR little endian, with `tags` set on the dataset."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


# Stored values of a CT-like 16-bit signed image; with slope 2 and intercept -1024 they are -1024, -60, 40, 1000 HU.
STORED = np.array([[0, 482], [532, 1012]], dtype=np.int16)


def ct_file(tmp_path, photometric="MONOCHROME2", **tags):
    return write_dicom(tmp_path / "ct.dcm", STORED, photometric, 16, RescaleSlope=2, RescaleIntercept=-1024, **tags)


def test_rescale_then_window_from_the_tags(tmp_path):
    # LINEAR window c=40, w=401 (PS3.3 C.11.2.1.2): fraction ((x - 39.5) / 400 + 0.5), clipped to 0..1.
    # -1024 HU -> 0; -60 -> 0.25125 * 255 = 64.07; 40 -> 0.50125 * 255 = 127.82; 1000 -> 1 -> 255.
    (frame,) = read_dicom_frames(ct_file(tmp_path, WindowCenter=40, WindowWidth=401))
    assert frame.dtype == np.uint8 and frame.shape == (2, 2)
    np.testing.assert_array_equal(frame, [[0, 64], [128, 255]])


def test_explicit_window_replaces_the_files(tmp_path):
    # c=240, w=801: fraction ((x - 239.5) / 800 + 0.5): -60 HU -> 0.125625 -> 32.03; 40 HU -> 0.250625 -> 63.91.
    path = ct_file(tmp_path, WindowCenter=40, WindowWidth=401, VOILUTFunction="SIGMOID")
    (frame,) = read_dicom_frames(path, window=(240, 801))
    np.testing.assert_array_equal(frame, [[0, 32], [64, 255]])


def test_sigmoid_window_function(tmp_path):
    # SIGMOID (PS3.3 C.11.2.1.3.1): 1 / (1 + exp(-4 (x - c) / w)); x = c + w / 4 -> 1 / (1 + e^-1) = 0.731 -> 186.
    path = ct_file(tmp_path, WindowCenter=-60 - 100, WindowWidth=400, VOILUTFunction="SIGMOID")
    (frame,) = read_dicom_frames(path)
    assert frame[0, 1] == 186


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    (frame,) = read_dicom_frames(ct_file(tmp_path, "MONOCHROME1", WindowCenter=40, WindowWidth=401))
    np.testing.assert_array_equal(frame, [[255, 191], [127, 0]])  # 255 - the MONOCHROME2 values above


def test_no_window_uses_the_frames_own_range(tmp_path):
    pixels = np.array([[100, 300], [500, 1100]], dtype=np.uint16)  # 12 bits stored: (x - 100) / 1000 * 255
    (frame,) = read_dicom_frames(write_dicom(tmp_path / "mr.dcm", pixels, bits_stored=12))
    np.testing.assert_array_equal(frame, [[0, 51], [102, 255]])


def test_voi_lut_sequence(tmp_path):
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 8])  # 4 entries, first maps stored value 0, 8 bits per entry
    item.add_new("LUTData", "US", [0, 10, 200, 255])
    path = write_dicom(tmp_path / "lut.dcm", np.array([[0, 1], [2, 3]], dtype=np.uint8), VOILUTSequence=[item])
    np.testing.assert_array_equal(read_dicom_frames(path)[0], [[0, 10], [200, 255]])


def test_multi_frame_gives_one_array_per_frame_each_windowed(tmp_path):
    frames = np.stack([STORED, STORED + 50, STORED - 50]).astype(np.int16)
    path = write_dicom(
        tmp_path / "multi.dcm",
        frames,
        bits_stored=16,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=401,
    )
    out = read_dicom_frames(path)
    assert len(out) == 3 and all(f.shape == (2, 2) for f in out)
    np.testing.assert_array_equal(out[0], [[0, 64], [128, 255]])
    # +50 stored = +100 HU: -924 -> 0; 40 -> 127.82 (128); 140 -> 0.75125 -> 191.57 (192); 1200 -> 255.
    np.testing.assert_array_equal(out[1], [[0, 128], [192, 255]])
    assert not np.array_equal(out[1], out[2])


def test_enhanced_multi_frame_windows_per_frame(tmp_path):
    def group(**tags):
        item = Dataset()
        for keyword, value in tags.items():
            setattr(item, keyword, value)
        return item

    per_frame = []
    for center in (40, 240):
        outer = Dataset()
        outer.FrameVOILUTSequence = [group(WindowCenter=center, WindowWidth=401)]
        per_frame.append(outer)
    shared = Dataset()
    shared.PixelValueTransformationSequence = [group(RescaleSlope=2, RescaleIntercept=-1024)]
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        np.stack([STORED, STORED]),
        bits_stored=16,
        SharedFunctionalGroupsSequence=[shared],
        PerFrameFunctionalGroupsSequence=per_frame,
    )
    first, second = read_dicom_frames(path)
    np.testing.assert_array_equal(first, [[0, 64], [128, 255]])
    # c=240, w=401: fraction ((x - 239.5) / 400 + 0.5): -60 -> 0 (below), 40 -> 0.00125 -> 0.32 (0), 1000 -> 255.
    np.testing.assert_array_equal(second, [[0, 0], [0, 255]])


def test_rgb_stays_rgb(tmp_path):
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[1, 2] = (10, 20, 30)
    (frame,) = read_dicom_frames(write_dicom(tmp_path / "rgb.dcm", pixels, "RGB"))
    np.testing.assert_array_equal(frame, pixels)


def test_window_option_checked():
    with pytest.raises(ConfigError, match="--window"):
        read_dicom_frames("unused.dcm", window=(40, 0))


# ------------------------------------------------------------------------------------- pydicom's shipped files


def test_shipped_ct_rescaled_then_own_range():
    path = shipped("CT_small.dcm")  # 16-bit signed, slope 1, intercept -1024, no window tags
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64) - 1024
    (frame,) = read_dicom_frames(path)
    expected = np.rint((raw - raw.min()) / (raw.max() - raw.min()) * 255)
    np.testing.assert_array_equal(frame, expected.astype(np.uint8))
    assert frame.shape == (128, 128) and frame.min() == 0 and frame.max() == 255


def test_shipped_mr_window_from_its_tags_and_every_encoding_agrees():
    path = shipped("MR_small.dcm")  # Window Center 600, Width 1600, no rescale
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    (frame,) = read_dicom_frames(path)
    expected = np.rint(np.clip((raw - 599.5) / 1599 + 0.5, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(frame, expected)
    assert frame.min() > 0  # the window, not the image's own range (which would reach 0)
    for other in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_dicom_frames(shipped(other))[0], frame, err_msg=other)


def test_shipped_multi_frame_files():
    frames = read_dicom_frames(shipped("rtdose.dcm"))  # 15 frames of 32-bit unsigned dose
    raw = pydicom.dcmread(shipped("rtdose.dcm")).pixel_array.astype(np.float64)
    assert len(frames) == 15
    for frame, values in zip(frames, raw, strict=True):
        expected = np.rint((values - values.min()) / (values.max() - values.min()) * 255)
        np.testing.assert_array_equal(frame, expected.astype(np.uint8))
    colour = read_dicom_frames(shipped("SC_rgb_rle_2frame.dcm"))
    assert len(colour) == 2 and colour[0].shape == (100, 100, 3)
    np.testing.assert_array_equal(colour[0], pydicom.dcmread(shipped("SC_rgb_rle_2frame.dcm")).pixel_array[0])


def test_shipped_colour_encodings_become_the_same_rgb():
    (reference,) = read_dicom_frames(shipped("SC_rgb_rle.dcm"))
    assert tuple(reference[0, 0]) == (255, 0, 0) and tuple(reference[99, 99]) == (255, 255, 255)
    np.testing.assert_array_equal(read_dicom_frames(shipped("SC_rgb_rle_16bit.dcm"))[0], reference)
    for ybr in ("SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"):  # YBR_FULL(_422) -> RGB
        difference = np.abs(read_dicom_frames(shipped(ybr))[0].astype(int) - reference)
        assert difference.mean() < 1.0 and difference.max() <= 8, ybr
    (palette,) = read_dicom_frames(shipped("examples_palette.dcm"))
    assert palette.shape == (350, 800, 3) and palette.dtype == np.uint8


def test_compressed_without_its_decoder_names_the_plugin():
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder plugin is installed here")
    path = shipped("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(DataError) as error:
        read_dicom_frames(path)
    message = str(error.value)
    assert message.startswith(path) and "JPEG-LS Lossless" in message and "1.2.840.10008.1.2.4.80" in message
    assert "pylibjpeg-libjpeg" in message and "pyjpegls" in message and "\n" not in message


def test_bad_files_are_one_line_data_errors(tmp_path):
    cases = {
        "text": tmp_path / "notes.dcm",
        "truncated": tmp_path / "truncated.dcm",
        "no image": shipped("rtplan.dcm"),
        "short pixel data": shipped("MR_truncated.dcm"),
    }
    cases["text"].write_text("not a scan\n")
    whole = open(shipped("CT_small.dcm"), "rb").read()
    cases["truncated"].write_bytes(whole[: len(whole) // 2])
    expected = {
        "text": "not a DICOM file",
        "truncated": "less than expected",
        "no image": "holds no image",
        "short pixel data": "cannot decode",
    }
    for case, path in cases.items():
        with pytest.raises(DataError) as error:
            read_dicom_frames(path)
        assert str(error.value).startswith(str(path)) and expected[case] in str(error.value), case
        assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="file not found"):
        read_dicom_frames(tmp_path / "absent.dcm")


def test_detected_by_content_not_by_name(tmp_path):
    named_jpg = tmp_path / "scan.jpg"
    named_jpg.write_bytes(open(shipped("CT_small.dcm"), "rb").read())
    no_suffix = tmp_path / "IM0001"
    no_suffix.write_bytes(named_jpg.read_bytes())
    assert is_dicom(named_jpg) and is_dicom(no_suffix)
    assert read_dicom_frames(no_suffix)[0].shape == (128, 128)
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\0" * 128 + b"DIC")
    assert not is_dicom(fake) and not is_dicom(tmp_path / "absent")
