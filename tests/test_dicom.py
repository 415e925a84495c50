"""DICOM series in and out (dicom_series.py), and MGH volumes through volumes.py.

Series are written here with pydicom from small seeded volumes, with a known
geometry, so every check compares against numbers worked out by hand.
"""
import os

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from scans import dicom_series
from scans import volumes

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
OBLIQUE = (0.8660254037844387, 0.5, 0.0, 0.0, 0.0, -1.0)  # rows turned 30 degrees in x-y, columns down z
SPACING = (0.9, 0.8)  # PixelSpacing: between rows, between columns
STUDY, FRAME = generate_uid(), generate_uid()
PERSONAL = ("Doe^Jane", "PID-0042", "19700101")


def a_volume(seed, shape=(12, 10, 6), dtype=np.int16, high=2000):
    """(columns, rows, slices) seeded integers: axis 0 along a row, axis 1 down a column."""
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def slice_dataset(pixels, position, orientation=AXIAL, series_uid="1.2.826.0.1.3680043.8.498.1", number=3,
                  description="T1 axial", **attributes):
    """An MR Image Storage data set of one (rows, columns) slice with the patient data of PERSONAL."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PERSONAL
    ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.Modality, ds.StudyDate = STUDY, FRAME, "MR", "20240102"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing, ds.SliceThickness = list(SPACING), 3.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(pixels.dtype.kind == "i")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def slice_positions(n, origin=(-20.0, 15.0, 30.0), orientation=AXIAL, spacing=2.5):
    normal = np.cross(orientation[:3], orientation[3:])
    return [np.asarray(origin) + k * spacing * normal for k in range(n)]


def write_files(folder, volume, names=None, positions=None, orientation=AXIAL, **attributes):
    """One file a slice of `volume` (columns, rows, slices); returns the paths, in slice order."""
    os.makedirs(folder, exist_ok=True)
    positions = positions or slice_positions(volume.shape[2], orientation=orientation)
    paths = []
    for k, position in enumerate(positions):
        path = os.path.join(folder, names[k] if names else f"slice{k:03d}.dcm")
        pydicom.dcmwrite(path, slice_dataset(volume[:, :, k].T, position, orientation, **attributes),
                         enforce_file_format=True)
        paths.append(path)
    return paths


def expected_affine(origin, orientation, spacing):
    """RAS affine from the DICOM definition: world(i, j, k) = IPP_k + i*dc*row_dir + j*dr*col_dir, in LPS."""
    row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_dir * SPACING[1], col_dir * SPACING[0]
    lps[:3, 2], lps[:3, 3] = np.cross(row_dir, col_dir) * spacing, origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def load_folder(folder):
    series, notes = dicom_series.find_series(sorted(os.path.join(folder, n) for n in os.listdir(folder)))
    return series, notes


def only_image(folder):
    series, notes = load_folder(folder)
    assert len(series) == 1 and notes == []
    return dicom_series.load_series(series[0])


# --- Reading ---------------------------------------------------------------------

def test_axial_series_reads_as_the_volume_on_its_dicom_grid(tmp_path):
    volume = a_volume(0)
    write_files(tmp_path / "t1", volume)
    image = only_image(tmp_path / "t1")
    assert image.get_data_dtype() == np.int16 and image.shape == (12, 10, 6)
    assert np.array_equal(image.dataobj.get_unscaled(), volume)
    np.testing.assert_allclose(image.affine, expected_affine((-20, 15, 30), AXIAL, 2.5), atol=1e-4)
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.9, 2.5), rtol=1e-6)
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    # voxel (3, 4, 5) by hand: LPS (-20 + 3*0.8, 15 + 4*0.9, 30 + 5*2.5) is RAS (17.6, -18.6, 42.5)
    np.testing.assert_allclose(image.affine @ [3, 4, 5, 1], [17.6, -18.6, 42.5, 1], atol=1e-4)


def test_oblique_series_keeps_its_orientation(tmp_path):
    volume = a_volume(1)
    write_files(tmp_path / "obl", volume, orientation=OBLIQUE)
    image = only_image(tmp_path / "obl")
    assert np.array_equal(image.dataobj.get_unscaled(), volume)
    row_dir, col_dir = np.array(OBLIQUE[:3]), np.array(OBLIQUE[3:])
    normal = np.cross(row_dir, col_dir)
    lps = np.array([-20.0, 15.0, 30.0]) + 2 * 0.8 * row_dir + 7 * 0.9 * col_dir + 4 * 2.5 * normal
    np.testing.assert_allclose(image.affine @ [2, 7, 4, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)


def test_slices_are_sorted_by_position_not_by_name_or_instance_number(tmp_path):
    volume = a_volume(2)
    names = [f"{n:08x}" for n in np.random.default_rng(2).permutation(2 ** 20)[:6]]  # no extension, random order
    paths = write_files(tmp_path / "shuffled", volume, names=names, InstanceNumber=1)
    series, _ = load_folder(tmp_path / "shuffled")
    assert series[0].files == paths
    assert np.array_equal(dicom_series.load_series(series[0]).dataobj.get_unscaled(), volume)


def test_rescale_is_carried_as_nifti_scaling_and_round_trips_through_to_stored(tmp_path):
    volume = a_volume(3, dtype=np.uint16, high=4000)
    write_files(tmp_path / "scaled", volume, RescaleSlope=0.5, RescaleIntercept=-100)
    image = only_image(tmp_path / "scaled")
    assert (image.dataobj.slope, image.dataobj.inter) == (0.5, -100.0)
    assert volumes.scaling_of(image) == (0.5, -100.0)
    real = np.asarray(image.dataobj, dtype=np.float32)
    np.testing.assert_array_equal(real, volume * 0.5 - 100)
    assert np.array_equal(volumes.to_stored(real, image, image.get_data_dtype()), volume)


def test_slices_with_different_rescales_become_float_real_values(tmp_path):
    volume = a_volume(4)
    for k, path in enumerate(write_files(tmp_path / "mixed", volume)):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 1 + k, -k
        ds.save_as(path)
    image = only_image(tmp_path / "mixed")
    assert image.get_data_dtype() == np.float32 and volumes.scaling_of(image) == (1.0, 0.0)
    assert np.array_equal(np.asarray(image.dataobj), volume * (1 + np.arange(6)) - np.arange(6))


def test_monochrome1_is_inverted_within_its_bits(tmp_path):
    volume = a_volume(5, dtype=np.uint16, high=4096)
    write_files(tmp_path / "mono1", volume, PhotometricInterpretation="MONOCHROME1", BitsStored=12, HighBit=11)
    assert np.array_equal(only_image(tmp_path / "mono1").dataobj.get_unscaled(), 4095 - volume)


def test_enhanced_multi_frame_file_is_read_frame_by_frame(tmp_path):
    volume, order = a_volume(6), [3, 0, 5, 1, 4, 2]  # frames stored out of position order
    ds = slice_dataset(volume[:, :, 0].T, (0, 0, 0))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        delattr(ds, keyword)
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(OBLIQUE)
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = list(SPACING)
    shared.PixelValueTransformationSequence = [Dataset()]
    shared.PixelValueTransformationSequence[0].RescaleSlope = 2
    shared.PixelValueTransformationSequence[0].RescaleIntercept = 7
    ds.SharedFunctionalGroupsSequence = [shared]
    positions = slice_positions(6, orientation=OBLIQUE)
    ds.PerFrameFunctionalGroupsSequence = []
    for k in order:
        item = Dataset()
        item.PlanePositionSequence = [Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = [float(v) for v in positions[k]]
        ds.PerFrameFunctionalGroupsSequence.append(item)
    ds.NumberOfFrames = 6
    ds.PixelData = np.ascontiguousarray(volume[:, :, order].transpose(2, 1, 0)).tobytes()
    os.makedirs(tmp_path / "enh")
    pydicom.dcmwrite(tmp_path / "enh" / "multi.dcm", ds, enforce_file_format=True)
    series, notes = load_folder(tmp_path / "enh")
    assert notes == [] and series[0].stem == "multi" and series[0].description.endswith("1 file, 6 frames")
    image = dicom_series.load_series(series[0])
    assert np.array_equal(image.dataobj.get_unscaled(), volume) and volumes.scaling_of(image) == (2.0, 7.0)
    np.testing.assert_allclose(image.affine, expected_affine((-20, 15, 30), OBLIQUE, 2.5), atol=1e-4)


def test_two_series_in_one_folder_and_a_single_file(tmp_path):
    write_files(tmp_path / "exam", a_volume(7), series_uid="1.2.3.7", number=7)
    write_files(tmp_path / "exam", a_volume(8, shape=(12, 10, 4)), names=[f"b{k}" for k in range(4)],
                series_uid="1.2.3.8", number=8, description="FLAIR")
    series, _ = load_folder(tmp_path / "exam")
    assert [(s.stem, s.description) for s in series] == [
        ("exam_s8", "series 8 (FLAIR), 4 files"), ("exam_s7", "series 7 (T1 axial), 6 files")]
    single, _ = dicom_series.find_series([str(tmp_path / "exam" / "slice002.dcm")])
    image = dicom_series.load_series(single[0])
    assert single[0].stem == "slice002" and image.shape == (12, 10, 1)
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.9, 3.0), rtol=1e-6)  # SliceThickness


def test_a_gap_refuses_the_series_naming_it(tmp_path):
    paths = write_files(tmp_path / "gap", a_volume(9), description="gappy")
    os.remove(paths[3])
    series, _ = load_folder(tmp_path / "gap")
    with pytest.raises(ValueError, match=r"^series 3 \(gappy\), 5 files: slice positions are not evenly spaced "
                                         r"\(2\.5 to 5 mm apart, e.g. after slice002\.dcm\)"):
        dicom_series.load_series(series[0])


def test_a_tilted_stack_is_refused(tmp_path):
    # each slice 0.3 mm further along its rows than the last, 2.5 mm apart along the normal: atan(0.3/2.5)
    positions = [np.array([-20.0 + 0.3 * k, 15.0, 30.0 + 2.5 * k]) for k in range(6)]
    write_files(tmp_path / "tilt", a_volume(21), positions=positions)
    with pytest.raises(ValueError, match=r"slices are stacked 6\.84 degrees off their normal"):
        dicom_series.load_series(load_folder(tmp_path / "tilt")[0][0])


def test_identical_copies_are_kept_once_and_differing_ones_refused(tmp_path):
    volume = a_volume(10)
    paths = write_files(tmp_path / "dup", volume)
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "dup" / "copy.dcm")
    series, _ = load_folder(tmp_path / "dup")
    assert np.array_equal(dicom_series.load_series(series[0]).dataobj.get_unscaled(), volume)
    ds.PixelData = (volume[:, :, 2].T + 1).astype(np.int16).tobytes()
    ds.save_as(tmp_path / "dup" / "copy.dcm")
    with pytest.raises(ValueError, match=r"copy\.dcm and slice002\.dcm are different slices at one position"):
        dicom_series.load_series(load_folder(tmp_path / "dup")[0][0])


@pytest.mark.parametrize("keyword, value, words", [("ImageOrientationPatient", list(OBLIQUE), "orientations"),
                                                   ("PixelSpacing", [0.9, 0.7], "pixel spacings")])
def test_slices_that_differ_in_geometry_refuse_the_series(tmp_path, keyword, value, words):
    paths = write_files(tmp_path / "odd", a_volume(11))
    ds = pydicom.dcmread(paths[4])
    setattr(ds, keyword, value)
    ds.save_as(paths[4])
    with pytest.raises(ValueError, match=f"slices of different {words} "):
        dicom_series.load_series(load_folder(tmp_path / "odd")[0][0])


def test_slices_of_different_sizes_refuse_the_series(tmp_path):
    write_files(tmp_path / "sizes", a_volume(12))
    write_files(tmp_path / "sizes", a_volume(12, shape=(8, 10, 1)), names=["small.dcm"],
                positions=[np.array([-20.0, 15.0, 45.0])])
    with pytest.raises(ValueError, match=r"slices of different sizes \(Rows/Columns\)"):
        dicom_series.load_series(load_folder(tmp_path / "sizes")[0][0])


def test_non_images_truncated_and_foreign_files_are_notes_without_personal_data(tmp_path):
    volume = a_volume(13)
    paths = write_files(tmp_path / "mixed", volume)
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID = pydicom.uid.BasicTextSRStorage
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID = generate_uid()
    report.PatientName, report.SeriesInstanceUID = PERSONAL[0], generate_uid()
    pydicom.dcmwrite(tmp_path / "mixed" / "report", report, enforce_file_format=True)
    whole = open(paths[5], "rb").read()
    open(paths[5], "wb").write(whole[:-50])  # the last slice cut short
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    series, notes = load_folder(tmp_path / "mixed")
    assert [os.path.basename(n.split(":")[0]) for n in notes] == ["notes.txt", "report", "slice005.dcm"]
    assert notes[0].endswith("not a DICOM file; skipped")
    assert notes[1].endswith("not an image (Basic Text SR Storage, no pixel data); skipped")
    assert notes[2].endswith("truncated (its pixel data has 190 of 240 bytes); skipped")
    image = dicom_series.load_series(series[0])
    assert np.array_equal(image.dataobj.get_unscaled(), volume[:, :, :5])
    assert not any(value in note for note in notes for value in PERSONAL)


def test_is_dicom_by_content(tmp_path):
    path = write_files(tmp_path / "d", a_volume(14, shape=(4, 4, 1)), names=["IM0001"])[0]
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), tmp_path / "v.nii")
    (tmp_path / "empty.dcm").write_bytes(b"")
    bare = pydicom.data.get_testdata_file("ExplVR_LitEndNoMeta.dcm")  # no preamble, no "DICM"
    assert [dicom_series.is_dicom(p) for p in (path, bare, tmp_path / "v.nii", tmp_path / "empty.dcm", tmp_path,
                                               tmp_path / "missing")] == [True, True, False, False, False, False]


# --- pydicom's own test files ----------------------------------------------------

def test_pydicoms_mr_test_files_read_in_every_uncompressed_and_rle_encoding():
    reference = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    for name in ("MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm",
                 "MR_small_RLE.dcm", "MR_small_padded.dcm"):
        series, notes = dicom_series.find_series([pydicom.data.get_testdata_file(name)])
        image = dicom_series.load_series(series[0])
        assert notes == [] and image.shape == (64, 64, 1), name
        assert np.array_equal(image.dataobj.get_unscaled()[:, :, 0], reference.pixel_array.T), name
        # IPP (-83.9063, -91.2, 6.6406) LPS, rows along +x at 0.3125 mm: RAS column 0 points to -x
        np.testing.assert_allclose(image.affine[:3, [0, 3]], [[-0.3125, 83.9063], [0, 91.2], [0, 6.6406]],
                                   atol=1e-4)


def test_compressed_files_decode_or_say_what_to_install():
    for name, words in (("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only), which no "
                         "installed pydicom plugin decodes (pip install pylibjpeg pylibjpeg-openjpeg)"),
                        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression, which no installed "
                         "pydicom plugin decodes (pip install pylibjpeg pylibjpeg-libjpeg)")):
        series, _ = dicom_series.find_series([pydicom.data.get_testdata_file(name)])
        try:
            image = dicom_series.load_series(series[0])
        except ValueError as error:
            assert str(error) == f"series 1, 1 file: {name}: its pixel data is compressed as {words}"
        else:  # a decoder is installed here: then it must be exact (both are lossless)
            reference = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm")).pixel_array
            assert np.array_equal(image.dataobj.get_unscaled()[:, :, 0], reference.T)


def test_dicomdir_is_skipped_and_a_radial_series_refused():
    root = os.path.join(os.path.dirname(pydicom.data.get_testdata_file("MR_small.dcm")), "dicomdirtests")
    radial = os.path.join(root, "98892003", "MR700")
    paths = [os.path.join(root, "DICOMDIR")] + [os.path.join(radial, n) for n in sorted(os.listdir(radial))]
    series, notes = dicom_series.find_series(paths)
    assert notes == [] and [(s.stem, len(s.files)) for s in series] == [("MR700", 7)]
    with pytest.raises(ValueError, match=r"^series 700 \(ANGIO Projected from   C\), 7 files: slices of different "
                                         r"orientations \(4648, 4678\); not one volume$"):
        dicom_series.load_series(series[0])


# --- Writing ---------------------------------------------------------------------

def refined(image, factors):
    """A stand-in for the network: each stored voxel repeated factors[k] times along axis k."""
    stored = np.asarray(image.dataobj.get_unscaled())
    for axis, factor in enumerate(factors):
        stored = np.repeat(stored, factor, axis=axis)
    return volumes.resampled_image(image, stored, factors)


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE])
def test_written_series_reads_back_exactly_on_its_finer_grid(tmp_path, orientation):
    volume = a_volume(15, dtype=np.uint16, high=4000)
    write_files(tmp_path / "in", volume, orientation=orientation, RescaleSlope=0.5, RescaleIntercept=-100)
    series = load_folder(tmp_path / "in")[0][0]
    output = refined(dicom_series.load_series(series), [4, 4, 1])
    dicom_series.write_series(series, output, str(tmp_path / "out" / "in_x4"), " ESPCN x4")
    assert os.listdir(tmp_path / "out") == ["in_x4"]  # no .partial- left behind
    back = only_image(tmp_path / "out" / "in_x4")
    assert back.shape == (48, 40, 6) and back.get_data_dtype() == np.uint16
    assert np.array_equal(back.dataobj.get_unscaled(), output.dataobj)
    assert volumes.scaling_of(back) == (0.5, -100.0)
    np.testing.assert_allclose(back.affine, output.affine, atol=1e-4)
    # exact extent: output voxel 0 is centred at input voxel coordinate (0 + 0.5) / 4 - 0.5 = -0.375
    corner = expected_affine((-20, 15, 30), orientation, 2.5) @ [-0.375, -0.375, 0, 1]
    np.testing.assert_allclose(back.affine @ [0, 0, 0, 1], corner, atol=1e-4)


def test_written_files_carry_the_dicom_attributes(tmp_path):
    write_files(tmp_path / "in", a_volume(16), description="T1 axial", ManufacturerModelName="Skyra")
    series = load_folder(tmp_path / "in")[0][0]
    inputs = {path: open(path, "rb").read() for path in series.files}
    dicom_series.write_series(series, refined(dicom_series.load_series(series), [4, 4, 1]),
                              str(tmp_path / "in_x4"), " ESPCN x4",
                              dicom_series.Derivation("ESPCN x4", slice_thickness=dicom_series.slice_thickness(series),
                                                      network="ESPCN"))
    files = [pydicom.dcmread(tmp_path / "in_x4" / name) for name in sorted(os.listdir(tmp_path / "in_x4"))]
    source = pydicom.dcmread(series.files[0])
    assert len(files) == 6 and len({f.SOPInstanceUID for f in files}) == 6
    assert {f.SeriesInstanceUID for f in files} != {source.SeriesInstanceUID} and \
        len({f.SeriesInstanceUID for f in files}) == 1
    first = files[0]
    assert (str(first.PatientName), first.PatientID, first.PatientBirthDate) == PERSONAL
    assert (first.StudyInstanceUID, first.FrameOfReferenceUID, first.SOPClassUID) == \
        (STUDY, FRAME, pydicom.uid.MRImageStorage)
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"] and first.SeriesDescription == "T1 axial ESPCN x4"
    assert first.ManufacturerModelName == "ESPCN"  # the equipment that made it: the network, not the scanner
    assert (first.Rows, first.Columns, first.BitsAllocated, first.PixelRepresentation) == (40, 48, 16, 1)
    assert [float(v) for v in first.PixelSpacing] == [0.225, 0.2] and first.SeriesNumber == 1003
    # in-plane the slices are the source's: its thickness (3 mm) is kept, the spacing is the grid's
    assert float(first.SliceThickness) == 3.0 and float(first.SpacingBetweenSlices) == 2.5
    # slice k at IPP(output voxel (0, 0, k)): the input's IPP moved by -0.375 of a pixel along rows and columns
    for k, f in enumerate(files):
        np.testing.assert_allclose([float(v) for v in f.ImagePositionPatient],
                                   [-20 - 0.375 * 0.8, 15 - 0.375 * 0.9, 30 + 2.5 * k], atol=1e-9)
    assert all(open(path, "rb").read() == content for path, content in inputs.items())  # inputs untouched


def test_a_float_volume_is_written_as_uint16_spanning_its_range(tmp_path):
    volume = a_volume(20)
    for k, path in enumerate(write_files(tmp_path / "in", volume)):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 1 + k, -k
        ds.save_as(path)
    series = load_folder(tmp_path / "in")[0][0]
    image = dicom_series.load_series(series)  # float32: the slices' rescales differ
    dicom_series.write_series(series, image, str(tmp_path / "out"), " copy")
    back = only_image(tmp_path / "out")
    real = np.asarray(image.dataobj)
    step = (real.max() - real.min()) / 65535
    assert back.get_data_dtype() == np.uint16 and volumes.scaling_of(back) == pytest.approx((step, real.min()))
    assert np.abs(np.asarray(back.dataobj) - real).max() <= step * 0.5001


def test_pydicoms_ct_file_round_trips_as_ct(tmp_path):
    series, _ = dicom_series.find_series([pydicom.data.get_testdata_file("CT_small.dcm")])
    image = dicom_series.load_series(series[0])
    assert volumes.scaling_of(image) == (1.0, -1024.0)
    dicom_series.write_series(series[0], image, str(tmp_path / "ct"), " copy")
    written = pydicom.dcmread(tmp_path / "ct" / "00001.dcm")
    assert written.SOPClassUID == pydicom.uid.CTImageStorage and written.SeriesDescription == "copy"
    back = only_image(tmp_path / "ct")
    assert np.array_equal(back.dataobj.get_unscaled(), image.dataobj.get_unscaled())
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)


def test_a_failed_write_leaves_nothing_and_an_earlier_output_is_replaced(tmp_path, monkeypatch):
    write_files(tmp_path / "in", a_volume(17))
    series = load_folder(tmp_path / "in")[0][0]
    output = refined(dicom_series.load_series(series), [2, 2, 1])
    out_dir = str(tmp_path / "out" / "in_x2")
    os.makedirs(out_dir)
    (tmp_path / "out" / "in_x2" / "old.dcm").write_bytes(b"earlier run")
    real_write, calls = pydicom.dcmwrite, []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError, match="disk full"):
        dicom_series.write_series(series, output, out_dir, " x2")
    assert os.listdir(tmp_path / "out") == ["in_x2"] and os.listdir(out_dir) == ["old.dcm"]
    monkeypatch.setattr(pydicom, "dcmwrite", real_write)
    dicom_series.write_series(series, output, out_dir, " x2")
    assert os.listdir(tmp_path / "out") == ["in_x2"] and len(os.listdir(out_dir)) == 6
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an earlier output"):
        dicom_series.write_series(series, output, str(tmp_path / "keep"), " x2")


def test_a_sheared_grid_is_refused(tmp_path):
    write_files(tmp_path / "in", a_volume(18))
    series = load_folder(tmp_path / "in")[0][0]
    image = dicom_series.load_series(series)
    sheared = image.affine.copy()
    sheared[0, 1] = 0.3
    with pytest.raises(ValueError, match="sheared"):
        dicom_series.write_series(series, nib.Nifti1Image(np.asarray(image.dataobj.get_unscaled()), sheared),
                                  str(tmp_path / "out"), " x1")
    assert not os.path.exists(tmp_path / "out")


# --- FreeSurfer MGH volumes ------------------------------------------------------

def test_mgz_is_a_volume_and_round_trips_on_its_finer_grid(tmp_path):
    affine = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -100], [0, -1.1, 0, 110], [0, 0, 0, 1]])
    nib.save(nib.MGHImage(a_volume(19), affine), tmp_path / "brain.mgz")
    assert volumes.is_nifti("x/brain.mgz") and volumes.is_nifti("brain.MGH") and not volumes.is_nifti("a.png")
    assert volumes.nifti_stem("x/brain.mgz") == "brain" and volumes.output_suffix("brain.mgh") == ".mgz"
    assert volumes.output_suffix("brain.nii") == ".nii.gz"
    image, data = volumes.load_volume(str(tmp_path / "brain.mgz"))
    out = np.repeat(np.repeat(a_volume(19), 4, axis=0), 4, axis=1)
    volumes.save_resampled(image, out, [4, 4, 1], str(tmp_path / "brain_x4.mgz"))
    back = nib.load(tmp_path / "brain_x4.mgz")
    assert isinstance(back, nib.MGHImage) and back.get_data_dtype() == np.dtype(">i2")  # MGH: big-endian
    assert np.array_equal(np.asarray(back.dataobj), out)
    np.testing.assert_allclose(back.affine, volumes.resampled_affine(affine, [4, 4, 1]), atol=1e-5)
    np.testing.assert_allclose(back.header.get_zooms(), (0.25, 0.275, 1.2), rtol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["brain.mgz", "brain_x4.mgz"]
