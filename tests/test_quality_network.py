"""The quality network (issue 30): built, saved, served and trained through the same path as the ESPCN."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

import inference
import modules
from common import model_files
from common.tensorflow_env import keras
from conftest import import_tool, run_script, write_tree
from through_plane import adaptation, refine


def small_quality(factor=4, one_d=False, blocks=2, dtype="float32"):
    """A narrow quality network whose last convolution is random (it starts at zero: nearest-neighbour)."""
    build = modules.get_quality_model_1d if one_d else modules.get_quality_model
    model = build(factor, filters=8, blocks=blocks, dtype=dtype)
    layer = model.get_layer("conv4_linear")
    rng = np.random.default_rng(factor + blocks)
    layer.set_weights([rng.normal(0, 0.2, w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


@pytest.mark.parametrize("one_d", [False, True])
def test_quality_network_shapes_radius_and_safe_mode_round_trip(tmp_path, one_d):
    keras.utils.set_random_seed(3)
    model = small_quality(3, one_d)
    x = np.random.default_rng(0).random((2, 9, 13, 1), dtype=np.float32)
    out = model(x).numpy()
    assert out.shape == ((2, 27, 13, 1) if one_d else (2, 27, 39, 1))
    assert modules.network_of(model) == "quality" and modules.upscale_factors(model) == ((3, 1) if one_d else (3, 3))
    assert inference.receptive_radius(model) == 2 + 2 * 2 + 1 + 1  # 5x5, two blocks of two 3x3, 3x3, 3x3
    path = str(tmp_path / "q.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded(x).numpy(), out)


def test_the_quality_network_adds_to_nearest_neighbour_upsampling():
    # with its last convolution zeroed, the network's output is its input, each pixel repeated r x r
    model = small_quality(4)
    layer = model.get_layer("conv4_linear")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    x = np.random.default_rng(1).random((1, 5, 7, 1), dtype=np.float32)
    np.testing.assert_allclose(model(x).numpy()[0, ..., 0], np.kron(x[0, ..., 0], np.ones((4, 4))), atol=1e-6)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_quality_network_is_served_in_any_precision_with_its_weights(precision):
    keras.utils.set_random_seed(4)
    model = small_quality(4, blocks=3)
    served = modules.inference_model(model, precision)
    assert modules.network_of(served) == "quality" and modules.quality_blocks(served) == 3
    assert served.get_layer("head_conv").dtype_policy.name == precision
    x = np.random.default_rng(2).random((2, 10, 12, 1), dtype=np.float32)
    reference = model(x).numpy()
    tolerance = 0 if precision == "float32" else 0.03 * np.abs(reference).max()
    assert np.abs(served(x).numpy() - reference).max() <= tolerance


@pytest.mark.parametrize("edges", ["trained", "mirror"])
def test_quality_tiles_and_edges_give_the_whole_plane_result(edges):
    # the tile margin is the receptive radius: too small a margin would change pixels near tile seams
    keras.utils.set_random_seed(5)
    model = small_quality(4, blocks=2)
    plane = np.random.default_rng(6).random((41, 47)).astype(np.float32)
    whole = inference.upscale_stack(model, plane[None], tile=64, edges=edges)[0]
    for tile, batch in ((9, 3), (20, 1)):
        tiled = inference.upscale_stack(model, plane[None], batch_size=batch, tile=tile, edges=edges)[0]
        np.testing.assert_allclose(tiled, whole, atol=2e-5)  # a margin one pixel short: ~0.1


def test_adaptation_trains_a_copy_of_a_quality_start_model():
    keras.utils.set_random_seed(8)
    start = small_quality(3, one_d=True)
    planes = np.random.default_rng(9).random((6, 30, 30)).astype(np.float32)
    settings = refine.Settings(seconds=60)
    before = [w.copy() for w in start.get_weights()]
    model, done, _ = adaptation.adapt(start, planes, 3, 1.0, steps=5, deadline=float("inf"), settings=settings,
                                        precision="float32")
    assert done == 5 and modules.network_of(model) == "quality" and model is not start
    assert all(np.array_equal(a, b) for a, b in zip(start.get_weights(), before))  # the cached start is untouched
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_train_quality_then_predict_with_it_and_refuse_a_missing_shipped_through_plane_model(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=1)
    out = tmp_path / "out"
    trained = run_script("train.py", "--network", "quality", "--quality-filters", "8", "--blocks", "1",
                         "--data-dir", data, "--output-dir", str(out), "--epochs", "1", "--batch-size", "2",
                         "--patch-size", "32")
    assert trained.returncode == 0, trained.stderr[-3000:]
    # named for its network: no ESPCN's file is written, or replaced
    assert sorted(name for name in os.listdir(out) if name.endswith(".keras")) == ["quality.keras"]
    model = keras.models.load_model(str(out / "quality.keras"), safe_mode=True, compile=False)
    assert modules.network_of(model) == "quality" and modules.quality_blocks(model) == 1

    volume = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(0, 900, (12, 10, 3)).astype(np.int16),
                             np.eye(4)), str(volume))
    results = tmp_path / "results"
    done = run_script("predict.py", "--input", str(volume), "--output-dir", str(results),
                      "--model", str(out / "quality.keras"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert nib.load(str(results / "head_quality_x4.nii.gz")).shape == (48, 40, 3)
    sidecar = json.loads((results / "head_quality_x4.json").read_text())
    assert "quality network" in json.dumps(sidecar)

    refused = run_script("predict.py", "--input", str(volume), "--output-dir", str(results), "--through-plane",
                         "--model", "quality", "--through-plane-factor", "5", "--slice-thickness", "3")
    lines = refused.stderr.strip().splitlines()
    shipped = os.path.isfile(model_files.shipped_path("quality", 5))
    if shipped:  # then it is used
        assert refused.returncode == 0, refused.stderr[-3000:]
    else:
        # one line for the input, and run_on_inputs' count of failed inputs
        assert refused.returncode != 0 and "quality_through_x5.keras" in lines[0], refused.stderr
        assert lines[1:] == ["1 of 1 inputs failed"] and "Traceback" not in refused.stderr


def test_copy_body_starts_a_through_plane_model_from_the_in_plane_one():
    keras.utils.set_random_seed(5)
    in_plane = small_quality(4, one_d=False)
    through = modules.get_quality_model_1d(3, filters=8, blocks=2)
    modules.copy_body(in_plane, through)
    for layer in through.layers:
        if layer.weights and layer.name != "conv4_linear":
            for mine, theirs in zip(layer.get_weights(), in_plane.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(mine, theirs)
    # the sub-pixel layer stays at zero, so the start is exactly nearest-neighbour along the rows
    assert not np.any(through.get_layer("conv4_linear").get_weights()[0])
    x = np.random.default_rng(1).random((1, 5, 7, 1), dtype=np.float32)
    np.testing.assert_allclose(through(x).numpy(), np.repeat(x, 3, axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="not a quality network"):
        modules.copy_body(modules.get_model(4), through)
    with pytest.raises(ValueError, match="other shapes"):
        modules.copy_body(modules.get_quality_model(4, filters=16, blocks=2), through)


def test_copy_weights_refuses_a_quality_network_of_another_depth():
    """train.py --init-model (modules.copy_weights) with a quality network of more or fewer blocks than --blocks
    is refused in words: copying by layer name alone would silently drop the shipped 6-block file's last two
    blocks under the default --blocks 4.  The same depth copies exactly."""
    deeper, shallower = small_quality(4, blocks=3), small_quality(4, blocks=2)
    for source, target in ((deeper, shallower), (shallower, deeper)):
        with pytest.raises(ValueError, match=f"{modules.quality_blocks(source)} residual blocks, not "
                                             f"{modules.quality_blocks(target)}"):
            modules.copy_weights(source, target)
    same = modules.get_quality_model(4, filters=8, blocks=3)
    modules.copy_weights(deeper, same)
    x = np.random.default_rng(5).random((1, 10, 12, 1), dtype=np.float32)
    np.testing.assert_allclose(same.predict(x, verbose=0), deeper.predict(x, verbose=0), atol=1e-6)


def test_train_py_init_body_refuses_another_width_and_the_espcn(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=1)
    start = str(tmp_path / "in_plane.keras")
    small_quality(4).save(start)
    common = ("--data-dir", data, "--epochs", "1", "--batch-size", "2", "--patch-size", "24",
              "--through-plane-factor", "3", "--init-body", start)
    for flags in (("--network", "quality", "--quality-filters", "16", "--blocks", "2"), ("--network", "espcn")):
        refused = run_script("train.py", *common, *flags, "--output-dir", str(tmp_path / flags[1]))
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert lines[-1].startswith("error: --init-body"), lines


def test_the_quality_network_takes_its_own_through_plane_defaults_unless_flags_set_them(tmp_path):
    import constants
    import predict
    keras.utils.set_random_seed(4)
    model = str(tmp_path / "quality_1d_x4.keras")
    small_quality(4, one_d=True, blocks=1).save(model)
    source = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(2).random((20, 16, 5)).astype(np.float32),
                             np.diag([1.0, 1.0, 4.0, 1.0])), str(source))
    runs = {"defaults": [], "flags": ["--ensemble", "2", "--adapt-steps", "7", "--adapt-keep", "1"]}
    for name, flags in runs.items():
        assert predict.main(["--input", str(source), "--through-plane", "--model", model, "--through-plane-seconds",
                             "600", "--output-dir", str(tmp_path / name), *flags]) == 0
    fields = {name: json.load(open(tmp_path / name / "thick_quality_through_x4.json")) for name in runs}
    quality, espcn = constants.NETWORK_PRESETS["quality"], constants.NETWORK_PRESETS["espcn"]
    assert fields["defaults"]["Ensemble"] == quality["flips"] != espcn["flips"]
    assert fields["defaults"]["AdaptationSteps"] == quality["adapt_steps"] != espcn["adapt_steps"]
    assert fields["defaults"]["AdaptationKept"] == quality["adapt_keep"] != espcn["adapt_keep"]
    assert fields["flags"]["Ensemble"] == 2 and fields["flags"]["AdaptationSteps"] == 7
    assert fields["flags"]["AdaptationKept"] == 1.0


def test_quality_through_plane_takes_the_nearest_shipped_factor_for_thick_clinical_slices(tmp_path):
    import constants
    import predict
    assert all(os.path.isfile(model_files.shipped_path("quality", f)) for f in constants.QUALITY_THROUGH_PLANE_FACTORS)
    assert not os.path.isfile(model_files.shipped_path("quality", 5))  # else this test needs another ratio
    source = tmp_path / "axial_5mm.nii.gz"  # 5 mm slices of 1 mm pixels: the ESPCN's x5
    nib.save(nib.Nifti1Image(np.random.default_rng(3).integers(0, 900, (24, 20, 4)).astype(np.int16),
                             np.diag([1.0, 1.0, 5.0, 1.0])), str(source))
    assert predict.main(["--input", str(source), "--through-plane", "--model", "quality", "--adapt-steps", "2",
                         "--output-dir", str(tmp_path / "out")]) == 0
    out = nib.load(str(tmp_path / "out" / "axial_5mm_quality_through_x4.nii.gz"))
    assert out.shape == (24, 20, 16) and np.allclose(out.header.get_zooms(), (1.0, 1.0, 1.25))
    sidecar = json.load(open(tmp_path / "out" / "axial_5mm_quality_through_x4.json"))
    assert "quality_through_x4.keras" in json.dumps(sidecar)
    # widely spaced slices keep all of adaptation's change
    quality = constants.NETWORK_PRESETS["quality"]
    assert sidecar["AdaptationKept"] == quality["adapt_keep_wide"] != quality["adapt_keep"]


def accelerator_stage_tool(monkeypatch):
    """tools/accelerator_stage.py as a module (tools/ on sys.path for this test only)."""
    return import_tool(monkeypatch, "accelerator_stage")


@pytest.mark.parametrize("factor, one_d", [(4, False), (3, True)])
def test_accelerator_stage_packs_slices_and_brings_weights_back_into_the_keras_network(tmp_path, monkeypatch,
                                                                                       factor, one_d):
    """tools/accelerator_stage.py (a training stage on a GPU without TensorFlow): `pack` stores the slices as
    train.py decodes them (--part K/N: every N-th from the K-th, validation in part 1 only) and the start model's
    convolutions in Keras layouts with its factors; the torch network's convolution order (layer_names) is the
    Keras network's; `unpack` rebuilds a network, in-plane or through-plane, that computes what the stored one
    did (a wrong name mapping changes the output); an ESPCN as --init-model is refused in one line before any
    upload.  The torch side: the next tests, where PyTorch is installed."""
    import dataset

    accelerator_stage = accelerator_stage_tool(monkeypatch)
    model = small_quality(factor, one_d=one_d, blocks=2)
    convolutions = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions == accelerator_stage.layer_names(2)
    start = tmp_path / "start.keras"
    model.save(start)
    data = write_tree(tmp_path / "tree", n_train=3)
    packed = tmp_path / "stage.npz.xz"
    assert accelerator_stage.main(["pack", "--data-dir", str(data), "--init-model", str(start),
                                   "--output", str(packed)]) == 0
    stored = accelerator_stage.read_pack(str(packed))
    train_paths, val_paths = dataset.train_validation_paths(str(data))
    train_images = dataset.load_slices(train_paths, progress=False).images
    np.testing.assert_array_equal(stored["images"], train_images)
    np.testing.assert_array_equal(stored["validation"], dataset.load_slices(val_paths, progress=False).images)
    assert accelerator_stage.stored_factors(stored) == ((factor, 1) if one_d else (factor, factor))
    for part in (1, 2):
        assert accelerator_stage.main(["pack", "--data-dir", str(data), "--part", f"{part}/2",
                                       "--output", str(tmp_path / f"part{part}.npz.xz")]) == 0
    first, second = (accelerator_stage.read_pack(str(tmp_path / f"part{part}.npz.xz")) for part in (1, 2))
    np.testing.assert_array_equal(first["images"], train_images[0::2])
    np.testing.assert_array_equal(second["images"], train_images[1::2])
    assert "validation" in first and "validation" not in second and "head_conv/kernel" not in first

    weights = tmp_path / "weights.npz"
    np.savez(weights, **{key: value for key, value in stored.items() if "/" in key or key == "factors"})
    back = tmp_path / "back.keras"
    assert accelerator_stage.main(["unpack", "--weights", str(weights), "--output", str(back)]) == 0
    loaded = keras.models.load_model(back, safe_mode=True)
    assert modules.quality_blocks(loaded) == 2 and loaded.get_layer("head_conv").filters == 8
    assert modules.upscale_factors(loaded) == modules.upscale_factors(model)
    x = np.random.default_rng(1).random((1, 12, 10, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    espcn = tmp_path / "espcn.keras"
    modules.get_model(4).save(espcn)
    assert accelerator_stage.main(["pack", "--data-dir", str(data), "--init-model", str(espcn),
                                   "--output", str(tmp_path / "refused.npz.xz")]) == 1
    assert not (tmp_path / "refused.npz.xz").exists()


@pytest.mark.parametrize("factor, one_d", [(4, False), (3, True)])
def test_accelerator_stage_torch_network_computes_the_keras_network(monkeypatch, factor, one_d):
    """Where PyTorch is installed (it is not a requirement; skipped elsewhere; run on 2026-12-04 with torch
    2.13 CPU): the torch network, given a Keras quality network's weights, computes its output (pixel order,
    padding, layouts; in-plane and through-plane), stored_weights gives them back unchanged, and a network grown
    by two blocks starts at the same output (its new blocks are identities)."""
    torch = pytest.importorskip("torch")
    accelerator_stage = accelerator_stage_tool(monkeypatch)
    keras.utils.set_random_seed(6)  # the body's He-normal start: outputs up to ~20, float32 rounding ~1e-5
    model = small_quality(factor, one_d=one_d, blocks=2)
    weights = accelerator_stage.keras_weights(model)
    factors = accelerator_stage.stored_factors(weights)
    x = np.random.default_rng(2).random((2, 11, 9, 1), dtype=np.float32)
    expected = model.predict(x, verbose=0)[..., 0]
    for blocks in (2, 4):
        net = accelerator_stage.torch_network(torch, 8, blocks, factors)
        accelerator_stage.load_start(torch, net, weights, blocks)
        with torch.no_grad():
            output = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()[:, 0]
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)  # a wrong layout: differences of ~1
    net = accelerator_stage.torch_network(torch, 8, 2, factors)
    accelerator_stage.load_start(torch, net, weights, 2)
    back = accelerator_stage.stored_weights(net, 2)
    assert back.keys() == weights.keys()
    for key, value in weights.items():
        np.testing.assert_array_equal(back[key], value)


@pytest.mark.parametrize("factors, ratio", [((4, 4), 1.0), ((3, 1), 1.0), ((4, 1), 0.7)])
def test_accelerator_stage_makes_the_inputs_train_py_makes(monkeypatch, factors, ratio):
    """Where PyTorch is installed: the torch side's inputs are dataset's, for the same targets: area
    downsampling in-plane, thick rows through-plane (validation without gaps; in training, a crop as thick
    as the thickness ratio drawn for it, here the only one)."""
    import dataset

    torch = pytest.importorskip("torch")
    accelerator_stage = accelerator_stage_tool(monkeypatch)
    targets = np.random.default_rng(3).random((3, 24, 20, 1), dtype=np.float32)
    pairs = accelerator_stage.PairMaker(torch, factors, (ratio,))
    as_torch = torch.from_numpy(targets.transpose(0, 3, 1, 2).copy())
    if factors[1] == 1:
        expected = dataset.make_thick_pair(targets, factors[0], ratio)[0].numpy()
        generator = torch.Generator().manual_seed(0) if ratio != 1.0 else None
        made = pairs.low_res(as_torch, generator)
    else:
        expected = dataset.make_pair(targets, factors[0])[0].numpy()
        made = pairs.low_res(as_torch)
    np.testing.assert_allclose(made.numpy().transpose(0, 2, 3, 1), expected, atol=1e-6)


def test_accelerator_stage_draws_a_thickness_per_crop_and_validates_any_factor(monkeypatch):
    """Where PyTorch is installed: with two thickness ratios each crop's input is dataset's thick rows at one of
    them, and both are drawn; validation runs for a factor that does not divide the slices (in-plane x3 on 256:
    targets cut to 255, as dataset.downsample floors; through-plane x3 likewise)."""
    import dataset

    torch = pytest.importorskip("torch")
    accelerator_stage = accelerator_stage_tool(monkeypatch)
    targets = np.random.default_rng(4).random((8, 24, 20, 1), dtype=np.float32)
    pairs = accelerator_stage.PairMaker(torch, (4, 1), (0.7, 1.0))
    made = pairs.low_res(torch.from_numpy(targets.transpose(0, 3, 1, 2).copy()),
                         torch.Generator().manual_seed(0)).numpy().transpose(0, 2, 3, 1)
    by_ratio = {ratio: dataset.make_thick_pair(targets, 4, ratio)[0].numpy() for ratio in (0.7, 1.0)}
    drawn = [[ratio for ratio, thick in by_ratio.items() if np.allclose(made[i], thick[i], atol=1e-6)]
             for i in range(len(targets))]
    assert all(len(ratios) == 1 for ratios in drawn), drawn
    assert {ratios[0] for ratios in drawn} == {0.7, 1.0}, drawn
    validation = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (2, 256, 256), dtype=np.uint8))
    for factors in ((3, 3), (3, 1)):
        net = accelerator_stage.torch_network(torch, 4, 1, factors)
        psnr = accelerator_stage.validation_psnr(torch, net, validation, accelerator_stage.PairMaker(torch, factors))
        assert np.isfinite(psnr) and psnr > 0
