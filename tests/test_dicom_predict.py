"""predict.py on DICOM series as they come: in-plane, --through-plane, NIfTI and DICOM outputs."""
import os

import numpy as np
import pytest

import predict
from scans import dicom_series
from scans import volumes
from test_dicom import PERSONAL, write_files


def smooth_head(shape, seed=0):
    """An int16 (columns, rows, slices) volume: a bright smooth ellipsoid with soft texture on black."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.75) ** 2 + (z / 0.9) ** 2 < 1
    texture = 900 + 150 * np.sin(3 * x + rng.uniform(0, 3)) * np.cos(2 * y) + 80 * z
    return np.where(inside, texture, 0).astype(np.int16)


def psnr(a, b, peak):
    return 10 * np.log10(float(peak) ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def averaged_back(fine, factors):
    """Each input voxel's footprint on the finer grid averaged: the output brought back to the input grid."""
    shape = [n // f for n, f in zip(fine.shape, factors)]
    return fine.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean(axis=(1, 3, 5))


def read_back(folder):
    series, notes = dicom_series.find_series([os.path.join(folder, n) for n in os.listdir(folder)])
    assert len(series) == 1 and notes == []
    return dicom_series.load_series(series[0])


@pytest.fixture(scope="module")
def scanner_folder(tmp_path_factory):
    """A series written as a scanner would: shuffled file names with no extension, 3 mm slices of 0.9 x 0.8 mm."""
    folder = tmp_path_factory.mktemp("series") / "T1_post"
    volume = smooth_head((40, 36, 10))
    names = [f"IM{n:05d}" for n in np.random.default_rng(3).permutation(10)]
    write_files(str(folder), volume, names=names, positions=[np.array([-20.0, 15.0, 30.0 + 3 * k]) for k in range(10)])
    return str(folder), volume


def test_a_dicom_folder_in_plane_gives_nifti_and_dicom_on_the_exact_finer_grid(tmp_path, scanner_folder, capsys):
    folder, volume = scanner_folder
    before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    out = tmp_path / "out"
    assert predict.main(["--input", folder, "--output-dir", str(out), "--output-format", "both",
                         "--model", "espcn", "--precision", "float32"]) == 0
    printed = capsys.readouterr()
    assert all(value not in printed.out + printed.err for value in PERSONAL)
    source = read_back(folder)
    nifti = volumes.load_volume(str(out / "T1_post_espcn_x4.nii.gz"))
    series = read_back(str(out / "T1_post_espcn_x4"))
    expected_affine = volumes.resampled_affine(source.affine, (4, 4, 1))
    for image in (nifti[0], series):
        assert image.shape == (160, 144, 10)
        np.testing.assert_allclose(image.affine, expected_affine, atol=1e-4)
        np.testing.assert_allclose(image.header.get_zooms()[:3], (0.2, 0.225, 3.0), atol=1e-5)
    assert sorted(os.listdir(out)) == ["T1_post_espcn_x4", "T1_post_espcn_x4.json", "T1_post_espcn_x4.nii.gz",
                                       "T1_post_espcn_x4_planes.png"]  # one figure for both formats
    values = np.asarray(series.dataobj, np.float32)
    np.testing.assert_array_equal(values, nifti[1])  # one result, two formats
    assert psnr(averaged_back(values, (4, 4, 1)), volume, volume.max()) >= 33
    assert before == {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


def test_a_dicom_folder_through_plane_refines_the_slices(tmp_path, scanner_folder):
    folder, volume = scanner_folder
    out = tmp_path / "out"
    assert predict.main(["--input", folder, "--output-dir", str(out), "--through-plane", "--no-adapt",
                         "--output-format", "dicom", "--model", "espcn", "--precision", "float32"]) == 0
    source, series = read_back(folder), read_back(str(out / "T1_post_espcn_through_x4"))  # round(3 mm / 0.8 mm)
    assert series.shape == (40, 36, 40)
    np.testing.assert_allclose(series.affine, volumes.resampled_affine(source.affine, (1, 1, 4)), atol=1e-4)
    values = np.asarray(series.dataobj, np.float32)
    assert psnr(averaged_back(values, (1, 1, 4)), volume, volume.max()) >= 33


def test_a_mixed_folder_handles_each_kind_and_a_bad_series_does_not_stop_the_others(tmp_path, capsys):
    folder = tmp_path / "mixed"
    write_files(str(folder / "good"), smooth_head((24, 24, 4)), series_uid="1.2.3.4.1", number=1)
    gap = [np.array([0.0, 0.0, z]) for z in (0.0, 2.5, 7.5, 10.0)]
    write_files(str(folder / "good"), smooth_head((24, 24, 4), 1), names=[f"g{k}" for k in range(4)], positions=gap,
                series_uid="1.2.3.4.2", number=2)
    (folder / "good" / "notes.txt").write_text("not an image")
    code = predict.main(["--input", str(folder / "good"), "--output-dir", str(tmp_path / "out"),
                         "--model", "espcn", "--precision", "float32"])
    err = capsys.readouterr().err
    assert code == 1
    assert (tmp_path / "out" / "good_s1_espcn_x4.nii.gz").exists()
    assert not (tmp_path / "out" / "good_s2_espcn_x4.nii.gz").exists()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "evenly spaced" in errors[0] and "Traceback" not in err


def test_an_output_folder_that_holds_inputs_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    inside = write_files(str(out / "a_espcn_x4"), smooth_head((24, 24, 1)), names=["a"])  # one file: stem "a"
    before = open(inside[0], "rb").read()
    code = predict.main(["--input", inside[0], "--output-dir", str(out), "--output-format", "dicom",
                         "--model", "espcn", "--precision", "float32"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "holds inputs" in errors[0]
    assert os.listdir(out / "a_espcn_x4") == ["a"] and open(inside[0], "rb").read() == before
    assert os.listdir(out) == ["a_espcn_x4"]  # nor its figure written
