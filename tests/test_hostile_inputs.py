"""Malformed, hostile and odd inputs to predict.py: never an overwritten input, a poisoned output or a traceback."""
import os
import re
import struct

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common import atomic_files
import constants
import inference
import modules
from conftest import run_script
from common.tensorflow_env import keras, tf


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "espcn.keras")
    modules.get_model(4).save(path)
    return path


def message_lines(stderr):
    """stderr without tqdm's progress bars (redrawn with carriage returns)."""
    pieces = (piece.strip() for line in stderr.splitlines() for piece in line.split("\r"))
    return [piece for piece in pieces if piece and not re.search(r"\|\s*\d+/\d+ \[", piece)]


def save_volume(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def patch_header(path, offset, fmt, edit):
    """Rewrites the raw header field at `offset` of an uncompressed .nii (nibabel would refuse to write it)."""
    raw = bytearray(path.read_bytes())
    size = struct.calcsize(fmt)
    values = list(struct.unpack(fmt, raw[offset:offset + size]))
    edit(values)
    raw[offset:offset + size] = struct.pack(fmt, *values)
    path.write_bytes(bytes(raw))


def make_bad_files(folder):
    """{file: words its one error line must hold} for files that must each fail alone."""
    rng = np.random.default_rng(7)
    bad = {}
    zero = save_volume(folder / "zero_dim.nii", rng.random((6, 5, 4)).astype(np.float32))
    patch_header(zero, 40, "<8h", lambda dims: dims.__setitem__(2, 0))
    bad[zero] = "size 0"
    rgb = np.zeros((6, 5, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    bad[save_volume(folder / "rgb.nii", rgb)] = "RGB"
    bad[save_volume(folder / "complex.nii", (rng.random((6, 5, 4)) + 1j).astype(np.complex64))] = "complex"
    whole = save_volume(folder / "cut.nii", rng.random((20, 20, 20)).astype(np.float32))
    whole.write_bytes(whole.read_bytes()[:20000])
    bad[whole] = "truncated"
    bad[save_volume(folder / "flat.nii", rng.random((6, 5)).astype(np.float32))] = "2D"
    all_nan = save_volume(folder / "all_nan.nii", np.full((6, 5, 4), np.nan, np.float32))
    bad[all_nan] = "no finite value"
    loop = folder / "loop.png"
    os.symlink(loop, loop)
    bad[loop] = "link loop"
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    bad[folder / "dangling.png"] = "broken symbolic link"
    return bad


def test_one_call_over_a_corpus_of_bad_files_gives_one_plain_line_each(tmp_path, model_path):
    folder = tmp_path / "in"
    folder.mkdir()
    bad = make_bad_files(folder)
    good = folder / "good.png"
    Image.fromarray(np.full((6, 7), 90, np.uint8)).save(good)
    result = run_script("predict.py", "--model", model_path, "--output-dir", str(tmp_path / "out"),
                        "--input", *map(str, bad), str(good))
    assert result.returncode == 1
    lines = message_lines(result.stderr)
    for path, words in bad.items():
        mine = [line for line in lines if str(path) in line]
        assert len(mine) == 1 and mine[0].startswith("error:") and words in mine[0], (path, mine, lines)
    assert f"{len(bad)} of {len(bad) + 1} inputs failed" in lines[-1]
    assert len(lines) == len(bad) + 1, lines  # nothing else: no library warnings
    text = result.stderr
    assert "Traceback" not in text and "\x1b[" not in text
    for name in ("IndexError", "DTypePromotionError", "EOFError", "OSError", "ValueError", "Exception"):
        assert name not in text
    assert (tmp_path / "out" / "good_espcn_x4.png").exists()


def test_a_planted_symlink_never_redirects_a_write_onto_the_input(tmp_path, model_path, monkeypatch, capsys):
    """Links planted at exactly the temporary names the writer draws: its exclusive create skips each one."""
    import itertools
    import sys
    import tempfile

    import predict

    scan = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (9, 11), dtype=np.uint8)).save(scan)
    before = scan.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    # tempfile draws every random name from one sequence: made to yield known0, known1, ..., the names
    # write_atomically's mkstemp will try.  A link to the input waits at the first 16 of them (a few are
    # drawn first by other temporary files of the run, e.g. check_output_dir's probe).
    drawn = (f"known{i}" for i in itertools.count())
    monkeypatch.setattr(tempfile, "_name_sequence", drawn)
    planted = [out / f"{atomic_files.partial_prefix()}known{i}-scan_espcn_x4.png" for i in range(16)]
    for link in planted:
        os.symlink(scan, link)
    tried, recording = [], [True]  # every name mkstemp tries, from its audit event (the hook cannot be removed)
    sys.addaudithook(lambda event, args: tried.append(args[0]) if recording[0] and event == "tempfile.mkstemp"
                     else None)
    try:
        assert predict.main(["--model", model_path, "--output-dir", str(out), "--input", str(scan)]) == 0
    finally:
        recording[0] = False
    assert scan.read_bytes() == before, "a write went through a planted link onto the input"
    assert all(link.is_symlink() and os.readlink(link) == str(scan) for link in planted)
    assert not (out / "scan_espcn_x4.png").is_symlink()
    with Image.open(out / "scan_espcn_x4.png") as written:
        assert written.size == (44, 36)
    writer = [path for path in tried if os.path.basename(path).startswith(".partial-")]
    links = {str(link) for link in planted}
    assert len(writer) >= 2 and set(writer[:-1]) <= links, writer  # it met planted links...
    assert writer[-1] not in links, writer  # ...and went on to a fresh name
    # The output's own name planted as a link to the input: refused (exit 1, as any failed file), input untouched.
    (out / "scan_espcn_x4.png").unlink()
    os.symlink(scan, out / "scan_espcn_x4.png")
    capsys.readouterr()
    assert predict.main(["--model", model_path, "--output-dir", str(out), "--input", str(scan)]) == 1
    assert "one of the inputs" in capsys.readouterr().err
    assert scan.read_bytes() == before


def make_odd_files(folder):
    """Files that are processed with one warning each (or none): {name: path}."""
    rng = np.random.default_rng(1)
    files = {"zooms": save_volume(folder / "zooms.nii", rng.random((6, 5, 4)).astype(np.float32))}
    patch_header(files["zooms"], 76, "<8f", lambda pixdim: (pixdim.__setitem__(1, -1.0), pixdim.__setitem__(2, 0.0)))
    data = rng.random((12, 10, 3)).astype(np.float32) * 100
    data[2, 3, 1], data[8, 8, 0], data[5, 5, 2] = np.nan, np.inf, -np.inf
    files["holes"] = save_volume(folder / "holes.nii.gz", data)
    values = rng.random((10, 12)).astype(np.float32)
    values[1, 1], values[5, 6] = np.nan, np.inf
    Image.fromarray(values, mode="F").save(folder / "f.tif")
    files["f"] = folder / "f.tif"
    frames = [Image.fromarray(np.full((8, 8), 40 * (i + 1), np.uint8)) for i in range(3)]
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    files["stack"] = folder / "stack.tif"
    Image.fromarray(np.full((6, 6), 100, np.uint8)).save(folder / "same.png")
    files["same_png"] = folder / "same.png"
    files["same_nii"] = save_volume(folder / "same.nii.gz", np.ones((6, 6, 2), np.float32))
    return files


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory, model_path):
    """One predict.py call over every odd file: (files, output dir, one warning line per file)."""
    folder = tmp_path_factory.mktemp("odd")
    files = make_odd_files(folder)
    result = run_script("predict.py", "--model", model_path, "--output-dir", str(folder / "out"),
                        "--input", *map(str, files.values()))
    assert result.returncode == 0, result.stderr
    lines = message_lines(result.stderr)
    assert all(line.startswith("warning:") for line in lines), lines
    warnings = {name: [line for line in lines if line.startswith(f"warning: {path}:")]
                for name, path in files.items()}
    assert sum(len(found) for found in warnings.values()) == len(lines), "one line per file, nothing else"
    return files, folder / "out", warnings


def test_bad_voxel_sizes_are_one_warning_line(odd_run):
    _, _, warnings = odd_run
    assert len(warnings["zooms"]) == 1 and "pixdim" in warnings["zooms"][0]


def test_non_finite_voxels_warn_and_stay_local(odd_run):
    _, out_dir, warnings = odd_run
    assert len(warnings["holes"]) == 1 and "1 NaN and 2 infinite" in warnings["holes"][0]
    out = nib.load(str(out_dir / "holes_espcn_x4.nii.gz")).get_fdata()
    expected_nan = np.zeros(out.shape, bool)
    expected_nan[8:12, 12:16, 1] = True  # input voxel (2, 3) of slice 1, x4 in-plane
    assert np.array_equal(np.isnan(out), expected_nan)
    assert np.isfinite(out[~expected_nan]).all()


def test_float_tiff_with_nan_and_inf(odd_run):
    _, out_dir, warnings = odd_run
    assert len(warnings["f"]) == 1 and "1 NaN and 1 infinite" in warnings["f"][0]
    out = np.asarray(Image.open(out_dir / "f_espcn_x4.tif"))
    assert np.isnan(out).sum() == 16 and np.isnan(out[4:8, 4:8]).all()
    assert np.isfinite(out[~np.isnan(out)]).all()


def test_multi_frame_tiff_names_the_frames_left_out(odd_run):
    _, _, warnings = odd_run
    assert len(warnings["stack"]) == 1 and "3 frames" in warnings["stack"][0] and "2 to 3" in warnings["stack"][0]


def test_same_stem_of_different_kinds_gives_both_outputs(odd_run):
    _, out_dir, warnings = odd_run
    assert not warnings["same_png"] and not warnings["same_nii"]
    assert (out_dir / "same_espcn_x4.png").exists() and (out_dir / "same_espcn_x4.nii.gz").exists()


def test_a_three_channel_model_is_refused_in_one_plain_line(tmp_path):
    path = str(tmp_path / "rgb.keras")
    modules.get_model(4, channels=3).save(path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    result = run_script("predict.py", "--model", path, "--output-dir", str(tmp_path), "--input",
                        str(tmp_path / "x.png"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "one-channel" in lines[0] and "\x1b[" not in lines[0]


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (30, 20)])
def test_a_flat_image_stays_flat(shape):
    model = inference.load_model(os.path.join(os.path.dirname(__file__), "..", "pretrained", "espcn_x4.keras"))
    out = inference.upscale_plane(model, np.full(shape, 77 / 255, np.float32)) * 255
    assert out.shape == (shape[0] * 4, shape[1] * 4)
    assert np.abs(out - 77).max() < 1.5


@pytest.mark.parametrize("edges", ["trained", "mirror"])
def test_tiled_inference_equals_whole_plane_inference(edges):
    keras.utils.set_random_seed(5)
    model = modules.get_model(4)
    plane = np.random.default_rng(6).random((37, 53)).astype(np.float32)
    whole = inference.upscale_stack(model, plane[None], tile=64, edges=edges)[0]  # one tile
    for tile, batch in ((8, 3), (16, 16), (11, 1)):
        tiled = inference.upscale_stack(model, plane[None], batch_size=batch, tile=tile, edges=edges)[0]
        np.testing.assert_allclose(tiled, whole, atol=2e-6)
    other = inference.upscale_stack(model, plane[None], tile=64, edges="mirror" if edges == "trained" else "trained")
    assert np.abs(other[0] - whole).max() > 1e-3  # the two edge paths are really different computations


def test_the_through_plane_model_gets_the_same_tiles_views_and_edges():
    keras.utils.set_random_seed(7)
    model = modules.get_model_1d(3, filters=(16, 16, 8))
    planes = np.random.default_rng(7).random((2, 29, 70)).astype(np.float32)
    bare = np.clip(model(planes[..., None]).numpy()[..., 0], 0, 1)  # served as trained: the plain model call
    whole = inference.upscale_stack(model, planes)
    assert whole.shape == (2, 87, 70)
    np.testing.assert_allclose(whole, bare, atol=2e-6)
    views = []
    for view in inference.DIHEDRAL_VIEWS[:4]:  # the flips: rows stay rows
        out = inference.upscale_stack(model, np.stack([inference.viewed(p, view) for p in planes]))
        views.append([inference.unviewed(plane, view) for plane in out])
    flips = np.mean(views, axis=0)
    for tile, batch in ((256, None), (9, 5), (13, 1)):
        np.testing.assert_allclose(inference.upscale_stack(model, planes, batch, tile, ensemble=4), flips, atol=2e-6)
    with pytest.raises(ValueError, match="at most 4 flips"):
        inference.upscale_stack(model, planes, ensemble=8)


def test_planes_are_served_as_trained_except_small_and_flat_ones():
    margin = 5
    rng = np.random.default_rng(4)
    tissue = rng.random((64, 64)).astype(np.float32)
    slice_on_black = np.pad(rng.random((40, 40)).astype(np.float32), 12)
    assert inference.serves_as_trained(tissue, margin)
    assert inference.serves_as_trained(slice_on_black, margin)
    assert inference.serves_as_trained(np.full((64, 64), constants.BACKGROUND_LEVEL, np.float32), margin)
    assert not inference.serves_as_trained(np.full((64, 64), 0.3, np.float32), margin)  # flat above the background
    assert not inference.serves_as_trained(tissue[:constants.MIRROR_BELOW - 1], margin)  # small
    assert inference.serves_as_trained(tissue[:constants.MIRROR_BELOW], margin)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_a_plane_served_as_trained_is_the_model_call_and_one_with_a_margin_its_cropped_output(precision):
    path = os.path.join(os.path.dirname(__file__), "..", "pretrained", "espcn_x4.keras")
    served = inference.load_model(path, precision)
    assert served.get_layer("conv2").dtype_policy.name == precision
    reference = tf.function(lambda x: served(x, training=False))  # the bare model call, in the same precision
    planes = np.random.default_rng(8).random((3, 23, 300)).astype(np.float32)  # small (23 rows): mirror margin
    padded = np.pad(planes, ((0, 0), (5, 5), (5, 5)), mode="symmetric")[..., None]
    # bfloat16 keeps 8 bits of mantissa: the same network on other shapes takes other kernels (and an AMX CPU
    # others again), whose results agree within its rounding (one step near 1 is 2^-8), never bit for bit
    tolerance = 2e-6 if precision == "float32" else 2 * 2.0 ** -8
    for batch_size, tile, ensemble in ((None, constants.TILE_SIZE, 1), (2, constants.TILE_SIZE, 1), (5, 16, 8)):
        got = inference.upscale_stack(served, planes, batch_size, tile, ensemble)
        assert got.shape == (3, 92, 1200) and 0 <= got.min() and got.max() <= 1
        if ensemble == 1:
            want = np.clip(reference(padded).numpy()[:, 20:-20, 20:-20, 0], 0, 1)
            assert np.abs(got - want).max() <= tolerance
    tall = np.random.default_rng(9).random((2, 40, 300)).astype(np.float32)  # served as trained
    want = np.clip(reference(tall[..., None]).numpy()[..., 0], 0, 1)
    assert np.abs(inference.upscale_stack(served, tall) - want).max() <= tolerance


def test_tiles_are_the_fewest_of_nearly_equal_sides():
    assert inference.tile_grid(300, 256) == ([0, 150], 150)
    assert inference.tile_grid(256, 256) == ([0], 256)
    assert inference.tile_grid(257, 256) == ([0, 129], 129)
    assert inference.tile_grid(1, 256) == ([0], 1)
    assert inference.tile_grid(53, 11) == ([0, 11, 22, 33, 44], 11)


def test_receptive_radius_of_the_seed_model():
    assert inference.receptive_radius(modules.get_model(4)) == 5  # 5x5, then three 3x3 convolutions


@pytest.mark.parametrize("network", ["espcn", "quality"])
def test_colour_bands_join_into_the_whole_image_result(monkeypatch, network):
    """Bands of 7 rows join into the whole image's result for both networks: each band's context covers the
    network's own receptive radius (5 pixels for the ESPCN, 16 for the shipped quality network)."""
    from common import model_files
    from scans import image_files

    keras.utils.set_random_seed(8)
    model = modules.get_model(4) if network == "espcn" else \
        inference.load_model(model_files.shipped_path("quality"), "float32")
    image = Image.fromarray(np.random.default_rng(9).integers(0, 256, (45, 30, 3), dtype=np.uint8))
    whole = np.asarray(image_files.upscale_colour(model, image, 16)).astype(int)
    monkeypatch.setattr(image_files, "BAND_ROWS", 7)
    banded = np.asarray(image_files.upscale_colour(model, image, 16)).astype(int)
    assert np.abs(banded - whole).max() <= 1  # rounding of float32 sums at most


def test_an_output_too_large_for_memory_is_refused_up_front(tmp_path, model_path, monkeypatch, capsys):
    import predict

    monkeypatch.setattr(inference, "available_memory_bytes", lambda: 10_000)  # as if 10 kB were free
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "x.png")
    save_volume(tmp_path / "v.nii", np.zeros((8, 8, 4), np.int16))
    assert predict.main(["--model", model_path, "--output-dir", str(tmp_path / "out"), "--input",
                         str(tmp_path / "x.png"), str(tmp_path / "v.nii")]) == 1
    assert not (tmp_path / "out" / "x_espcn_x4.png").exists()
    assert not (tmp_path / "out" / "v_espcn_x4.nii.gz").exists()
    assert not (tmp_path / "out" / "v_espcn_x4_planes.png").exists()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("would take" in line and "GiB" in line for line in errors), errors
