"""Through-plane super-resolution (predict.py --through-plane): grids, the method's pieces, bad inputs."""
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common import model_files
from common import slice_profiles
import constants
import dataset
import modules
import predict
from through_plane import adaptation
from through_plane import model_source
from through_plane import refine
from through_plane import slice_geometry
from conftest import run_script

FACTOR = 4


def oblique(zooms, shift=(10.0, -20.0, 5.0)):
    """An affine rotated 20 degrees about x and 30 about z, with these voxel sizes."""
    a, b = np.radians(20), np.radians(30)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return nib.affines.from_matvec(rot_z @ rot_x @ np.diag(zooms), shift)


def thick_affine(fine_affine, axis, factor):
    """The affine of thick slices that each cover `factor` fine slices along `axis` (no gap)."""
    step = np.eye(4)
    step[axis, axis], step[axis, 3] = factor, (factor - 1) / 2.0
    return fine_affine @ step


@pytest.fixture(scope="module")
def template_crop():
    """A 56 x 48 x 48 piece of the embedded MNI152 template (1 mm), across the brain's middle."""
    volume = dataset.template_volume()
    return np.ascontiguousarray(volume[70:126, 90:138, 60:108]) * 1000.0


def write_pair(folder, fine, axis, fine_affine, sform=None, name="thick", dtype=np.float32):
    """Writes the thick volume (FACTOR slices averaged along `axis`) with qform = the fine affine's, and
    sform = `sform` (another fine-grid affine) if given; returns its path."""
    thick, _ = slice_profiles.make_thick(fine.astype(np.float32), axis, FACTOR)
    image = nib.Nifti1Image(thick.astype(dtype), thick_affine(fine_affine, axis, FACTOR))
    image.set_qform(thick_affine(fine_affine, axis, FACTOR), code=1)
    image.set_sform(thick_affine(fine_affine if sform is None else sform, axis, FACTOR), code=2)
    path = os.path.join(folder, f"{name}.nii.gz")
    nib.save(image, path)
    return path


def psnr(estimate, truth):
    span = truth.max() - truth.min()
    return 10 * np.log10(span ** 2 / np.mean((estimate - truth) ** 2))


@pytest.mark.parametrize("axis", [2, 0])
def test_output_lies_on_the_fine_grid_and_beats_cubic_spline(tmp_path, template_crop, axis):
    fine_affine = oblique([1.0, 1.0, 1.0])
    sform = nib.affines.from_matvec(np.diag([-1.0, 1.0, 1.0]), [90.0, -126.0, -72.0])  # differs from the qform
    path = write_pair(str(tmp_path), template_crop, axis, fine_affine, sform)
    code = predict.main(["--input", path, "--through-plane", "--no-adapt", "--model", "espcn",
                         "--output-dir", str(tmp_path / "out")])
    assert code == 0
    result = nib.load(str(tmp_path / "out" / f"thick_espcn_through_x{FACTOR}.nii.gz"))
    assert result.shape == template_crop.shape
    assert np.allclose(result.get_qform(), fine_affine, atol=1e-4)
    assert np.allclose(result.get_sform(), sform, atol=1e-4)
    assert int(result.header["qform_code"]) == 1 and int(result.header["sform_code"]) == 2
    assert np.allclose(result.header.get_zooms(), [1.0, 1.0, 1.0], atol=1e-5)
    thick = nib.load(path).get_fdata()
    spline = refine.cubic_spline(thick, axis, thick.shape[axis] * FACTOR)
    model_psnr, spline_psnr = psnr(result.get_fdata(), template_crop), psnr(spline, template_crop)
    assert model_psnr > spline_psnr + 1.0, (model_psnr, spline_psnr)


def test_per_volume_adaptation_adapts_and_is_not_worse_than_the_pretrained_model(tmp_path, capsys):
    # a 96 x 96 x 64 piece: on the 56 x 48 x 48 one (12 thick slices) adaptation overfits its few planes and
    # loses 0.1 dB; here 300 steps gained 0.23 dB (2-core EPYC)
    template_crop = np.ascontiguousarray(dataset.template_volume()[50:146, 70:166, 50:114]) * 1000.0
    path = write_pair(str(tmp_path), template_crop, 1, np.diag([1.0, 1.0, 1.0, 1.0]), dtype=np.int16)
    outputs, printed = {}, {}
    for flag in ("--adapt", "--no-adapt"):
        # a step count, not a time, bounds it: the same adaptation on any machine, however loaded
        code = predict.main(["--input", path, "--through-plane", flag, "--through-plane-seconds", "600",
                             "--adapt-steps", "300", "--model", "espcn", "--output-dir", str(tmp_path / flag)])
        assert code == 0
        result = nib.load(str(tmp_path / flag / f"thick_espcn_through_x{FACTOR}.nii.gz"))
        assert result.get_data_dtype() == np.int16 and result.shape == template_crop.shape
        outputs[flag] = result.get_fdata()
        printed[flag] = capsys.readouterr().out
    steps = re.search(r"adapted to this volume for \d+ s \((\d+) steps; stopped by", printed["--adapt"])
    assert steps and int(steps.group(1)) > 0, printed["--adapt"]
    assert not np.array_equal(outputs["--adapt"], outputs["--no-adapt"])
    assert psnr(outputs["--adapt"], template_crop) >= psnr(outputs["--no-adapt"], template_crop)


def test_a_4d_series_is_refined_volume_by_volume(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((12, 10, 5, 2)).astype(np.float32)
    data[..., 1] *= 2.0
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 4.0, 1.0])), str(tmp_path / "series.nii"))
    code = predict.main(["--input", str(tmp_path / "series.nii"), "--through-plane", "--no-adapt",
                         "--model", "espcn", "--output-dir", str(tmp_path)])
    assert code == 0
    result = nib.load(str(tmp_path / "series_espcn_through_x4.nii.gz"))
    assert result.shape == (12, 10, 20, 2)
    out = result.get_fdata()
    # each volume keeps its own thick slices (data consistency), so the second is about twice the first
    assert np.allclose(out[..., 1].mean(), 2 * out[..., 0].mean(), rtol=0.05)


def test_bad_inputs_get_one_line_each_and_the_rest_still_run(tmp_path, capsys):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((10, 8, 4)).astype(np.float32),
                             np.diag([1.0, 1.0, 4.0, 1.0])), str(good))
    isotropic = tmp_path / "isotropic.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 8, 6), np.float32), np.diag([1.0, 1.0, 1.2, 1.0])), str(isotropic))
    one_slice = tmp_path / "one_slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 8, 1), np.float32), np.diag([1.0, 1.0, 4.0, 1.0])), str(one_slice))
    picture = tmp_path / "picture.png"
    Image.new("L", (16, 16), 80).save(picture)
    code = predict.main(["--input", str(isotropic), str(one_slice), str(picture), str(good), "--through-plane",
                         "--no-adapt", "--model", "espcn", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert sorted(os.listdir(tmp_path / "out")) == ["good_espcn_through_x4.json", "good_espcn_through_x4.nii.gz",
                                                    "good_espcn_through_x4_planes.png"]
    for path, words in ((isotropic, "nearly isotropic"), (one_slice, "2D image"), (picture, "2D image")):
        lines = [line for line in err.splitlines() if str(path) in line]
        assert len(lines) == 1 and words in lines[0], (path, err)
    assert "Traceback" not in err


def test_an_explicit_factor_refines_a_nearly_isotropic_volume(tmp_path):
    nib.save(nib.Nifti1Image(np.random.default_rng(2).random((10, 8, 6)).astype(np.float32),
                             np.diag([1.0, 1.0, 1.2, 1.0])), str(tmp_path / "iso.nii.gz"))
    code = predict.main(["--input", str(tmp_path / "iso.nii.gz"), "--through-plane", "--through-plane-factor", "2",
                         "--no-adapt", "--model", "espcn", "--output-dir", str(tmp_path)])
    assert code == 0
    result = nib.load(str(tmp_path / "iso_espcn_through_x2.nii.gz"))
    assert result.shape == (10, 8, 12) and np.allclose(result.header.get_zooms(), [1.0, 1.0, 0.6])


@pytest.mark.parametrize("flags", [["--through-plane-factor", "1"], ["--through-plane-factor", "9"],
                                   ["--through-plane-seconds", "0"]])
def test_bad_through_plane_flags_are_one_line(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as stop:
        predict.main(["--input", str(tmp_path / "x.nii.gz"), "--through-plane", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and flags[0] in err[0]


def test_compare_writes_scores_and_a_figure(tmp_path, template_crop):
    path = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(template_crop.astype(np.float32), np.eye(4)), str(path))
    code = predict.main(["--input", str(path), "--through-plane", "--compare", "--no-adapt", "--model", "espcn",
                         "--output-dir", str(tmp_path)])
    assert code == 0
    assert os.path.getsize(tmp_path / "fine_espcn_through_compare.png") > 0
    with open(tmp_path / "fine_espcn_through_compare.json") as f:
        scores = json.load(f)
    assert scores["slice_axis"] == 2 and scores["factor"] == FACTOR
    assert scores["model_psnr"] > scores["cubic_spline_psnr"]


# --- The method's pieces ------------------------------------------------------------

def test_depth_to_space_1d_model_saves_and_loads_with_safe_mode(tmp_path):
    model = modules.get_model_1d(3, filters=(4, 4, 4))
    x = np.random.default_rng(3).random((2, 5, 7, 1)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = model_source.load_model_1d(path, 3)
    assert loaded(x).shape == (2, 15, 7, 1)
    assert np.allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_depth_to_space_1d_orders_channels_as_fine_rows():
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(1, 2, 3, 2)  # (N, H, W, r=2 channels)
    out = modules.DepthToSpace1D(2)(x).numpy()[0, ..., 0]
    assert np.array_equal(out[0::2], x[0, ..., 0]) and np.array_equal(out[1::2], x[0, ..., 1])


@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_consistency_gives_back_the_thick_slices_exactly(profile):
    rng = np.random.default_rng(4)
    thick = rng.random((6, 5, 7)).astype(np.float32)
    guess = rng.random((6, 5, 21)).astype(np.float32)
    weights = slice_profiles.regular_weights(7, 3, 0.8, profile)  # with a gap
    consistent = refine.make_consistent(guess, thick, 2, weights)
    assert np.allclose(slice_profiles.along_axis(weights, consistent, 2), thick, atol=1e-5)


def test_cubic_spline_passes_through_the_thick_slices_on_the_fine_grid():
    """With F = 3, fine voxel 3j + 1 is centred at thick coordinate (3j + 1.5) / 3 - 0.5 = j exactly."""
    thick = np.random.default_rng(5).random((3, 4, 6)).astype(np.float32)
    fine = refine.cubic_spline(thick, 2, 18)
    assert fine.shape == (3, 4, 18) and np.allclose(fine[..., 1::3], thick, atol=1e-4)


def test_slice_axis_and_factor_from_voxel_sizes():
    geometry = slice_geometry.read_geometry([0.9, 5.0, 0.9], (10, 10, 10))
    assert (geometry.axis, geometry.factor) == (1, 6)
    geometry = slice_geometry.read_geometry([0.44, 6.0, 0.44], (10, 10, 10))  # 13.6: the largest shipped factor
    assert (geometry.axis, geometry.factor, geometry.working_pixel) == (1, 6, 1.0)
    geometry = slice_geometry.read_geometry([1.0, 1.0, 1.0], (10, 10, 10), factor=4)
    assert (geometry.axis, geometry.factor) == (2, 4)
    with pytest.raises(ValueError, match="nearly isotropic"):
        slice_geometry.read_geometry([1.0, 1.0, 1.3], (10, 10, 10))


def test_a_network_that_ships_some_factors_takes_the_nearest_of_them():
    shipped = (3, 4)
    expected = {2.0: 3, 2.9: 3, 3.4: 3, 3.5: 3, 3.51: 4, 4.6: 4, 5.0: 4, 6.0: 4, 13.6: 4}  # ties: the smaller
    for ratio, factor in expected.items():
        geometry = slice_geometry.read_geometry([1.0, 1.0, ratio], (10, 10, 10), shipped=shipped)
        assert geometry.factor == factor, ratio
        assert np.isclose(geometry.working_pixel, ratio / factor) and np.isclose(geometry.output_spacing(),
                                                                                   ratio / factor)
    assert slice_geometry.read_geometry([1.0, 1.0, 5.0], (10, 10, 10), shipped=(3, 5)).factor == 5  # its own
    assert slice_geometry.read_geometry([1.0, 1.0, 4.0], (10, 10, 10), shipped=(3, 5)).factor == 3  # a tie
    # the quality network's factors: 5 mm on a float32 1 mm pixel is still the tie; clinical ratios near 14 take x6
    assert slice_geometry.read_geometry([1.0, 0.9999999, 5.0], (10, 10, 10), shipped=(3, 4, 6)).factor == 4
    assert slice_geometry.read_geometry([1.0, 1.0, 5.01], (10, 10, 10), shipped=(3, 4, 6)).factor == 6
    assert slice_geometry.read_geometry([0.43, 0.43, 6.0], (10, 10, 10), shipped=(3, 4, 6)).factor == 6
    # a factor given by --through-plane-factor is kept, shipped or not (the model source refuses a missing one)
    assert slice_geometry.read_geometry([1.0, 1.0, 5.0], (10, 10, 10), factor=5, shipped=shipped).factor == 5
    assert slice_geometry.read_geometry([1.0, 1.0, 5.0], (10, 10, 10)).factor == 5  # every factor: the ESPCN
    assert slice_geometry.read_geometry([1.0, 1.0, 1.4], (10, 10, 10), shipped=shipped).factor == 3
    # a factor far above the ratio would work on a grid many times finer than the pixels: refused, unless asked
    with pytest.raises(ValueError, match="too close for a x6 model"):
        slice_geometry.read_geometry([1.0, 1.0, 2.0], (10, 10, 10), shipped=(6,))
    assert slice_geometry.read_geometry([1.0, 1.0, 2.0], (10, 10, 10), factor=6, shipped=(6,)).factor == 6


def test_a_model_file_of_one_factor_refines_any_slice_spacing_at_its_own_factor(tmp_path, capsys):
    """--model FILE (a x3 through-plane file) on 5 mm slices of 1 mm pixels: the file's x3 on a 5/3 mm grid, where
    the rounded ratio (x5) used to be asked of the file and refused; an explicit other factor is still refused."""
    model = os.path.join(os.path.dirname(__file__), "..", "pretrained", "espcn_through_x3.keras")
    source = tmp_path / "axial_5mm.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(5).integers(0, 900, (20, 16, 4)).astype(np.int16),
                             np.diag([1.0, 1.0, 5.0, 1.0])), str(source))
    assert predict.main(["--input", str(source), "--through-plane", "--model", model, "--no-adapt",
                         "--output-dir", str(tmp_path / "out")]) == 0
    out = nib.load(str(tmp_path / "out" / "axial_5mm_espcn_through_x3.nii.gz"))  # the file's network
    assert out.shape == (20, 16, 12) and np.allclose(out.header.get_zooms(), (1.0, 1.0, 5.0 / 3.0))
    capsys.readouterr()
    assert predict.main(["--input", str(source), "--through-plane", "--model", model, "--no-adapt",
                         "--through-plane-factor", "5", "--output-dir", str(tmp_path / "refused")]) != 0
    assert "refines x3, not the x5 asked for" in capsys.readouterr().err
    fine = tmp_path / "fine.nii.gz"  # --compare makes thick slices at the file's factor, not the default 4
    nib.save(nib.Nifti1Image(np.random.default_rng(6).random((18, 16, 15)).astype(np.float32), np.eye(4)), str(fine))
    assert predict.main(["--input", str(fine), "--through-plane", "--compare", "--model", model, "--no-adapt",
                         "--output-dir", str(tmp_path / "compare")]) == 0
    assert json.load(open(tmp_path / "compare" / "fine_espcn_through_compare.json"))["factor"] == 3
    in_plane = model_files.shipped_path("espcn")
    capsys.readouterr()
    assert predict.main(["--input", str(source), "--through-plane", "--model", in_plane,
                         "--output-dir", str(tmp_path / "in_plane")]) != 0
    errors = capsys.readouterr().err.strip().splitlines()
    assert "not a through-plane model" in errors[0] and "Traceback" not in "".join(errors)


def test_train_py_trains_a_through_plane_model(tmp_path, tiny_tree):
    out = tmp_path / "out"
    result = run_script("train.py", "--data-dir", tiny_tree, "--output-dir", str(out), "--through-plane-factor", "3",
                        "--epochs", "1", "--batch-size", "2", "--patch-size", "32", "--precision", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(name for name in os.listdir(out) if name.endswith(".keras")) == ["espcn_through_x3.keras"]
    model = model_source.load_model_1d(str(out / "espcn_through_x3.keras"), 3)
    assert model(np.zeros((1, 4, 9, 1), np.float32)).shape == (1, 12, 9, 1)


def test_train_py_fine_tunes_from_an_init_model_and_refuses_another_kind(tmp_path, tiny_tree):
    start = os.path.join(os.path.dirname(__file__), "..", "pretrained", "espcn_through_x3.keras")
    common = ["--data-dir", tiny_tree, "--through-plane-factor", "3", "--epochs", "1", "--batch-size", "2",
              "--patch-size", "32", "--precision", "float32", "--learning-rate", "1e-9", "--lr-schedule", "constant"]
    result = run_script("train.py", *common, "--output-dir", str(tmp_path / "a"), "--init-model", start)
    assert result.returncode == 0, result.stderr[-3000:]
    tuned = model_source.load_model_1d(str(tmp_path / "a" / "espcn_through_x3.keras"), 3)
    original = model_source.load_model_1d(start, 3)
    for got, want in zip(tuned.get_weights(), original.get_weights()):  # a rate of 1e-9 leaves the start as it was
        np.testing.assert_allclose(got, want, atol=1e-5)
    wrong = os.path.join(os.path.dirname(__file__), "..", "pretrained", "espcn_through_x4.keras")
    result = run_script("train.py", *common, "--output-dir", str(tmp_path / "b"), "--init-model", wrong)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr
    assert "--init-model" in errors[0] and "x(4, 1), not x(3, 1)" in errors[0]


def test_adaptation_steps_fall_with_the_volume_down_to_their_floor_share():
    """Each network's steps on small volumes, proportionally fewer on large ones, never below
    constants.ADAPT_MIN_SHARE of them (the ESPCN's 500 go down to 200, the quality network's 100 to 40)."""
    full, floor = constants.ADAPT_FULL_VOXELS, constants.ADAPT_MIN_SHARE
    for network, steps in ((n, constants.NETWORK_PRESETS[n]["adapt_steps"]) for n in ("espcn", "quality")):
        settings = refine.Settings().for_network(network)
        assert [adaptation.adaptation_steps(v, settings) for v in (full // 2, full, 2 * full, 10 * full)] == \
            [steps, steps, round(steps / 2), round(steps * floor)], network
    assert adaptation.adaptation_steps(10 * full, refine.Settings(steps=1)) == 1


def test_the_quality_network_keeps_all_of_adaptation_on_widely_spaced_slices():
    """A quarter of the change up to a spacing / pixel ratio of 5 (issue 21's x4 volumes: 4.61), the whole change
    from 5 (clinical 5-6 mm slices); --adapt-keep and the ESPCN unchanged."""
    assert constants.WIDE_RATIO == 5.0  # the ratios below are chosen around it
    kept = {ratio: refine.Settings().for_network("quality", ratio).keep
            for ratio in (None, 2.0, 3.46, 4.0, 4.61, 4.99, 5.0, 13.8)}
    quarter, whole = (constants.NETWORK_PRESETS["quality"][key] for key in ("adapt_keep", "adapt_keep_wide"))
    assert quarter != whole
    assert kept == {None: quarter, 2.0: quarter, 3.46: quarter, 4.0: quarter, 4.61: quarter, 4.99: quarter,
                    5.0: whole, 13.8: whole}
    assert refine.Settings(keep=0.5).for_network("quality", 5.0).keep == 0.5
    assert refine.Settings().for_network("espcn", 2.0).keep == constants.NETWORK_PRESETS["espcn"]["adapt_keep"]
    geometry = slice_geometry.read_geometry([0.434, 0.434, 6.0], (10, 10, 10), shipped=(3, 4))
    assert np.isclose(geometry.ratio, 6.0 / 0.434) and geometry.factor == 4


def test_adaptation_keeps_the_asked_share_of_its_change_to_the_weights():
    """keep 0 gives back the starting weights, 1 the adapted ones, 0.5 their midpoint (the runs are repeatable)."""
    start = modules.get_model_1d(3)
    planes = np.random.default_rng(3).random((6, 48, 40)).astype(np.float32)
    weights = {}
    for keep in (0.0, 0.5, 1.0):
        settings = refine.Settings(steps=6, keep=keep, patience=float("inf"), batch_size=4)
        model, done, why = adaptation.adapt(start, planes, 3, 1.0, steps=6, deadline=float("inf"),
                                               settings=settings, precision="float32")
        assert (done, why) == (6, "steps")
        weights[keep] = model.get_weights()
    for s, none, half, full in zip(start.get_weights(), weights[0.0], weights[0.5], weights[1.0]):
        np.testing.assert_array_equal(none, s)
        np.testing.assert_allclose(half, (s + full) / 2, rtol=1e-5, atol=1e-7)
    assert any(not np.array_equal(s, full) for s, full in zip(start.get_weights(), weights[1.0]))


def test_in_plane_detail_finer_than_the_working_grid_comes_back_smooth_across_the_slices():
    """0.8 mm pixels, 4 mm slices refined x4 on a 1 mm working grid: the in-plane detail the working grid cannot
    hold, here varying along the slices, comes back spread smoothly along them (detail_finer_than_working) —
    well below the error of data consistency alone, which puts it back as a staircase across each thick slice.
    The network is an untrained quality network (its last convolution starts at zero: nearest neighbour along
    the rows, whatever the random weights before it), so the check is deterministic."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    fine = rng.random((40, 40))[:, :, None] * np.linspace(0.2, 1.0, 48)[None, None, :]
    thick, fine = slice_profiles.make_thick(fine.astype(np.float32), 2, FACTOR)
    geometry = slice_geometry.read_geometry((0.8, 0.8, 4.0), thick.shape, factor=FACTOR)
    assert geometry.working_shape() == (32, 32, 12) and geometry.output_shape() == fine.shape
    model = modules.get_quality_model_1d(FACTOR, filters=8, blocks=1)
    settings = refine.Settings(adapt=False).for_network("quality")
    refined = refine.refine(model, thick, geometry, settings)
    working = slice_geometry.resample(thick, geometry.working_shape())
    staircase = refine.make_consistent(
        slice_geometry.resample(refine.estimate(model, working, 2, settings), fine.shape), thick, 2,
        geometry.output_weights(settings.profile))

    def high_pass_error(volume):  # in-plane detail only (a Gaussian high-pass, not the grids' own resampling)
        error = volume - fine
        return float(np.mean((error - ndimage.gaussian_filter(error, (1.0, 1.0, 0))) ** 2))

    assert high_pass_error(refined) < 0.4 * high_pass_error(staircase), (high_pass_error(refined),
                                                                         high_pass_error(staircase))
    np.testing.assert_allclose(slice_profiles.along_axis(geometry.output_weights(settings.profile), refined, 2),
                               thick, atol=1e-5)  # still consistent with the thick slices
