"""predict.py --input on the user's own files: every image kind, NIfTI, bad files."""
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import modules
import predict


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
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
    out = tmp_path / "out" / f"scan_x4{out_suffix}"
    with Image.open(out) as result:
        assert result.size == (84, 52)
        assert result.mode == out_mode
    assert Image.open(src).size == (21, 13), "the input is untouched"


def test_sixteen_bit_output_stays_in_the_files_own_range(tmp_path, model_path):
    values = np.full((16, 16), 3000, np.uint16)
    values[4:12, 4:12] = 1000
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert run(model_path, tmp_path, tmp_path / "deep.png") == 0
    out = np.asarray(Image.open(tmp_path / "deep_x4.png"))
    assert out.dtype == np.uint16 and out.min() >= 1000 and out.max() <= 3000


def test_colour_chroma_survives(tmp_path, model_path):
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    assert run(model_path, tmp_path, tmp_path / "red.png") == 0
    r, g, b = np.asarray(Image.open(tmp_path / "red_x4.png")).reshape(-1, 3).mean(axis=0)
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
    result = nib.load(str(tmp_path / "out" / "b0_x4.nii.gz"))
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
    data = result.get_fdata()
    assert data.min() >= original.get_fdata().min() - 1 and data.max() <= original.get_fdata().max() + 1


def test_4d_nifti_is_done_volume_by_volume(tmp_path, model_path):
    nib.save(nib.Nifti1Image(np.random.rand(6, 7, 3, 2).astype(np.float32), np.eye(4)), str(tmp_path / "f.nii"))
    assert run(model_path, tmp_path, tmp_path / "f.nii") == 0
    assert nib.load(str(tmp_path / "f_x4.nii.gz")).shape == (24, 28, 3, 2)


def test_a_folder_means_its_supported_files(tmp_path, model_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (8, 8), 50).save(folder / "a.png")
    Image.new("L", (8, 8), 50).save(folder / "b.jpeg")
    (folder / "notes.txt").write_text("not an image")
    assert run(model_path, tmp_path / "out", folder) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a_x4.png", "b_x4.png"]


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
    assert code != 0
    assert (tmp_path / "out" / "good_x4.png").exists()
    for path in (empty, text, truncated, bad_nii, other, missing):
        lines = [line for line in err.splitlines() if str(path) in line]
        assert len(lines) == 1, (path, err)
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path / "out")) == ["good_x4.png"], "no half-written outputs"


def test_compare_mode_writes_a_figure_per_input(tmp_path, model_path, capsys):
    image = np.zeros((64, 48), np.uint8)
    image[10:50, 8:40] = 180
    Image.fromarray(image).save(tmp_path / "hr.png")
    make_volume(tmp_path / "vol.nii.gz", shape=(16, 20, 6))
    assert run(model_path, tmp_path / "out", tmp_path / "hr.png", tmp_path / "vol.nii.gz", extra=("--compare",)) == 0
    assert os.path.getsize(tmp_path / "out" / "hr_compare.png") > 0
    assert os.path.getsize(tmp_path / "out" / "vol_compare.png") > 0
    assert "bicubic PSNR" in capsys.readouterr().out


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
    result = nib.load(str(tmp_path / "out" / "two_x4.nii.gz"))
    for original, upscaled in ((qform, result.get_qform()), (sform, result.get_sform())):
        assert np.allclose(voxel_edges(upscaled, result.shape), voxel_edges(original, data.shape), atol=1e-4)


def test_outputs_never_overwrite_inputs_or_each_other(tmp_path, model_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("L", (8, 8), 40).save(folder / "a.png")
    Image.new("L", (8, 8), 40).save(folder / "a.jpg")          # same stem: same output name
    Image.new("L", (8, 8), 40).save(folder / "b.png")
    Image.new("L", (8, 8), 99).save(folder / "b_x4.png")       # an input that is b.png's output name
    before = (folder / "b_x4.png").read_bytes()
    code = run(model_path, folder, folder)
    err = capsys.readouterr().err
    assert code != 0
    assert (folder / "b_x4.png").read_bytes() == before, "an input was overwritten"
    assert "a.jpg" in err and "b.png" in err
    assert (folder / "a_x4.png").exists() and (folder / "b_x4_x4.png").exists()


def test_comparison_inset_is_the_most_detailed_region_and_avoids_it():
    import evaluation

    image = np.zeros((64, 64))
    image[40:56, 4:20] = np.indices((16, 16)).sum(0) % 2  # a checkerboard at the bottom left
    top, left, side = evaluation.detailed_region(image)
    assert side == 16 and (top, left) == (40, 4)
    x, y, width, height = evaluation.inset_corner(top, left, side, image.shape)
    assert x > 0.5 and y > 0.5  # drawn at the top right, away from the region
