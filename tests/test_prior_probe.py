"""tools/prior_probe.py: a model fine-tuned briefly on the other slices of a scan, or on heads made to look like it."""
import os

import nibabel as nib
import numpy as np
import pytest

from common.tensorflow_env import keras
from conftest import area_downsample, import_tool



@pytest.fixture
def probe(monkeypatch):
    return import_tool(monkeypatch, "prior_probe")


def write_volume(path, depth=7):
    """Axial slices of 16x16 at 1, each with one bright voxel whose row names the slice (k + 1)."""
    data = np.ones((16, 16, depth), np.float32)
    for k in range(depth):
        data[k + 1, 3, k] = 4.0
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return data


def slice_numbers(planes):
    """Which slice each plane is, read from its bright voxel (after proxy_check's rot90)."""
    return [int(np.argwhere(np.rot90(plane, -1) == 1.0)[0][0]) - 1 for plane in planes]


def test_slices_leave_out_the_held_out_slice_and_its_gap(tmp_path, probe):
    write_volume(tmp_path / "scan.nii.gz")
    kept = probe.volume_slices(str(tmp_path / "scan.nii.gz"), held_out=3, gap=1)
    assert slice_numbers(kept) == [0, 1, 5, 6]
    assert all(plane.shape == (16, 16) and plane.min() == 64 / 255 for plane in kept)  # 1/4 of the peak, 8-bit
    assert slice_numbers(probe.volume_slices(str(tmp_path / "scan.nii.gz"), held_out=0, gap=0)) == [1, 2, 3, 4, 5, 6]


def test_training_pairs_are_the_proxys_degradation(probe):
    rng = np.random.default_rng(0)
    plane = np.random.default_rng(1).random((70, 90))
    inputs, targets = probe.training_pair([plane], rng)
    assert inputs.shape == (16, 16, 16, 1) and targets.shape == (16, 64, 64, 1)
    expected = np.round(area_downsample(targets[3, ..., 0].astype(np.float64)) * 255) / 255
    assert np.abs(inputs[3, ..., 0] - expected).max() < 1e-6
    assert np.all(np.isin(np.round(inputs * 255, 4), np.arange(256)))  # 8-bit inputs


def test_kspace_crop_keeps_the_low_frequencies_at_a_coarser_matrix(probe):
    rows, cols = np.meshgrid(np.arange(64), np.arange(48), indexing="ij")
    plane = 2.0 + 0.5 * np.cos(2 * np.pi * rows / 64) + 0.3 * np.sin(2 * np.pi * cols / 48)  # survives any crop
    coarse = probe.kspace_cropped(plane, 2.0)
    assert coarse.shape == (32, 24)
    r, c = np.meshgrid(np.arange(32), np.arange(24), indexing="ij")
    expected = 2.0 + 0.5 * np.cos(2 * np.pi * r / 32) + 0.3 * np.sin(2 * np.pi * c / 24)
    assert np.allclose(coarse, expected / expected.max(), atol=1e-6)
    high = np.cos(np.pi * rows)  # the highest row frequency: cropped away, only its mean (0) is left
    assert np.abs(probe.kspace_cropped(high + 2.0, 2.0) - 1.0).max() < 1e-6


def test_heads_fine_tune_writes_a_model_that_loads(tmp_path, probe):
    os.makedirs(tmp_path / "tree" / "train")
    head = np.zeros((40, 40, 40), np.float32)
    head[8:32, 8:32, 8:32] = np.random.default_rng(3).random((24, 24, 24)) * 500 + 100
    nib.save(nib.Nifti1Image(head, np.eye(4)), str(tmp_path / "tree" / "train" / "h.nii.gz"))
    out = tmp_path / "m.keras"
    assert probe.main(["heads", "--tree", str(tmp_path / "tree"), "--every", "1", "--average", "1", "2",
                       "--kspace", "2", "--invert", "0.5", "--noise", "0.03", "--steps", "2",
                       "--output", str(out)]) == 0
    model = keras.saving.load_model(str(out), safe_mode=True)
    assert model.output_shape == (None, None, None, 1)


def test_bad_arguments_are_refused_in_one_line(tmp_path, probe):
    write_volume(tmp_path / "scan.nii.gz", depth=3)
    scan, model = str(tmp_path / "scan.nii.gz"), str(tmp_path / "m.keras")
    for args, words in ((["--held-out", "5"], "--held-out 5"), (["--held-out", "1", "--gap", "2"], "--gap 2"),
                        (["--held-out", "0", "--output", str(tmp_path / "m.h5")], "must end in .keras"),
                        (["--held-out", "0", "--output", str(tmp_path / "no" / "m.keras")], "no such folder"),
                        (["--held-out", "0", "--model", str(tmp_path / "none.keras")], "--model")):
        arguments = ["slices", "--volume", scan, *args] + ([] if "--output" in args else ["--output", model])
        with pytest.raises(SystemExit) as stop:
            probe.main(arguments)
        assert str(stop.value).startswith("error: ") and words in str(stop.value) and "\n" not in str(stop.value)
    with pytest.raises(SystemExit) as stop:
        probe.main(["slices", "--volume", str(tmp_path / "none.nii.gz"), "--held-out", "0", "--output", model])
    assert "no such file" in str(stop.value)
    assert not os.path.exists(model)


def test_flags_out_of_range_are_refused_by_the_parser(tmp_path, probe, capsys):
    for args in (["slices", "--volume", "v.nii.gz", "--held-out", "1", "--gap", "-1"],
                 ["heads", "--kspace", "0.5"]):
        with pytest.raises(SystemExit) as stop:
            probe.main([*args, "--output", str(tmp_path / "m.keras")])
        assert stop.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and ("--gap" in error or "--kspace" in error)
