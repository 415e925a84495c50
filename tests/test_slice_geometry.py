"""Clinical slice geometry (issue 28): the thick-slice operator, slice thickness from headers and sidecars,
ratios that are not whole, and the same voxels on every run."""
import dataclasses
import json
import os

import nibabel as nib
import numpy as np
import pytest

from common import slice_profiles
import dataset
import predict
from scans import dicom_series
from through_plane import refine, slice_geometry
from test_dicom import a_volume, write_files


# --- The one thick-slice operator ----------------------------------------------------------

def test_a_whole_factor_box_is_the_plain_mean_and_the_training_pairs_use_it():
    weights = slice_profiles.regular_weights(4, 3)
    expected = np.kron(np.eye(4), np.full((1, 3), 1 / 3))
    assert np.allclose(weights, expected)
    target = np.random.default_rng(0).random((2, 13, 5, 1)).astype(np.float32)
    thick, fine = dataset.make_thick_pair(target, 3)
    assert fine.shape == (2, 12, 5, 1)
    assert np.allclose(thick.numpy(), target[:, :12].reshape(2, 4, 3, 5, 1).mean(axis=2), atol=1e-6)


def test_a_gap_and_a_fractional_thickness_integrate_each_voxels_share():
    # a 2.5-voxel slab centred at 4.5 covers [3.25, 5.75]: a quarter of voxel 3, voxels 4 and 5, a quarter of 6
    weights = slice_profiles.thick_slice_weights(10, [4.5], 2.5, "box")[0]
    expected = np.zeros(10)
    expected[[3, 4, 5, 6]] = [0.25, 1.0, 1.0, 0.25]
    assert np.allclose(weights, expected / 2.5)
    # slices 5 voxels apart and 4 thick: slice 1 covers [5, 9], half of voxels 5 and 9, none of 4 and 10
    gap = slice_profiles.regular_weights(3, 5, 0.8, "box")
    assert np.allclose(gap[1, 4:11], [0.0, 0.125, 0.25, 0.25, 0.25, 0.125, 0.0])


@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_a_symmetric_profile_gives_a_ramp_its_centre_value(profile):
    ramp = np.arange(40, dtype=np.float64)
    centres = [12.0, 20.5, 27.0]  # symmetric about a voxel centre or boundary: the ramp averages to the centre
    thick = slice_profiles.thick_slice_weights(40, centres, 3.7, profile) @ ramp
    assert np.allclose(thick, centres, atol=1e-9)


# --- Geometry: thickness sources, ratios, grids --------------------------------------------------

def test_the_output_grid_keeps_the_extent_for_a_ratio_that_is_not_whole():
    geometry = slice_geometry.read_geometry([0.8, 0.8, 3.0], (20, 16, 12), target=0.8)
    assert geometry.factor == 4 and geometry.output_slices() == 45  # 36 mm in slices as near 0.8 mm as fit
    from scans.volumes import resampled_affine
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    out = resampled_affine(affine, geometry.output_factors())
    for edge_in, edge_out in ((-0.5, -0.5), (11.5, 44.5)):  # the first and last slice boundaries coincide
        assert np.allclose(affine @ [0, 0, edge_in, 1], out @ [0, 0, edge_out, 1])
    assert np.isclose(out[2, 2], 0.8)


def template_slab(shape=(56, 48, 60)):
    volume = dataset.template_volume()
    return np.ascontiguousarray(volume[70:70 + shape[0], 90:90 + shape[1], 40:40 + shape[2]]) * 1000.0


def write_acquisition(folder, name, thickness, spacing, sidecar=True):
    """Slices `spacing` mm apart and `thickness` mm thick (box), from a 1 mm template slab, along axis 2."""
    fine = template_slab()
    n_thick = fine.shape[2] // spacing
    centres = slice_profiles.regular_centres(n_thick, spacing)
    weights = slice_profiles.thick_slice_weights(fine.shape[2], centres, thickness)
    thick = slice_profiles.along_axis(weights, fine, 2)
    affine = np.diag([1.0, 1.0, float(spacing), 1.0])
    affine[2, 3] = centres[0]
    path = os.path.join(folder, f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(thick, affine), path)
    if sidecar:
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump({"SliceThickness": thickness, "SpacingBetweenSlices": spacing}, f)
    return path


def test_a_sidecars_thickness_is_used_named_and_kept_by_the_output(tmp_path, capsys):
    path = write_acquisition(str(tmp_path), "gap", 4, 5)
    code = predict.main(["--input", path, "--through-plane", "--no-adapt", "--model", "espcn",
                         "--output-dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "4 mm thick (gap.json), gap 1 mm" in printed, printed
    out = nib.load(str(tmp_path / "out" / "gap_espcn_through_x5.nii.gz"))
    thick = nib.load(path)
    geometry = slice_geometry.read_geometry(thick.header.get_zooms(), thick.shape, thickness=4.0,
                                            thickness_source="test")
    # data consistency with the 4 mm profile: the output's own 4 mm slices are the input's (up to the clip to its
    # range); with the 5 mm profile they are not
    def misfit(output):  # how far the output's own 4 mm slices are from the input's
        return np.abs(slice_profiles.along_axis(geometry.output_weights("box"), output, 2) - thick.get_fdata()).mean()

    assert misfit(out.get_fdata()) < 1e-3 * thick.get_fdata().max()
    code = predict.main(["--input", path, "--through-plane", "--no-adapt", "--slice-thickness", "5", "--model", "espcn",
                         "--output-dir", str(tmp_path / "flag")])
    assert code == 0 and "5 mm thick (--slice-thickness)" in capsys.readouterr().out
    flagged = nib.load(str(tmp_path / "flag" / "gap_espcn_through_x5.nii.gz")).get_fdata()
    assert misfit(flagged) > 10 * misfit(out.get_fdata())


def test_a_bad_sidecar_is_one_line_naming_it(tmp_path, capsys):
    path = write_acquisition(str(tmp_path), "bad", 4, 5)
    with open(tmp_path / "bad.json", "w") as f:
        json.dump({"SliceThickness": "thick"}, f)
    code = predict.main(["--input", path, "--through-plane", "--no-adapt", "--model", "espcn",
                         "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(lines) == 1 and "bad.json" in lines[0] and "SliceThickness" in lines[0]
    assert "Traceback" not in err


def test_a_dicom_series_slice_thickness_is_its_slab(tmp_path, capsys):
    volume = a_volume(3, shape=(24, 20, 8))
    write_files(str(tmp_path / "series"), volume, SliceThickness=2.0)  # positions 2.5 mm apart
    series, _ = dicom_series.find_series(sorted(str(p) for p in (tmp_path / "series").iterdir()))
    assert dicom_series.slice_thickness(series[0]) == 2.0
    code = predict.main(["--input", str(tmp_path / "series"), "--through-plane", "--no-adapt", "--model", "espcn",
                         "--output-dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0 and "2 mm thick (DICOM SliceThickness), gap 0.5 mm" in printed, printed


def test_fine_zero_filled_pixels_are_not_refused_and_land_on_the_input_extent(tmp_path):
    # 0.45 mm pixels, slices 6 mm apart: a ratio of 13.3, done by x6 on a 1 mm working grid
    data = np.random.default_rng(5).random((40, 36, 6)).astype(np.float32)
    affine = np.diag([0.45, 0.45, 6.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "fine.nii.gz"))
    code = predict.main(["--input", str(tmp_path / "fine.nii.gz"), "--through-plane", "--no-adapt",
                         "--model", "espcn", "--output-dir", str(tmp_path / "out")])
    assert code == 0
    out = nib.load(str(tmp_path / "out" / "fine_espcn_through_x6.nii.gz"))
    assert out.shape == (40, 36, 36) and np.allclose(out.header.get_zooms(), [0.45, 0.45, 1.0])
    assert np.allclose(out.affine @ [0, 0, -0.5, 1], affine @ [0, 0, -0.5, 1])


# --- The same voxels on every run ------------------------------------------------------------

def test_two_adapted_runs_give_identical_voxels(tmp_path):
    path = write_acquisition(str(tmp_path), "repeat", 3, 4)
    outputs = []
    for run in ("a", "b"):
        code = predict.main(["--input", path, "--through-plane", "--adapt-steps", "60", "--through-plane-seconds",
                             "600", "--model", "espcn", "--output-dir", str(tmp_path / run)])
        assert code == 0
        outputs.append(np.asanyarray(nib.load(str(tmp_path / run / "repeat_espcn_through_x4.nii.gz")).dataobj))
    assert np.array_equal(outputs[0], outputs[1])


def test_batch_size_reaches_through_plane_settings():
    args = predict.parse_args(["--input", "x.nii.gz", "--through-plane", "--batch-size", "5"])
    options = predict.Options.from_args(args)
    assert refine.Settings.from_options(options).batch_size == 5 and options.batch_size == 5
    with pytest.raises(dataclasses.FrozenInstanceError):  # one run's options never change once resolved
        options.batch_size = 6


def test_in_plane_axes_near_the_working_voxel_keep_their_own_voxels():
    """0.87 x 1 mm pixels under 2.6 mm slices (x3: w = 0.87) and 0.87 mm pixels under 4 mm ones (x4: w = 1)
    stay as acquired; zero-filled 0.44 mm pixels under 6 mm slices (w = 1.5 mm, 3.4x coarser) are resampled."""
    coronal = slice_geometry.read_geometry([0.868, 2.604, 1.0], (288, 96, 181), factor=3)
    assert coronal.working_shape() == (288, 96, 181)
    assert np.allclose(coronal.working_zooms(), (0.868, 2.604, 1.0))
    axial = slice_geometry.read_geometry([0.868, 0.868, 4.0], (288, 288, 45), factor=4)
    assert axial.working_shape() == (288, 288, 45) and np.isclose(axial.output_spacing(), 1.0)
    zero_filled = slice_geometry.read_geometry([0.44, 0.44, 6.0], (512, 512, 30), factor=4)
    assert zero_filled.working_shape() == (150, 150, 30)  # 512 x 0.44 / 1.5
    assert np.allclose(zero_filled.working_zooms()[:2], 512 * 0.44 / 150)
    wide = slice_geometry.read_geometry([1.0, 1.0, 5.0], (40, 40, 10), factor=4)  # w = 1.25: outside 1.2x
    assert wide.working_shape() == (32, 32, 10)
