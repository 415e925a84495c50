"""predict.py --input on the user's own files: every image kind, NIfTI, bad files."""
import os
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import inference
import modules
import predict
from conftest import ROOT, area_downsample, bicubic_upscale, psnr_and_ssim
from common.tensorflow_env import keras

PRETRAINED = os.path.join(ROOT, "pretrained", "espcn_x4.keras")


@pytest.fixture(autouse=True)
def seeded():
    """Every random draw of a test (NumPy, TensorFlow, Keras initialisers) the same on every run."""
    keras.utils.set_random_seed(1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)  # module fixtures come before `seeded`
    path = str(tmp_path_factory.mktemp("model") / "espcn.keras")
    modules.get_model(4).save(path)
    return path


def run(model_path, out_dir, *inputs, extra=()):
    return predict.main(["--model", model_path, "--output-dir", str(out_dir), "--input", *map(str, inputs), *extra])


@pytest.mark.parametrize("mode,suffix,out_mode,out_suffix", [
    ("L", ".png", "L", ".png"), ("RGB", ".jpg", "RGB", ".png"), ("RGBA", ".png", "RGBA", ".png"),
    ("P", ".bmp", "RGB", ".png"), ("I;16", ".png", "I;16", ".png"), ("F", ".tif", "F", ".tif"),
    ("LA", ".png", "LA", ".png"), ("I", ".tif", "I", ".tif"),
])
def test_every_image_mode_keeps_its_kind_at_four_times_the_size(tmp_path, model_path, mode, suffix, out_mode,
                                                                out_suffix):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (13, 21, 3), dtype=np.uint8))  # odd sizes
    if mode == "I":
        image = Image.fromarray(rng.integers(-70000, 70000, (13, 21)).astype(np.int32))
    elif mode == "I;16":
        image = Image.fromarray((rng.integers(0, 4096, (13, 21))).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray(rng.normal(100.0, 30.0, (13, 21)).astype(np.float32))
    else:
        image = base.convert(mode)
    src = tmp_path / f"scan{suffix}"
    image.save(src)
    assert run(model_path, tmp_path / "out", src) == 0
    out = tmp_path / "out" / f"scan_espcn_x4{out_suffix}"
    with Image.open(out) as result:
        assert result.size == (84, 52)
        assert result.mode == out_mode
    assert Image.open(src).size == (21, 13), "the input is untouched"


def test_sixteen_bit_output_keeps_the_files_own_levels(tmp_path):
    """The pretrained model on a 16-bit square of 1000 in a field of 3000: both come back at their own levels."""
    values = np.full((16, 16), 3000, np.uint16)
    values[4:12, 4:12] = 1000
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert run(PRETRAINED, tmp_path, tmp_path / "deep.png", extra=("--precision", "float32")) == 0
    with Image.open(tmp_path / "deep_espcn_x4.png") as result:
        assert result.mode == "I;16"
        out = np.asarray(result).astype(np.int64)
    assert out.shape == (64, 64)
    # 1% and 3% of the step of 2000 (measured: 1003-1007 inside the square, 2966-2999 on the field's outer ring);
    # the ring next to the square's edges is left out (the model sharpens edges, so it over- and undershoots there)
    assert np.abs(out[24:40, 24:40] - 1000).max() <= 20
    field = np.ones(out.shape, bool)
    field[8:56, 8:56] = False
    assert np.abs(out[field] - 3000).max() <= 60 and abs(np.median(out[field]) - 3000) <= 20


def test_colour_chroma_survives(tmp_path, model_path):
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    assert run(model_path, tmp_path, tmp_path / "red.png") == 0
    r, g, b = np.asarray(Image.open(tmp_path / "red_espcn_x4.png")).reshape(-1, 3).mean(axis=0)
    assert r > g + 50 and r > b + 50


def make_volume(path, shape=(10, 12, 5), dtype=np.int16):
    data = (np.random.default_rng(1).random(shape) * 1000).astype(dtype)
    # oblique: rotated 20 degrees about x and 30 about z, anisotropic voxels, shifted
    a, b = np.radians(20), np.radians(30)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = nib.affines.from_matvec(rot_z @ rot_x @ np.diag([1.5, 2.0, 3.0]), [10.0, -20.0, 5.0])
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = b"test volume"
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    nib.save(image, str(path))
    return image


def voxel_edges(affine, shape):
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    return nib.affines.apply_affine(affine, corners)


@pytest.mark.parametrize("axis", [2, 0])
def test_nifti_volume_keeps_its_place_in_world_space(tmp_path, model_path, axis):
    src = tmp_path / "b0.nii.gz"
    original = make_volume(src)
    assert run(model_path, tmp_path / "out", src, extra=("--axis", str(axis))) == 0
    result = nib.load(str(tmp_path / "out" / "b0_espcn_x4.nii.gz"))
    expected_shape = [s * 4 if k != axis else s for k, s in enumerate(original.shape)]
    assert list(result.shape) == expected_shape
    zooms = np.array(original.header.get_zooms()) / np.where(np.arange(3) == axis, 1, 4)
    assert np.allclose(result.header.get_zooms(), zooms, atol=1e-5)
    assert np.allclose(voxel_edges(result.affine, result.shape), voxel_edges(original.affine, original.shape),
                       atol=1e-4)
    first_centre = np.linalg.solve(original.affine, result.affine @ [0, 0, 0, 1])[:3]
    assert np.allclose(first_centre, [0 if k == axis else -0.375 for k in range(3)], atol=1e-6)
    assert result.header["descrip"].tobytes().startswith(b"test volume")
    assert int(result.header["sform_code"]) == 2 and int(result.header["qform_code"]) == 1
    assert np.allclose(result.get_qform(), result.affine, atol=1e-4)
    assert original.get_data_dtype() == np.int16 and result.get_data_dtype() == np.int16


def test_nifti_intensities_come_back_in_the_volumes_own_units(tmp_path):
    """A smooth int16 volume stored with a slope and an intercept: the pretrained model's output, averaged over
    each 4x4 block of output voxels, gives back the input voxel's value in real units."""
    rows, cols, slices = np.mgrid[0:40, 0:36, 0:3].astype(np.float64)
    real = 1000 + 500 * np.sin(cols / 5 + slices) * np.cos(rows / 6) + 8 * rows  # about 500 to 1800
    image = nib.Nifti1Image(np.round((real + 100) / 0.5).astype(np.int16), np.diag([0.9, 0.9, 3.0, 1.0]))
    image.header.set_slope_inter(0.5, -100.0)  # real = 0.5 * stored - 100
    nib.save(image, str(tmp_path / "smooth.nii.gz"))
    source = nib.load(str(tmp_path / "smooth.nii.gz"))
    assert run(PRETRAINED, tmp_path / "out", tmp_path / "smooth.nii.gz", extra=("--precision", "float32")) == 0
    result = nib.load(str(tmp_path / "out" / "smooth_espcn_x4.nii.gz"))
    assert result.get_data_dtype() == np.int16 and (result.dataobj.slope, result.dataobj.inter) == (0.5, -100.0)
    expected = source.get_fdata()
    block_means = result.get_fdata().reshape(40, 4, 36, 4, 3).mean(axis=(1, 3))
    error = np.abs(block_means - expected) / np.ptp(expected)
    # measured: 0.13% of the range on average, 2.8% at most (a peak above the 99.5th percentile, which the
    # scaling into the model's range clips); any mix-up of units or scaling is tens of percent
    assert error.mean() < 0.01 and error.max() < 0.06, (error.mean(), error.max())


def test_4d_nifti_is_done_volume_by_volume(tmp_path, model_path):
    """The second frame is twice the first: each frame is scaled on its own, so the output keeps the ratio."""
    frame = np.random.default_rng(3).random((6, 7, 3)).astype(np.float32) + 0.5
    nib.save(nib.Nifti1Image(np.stack([frame, 2 * frame], axis=-1), np.eye(4)), str(tmp_path / "f.nii"))
    assert run(model_path, tmp_path, tmp_path / "f.nii") == 0
    out = nib.load(str(tmp_path / "f_espcn_x4.nii.gz")).get_fdata()
    assert out.shape == (24, 28, 3, 2)
    assert np.ptp(out[..., 0]) > 0.1 * np.ptp(frame), "the first frame came back flat"
    np.testing.assert_allclose(out[..., 1], 2 * out[..., 0], rtol=1e-5)


def test_a_folder_means_its_supported_files(tmp_path, model_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (8, 8), 50).save(folder / "a.png")
    Image.new("L", (8, 8), 50).save(folder / "b.jpeg")
    (folder / "notes.txt").write_text("not an image")
    assert run(model_path, tmp_path / "out", folder) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a_espcn_x4.png", "b_espcn_x4.png"]


def test_bad_files_get_one_line_each_and_the_rest_still_run(tmp_path, model_path, capsys):
    good = tmp_path / "good.png"
    Image.new("L", (8, 8), 90).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("hello, not a jpeg")
    truncated = tmp_path / "cut.png"
    Image.new("L", (64, 64), 90).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    bad_nii = tmp_path / "bad.nii.gz"
    bad_nii.write_bytes(b"\x1f\x8b garbage")
    other = tmp_path / "data.csv"
    other.write_text("1,2,3")
    missing = tmp_path / "missing.png"
    code = run(model_path, tmp_path / "out", empty, text, truncated, good, bad_nii, other, missing)
    err = capsys.readouterr().err
    assert code == 1  # README: the exit code is 1 if any file failed
    assert (tmp_path / "out" / "good_espcn_x4.png").exists()
    for path in (empty, text, truncated, bad_nii, other, missing):
        lines = [line for line in err.splitlines() if str(path) in line]
        assert len(lines) == 1, (path, err)
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path / "out")) == ["good_espcn_x4.png"], "no half-written outputs"


def test_compare_mode_scores_are_those_of_the_files(tmp_path, capsys):
    """The printed scores, recomputed from the input files: downsampled 4x by area, bicubic and model against
    the original (an image's Y; a volume's middle slice across --axis on its 0.5-99.5 percentile range)."""
    image = np.zeros((64, 48), np.uint8)
    image[10:50, 8:40] = 180
    image[20:30, 15:25] = 60
    Image.fromarray(image).save(tmp_path / "hr.png")
    volume = make_volume(tmp_path / "vol.nii.gz", shape=(16, 20, 6)).get_fdata()
    assert run(PRETRAINED, tmp_path / "out", tmp_path / "hr.png", tmp_path / "vol.nii.gz",
               extra=("--compare", "--precision", "float32")) == 0
    assert os.path.getsize(tmp_path / "out" / "hr_espcn_compare.png") > 0
    assert os.path.getsize(tmp_path / "out" / "vol_espcn_compare.png") > 0
    printed = {}
    for line in capsys.readouterr().out.splitlines():
        found = re.search(r"(\w+)\.(?:png|nii\.gz) -> .*model PSNR ([\d.]+) dB SSIM ([\d.]+) \| "
                          r"bicubic PSNR ([\d.]+) dB SSIM ([\d.]+)", line)
        if found:
            printed[found.group(1)] = [float(value) for value in found.groups()[1:]]
    low, high = np.percentile(volume, [0.5, 99.5])
    originals = {"hr": image / 255.0, "vol": np.clip((volume[:, :, 3] - low) / (high - low), 0, 1)}
    ensembles = {"hr": 8, "vol": 1}  # predict's defaults: 8 views for images, 1 for volumes
    model = inference.load_model(PRETRAINED, "float32")
    assert sorted(printed) == ["hr", "vol"], printed
    for name, original in originals.items():
        low_res = area_downsample(original)
        model_out = inference.upscale_plane(model, low_res.astype(np.float32), ensemble=ensembles[name])
        expected = [*psnr_and_ssim(model_out, original), *psnr_and_ssim(bicubic_upscale(low_res), original)]
        # printed with 2 decimals (PSNR) and 4 (SSIM)
        assert np.allclose(printed[name], expected, rtol=0, atol=[0.006, 6e-5, 0.006, 6e-5]), (name, printed, expected)


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 not really a zip", b"plain text"])
def test_bad_model_file_is_one_clear_line(tmp_path, content, capsys):
    path = tmp_path / "m.keras"
    if content is not None:
        path.write_bytes(content)
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    assert predict.main(["--model", str(path), "--input", str(tmp_path / "x.png"), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "Traceback" not in err[0]


def test_qform_and_sform_are_each_kept_in_place(tmp_path, model_path):
    data = np.random.default_rng(2).random((8, 6, 3)).astype(np.float32)
    image = nib.Nifti1Image(data, np.eye(4))
    qform = nib.affines.from_matvec(np.diag([2.0, 2.0, 3.0]), [1.0, 2.0, 3.0])
    sform = nib.affines.from_matvec(np.array([[0, -1.0, 0], [1.0, 0, 0], [0, 0, 1.0]]), [-5.0, 4.0, 0.0])
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=4)
    nib.save(image, str(tmp_path / "two.nii"))
    assert run(model_path, tmp_path / "out", tmp_path / "two.nii") == 0
    result = nib.load(str(tmp_path / "out" / "two_espcn_x4.nii.gz"))
    for original, upscaled in ((qform, result.get_qform()), (sform, result.get_sform())):
        assert np.allclose(voxel_edges(upscaled, result.shape), voxel_edges(original, data.shape), atol=1e-4)


def test_outputs_never_overwrite_inputs_or_each_other(tmp_path, model_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("L", (8, 8), 40).save(folder / "a.png")
    Image.new("L", (8, 8), 40).save(folder / "a.jpg")          # same stem: same output name
    Image.new("L", (8, 8), 40).save(folder / "b.png")
    Image.new("L", (8, 8), 99).save(folder / "b_espcn_x4.png")  # an input that is b.png's output name
    before = (folder / "b_espcn_x4.png").read_bytes()
    code = run(model_path, folder, folder)
    err = capsys.readouterr().err
    assert code == 1  # README: the exit code is 1 if any file failed
    assert (folder / "b_espcn_x4.png").read_bytes() == before, "an input was overwritten"
    assert "a.jpg" in err and "b.png" in err
    assert (folder / "a_espcn_x4.png").exists() and (folder / "b_espcn_x4_espcn_x4.png").exists()


def test_comparison_inset_is_the_most_detailed_region_and_avoids_it():
    import evaluation

    image = np.zeros((64, 64))
    image[40:56, 4:20] = np.indices((16, 16)).sum(0) % 2  # a checkerboard at the bottom left
    top, left, side = evaluation.detailed_region(image)
    assert side == 16 and (top, left) == (40, 4)
    x, y, width, height = evaluation.inset_corner(top, left, side, image.shape)
    assert x > 0.5 and y > 0.5  # drawn at the top right, away from the region
