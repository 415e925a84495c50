import numpy as np
import pytest

from common.tensorflow_env import keras, tf
import constants
import modules


@pytest.fixture(autouse=True)
def seeded():
    """Every random draw of a test (NumPy, TensorFlow, Keras initialisers) the same on every run."""
    keras.utils.set_random_seed(2)


@pytest.mark.parametrize("height,width", [(64, 64), (13, 17), (1, 5)])
def test_output_is_upscale_times_input(height, width):
    model = modules.get_model(4)
    out = model(np.random.rand(2, height, width, 1).astype("float32"))
    assert out.shape == (2, 4 * height, 4 * width, 1)
    assert out.dtype == tf.float32


def test_other_factors_build_and_bad_ones_are_refused():
    assert modules.get_model(2)(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 16, 16, 1)
    with pytest.raises(ValueError, match="upscale factor"):
        modules.get_model(1)


def test_depth_to_space_matches_reference_pixel_order():
    x = np.random.rand(2, 3, 5, 32).astype("float32")  # r=4, 2 output channels
    got = modules.DepthToSpace(4)(x).numpy()
    assert np.array_equal(got, tf.nn.depth_to_space(x, 4).numpy())
    # the definition written out: out[b, 4h+i, 4w+j, c] = x[b, h, w, (4i+j)*C + c]
    ref = x.reshape(2, 3, 5, 4, 4, 2).transpose(0, 1, 3, 2, 4, 5).reshape(2, 12, 20, 2)
    assert np.array_equal(got, ref)


def test_save_load_round_trip_with_safe_mode(tmp_path):
    model = modules.get_model(4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    x = np.random.rand(2, 20, 24, 1).astype("float32")
    assert np.allclose(model(x), loaded(x), atol=0)
    assert modules.model_upscale_factor(loaded) == 4


def test_no_sub_pixel_channel_can_die():
    """The seed's relu on the last conv let channels die (black 4x4 grid).

    Push every last-layer pre-activation far negative, as a dead relu channel
    would be: each of the 16 sub-pixel channels must still get gradient.
    """
    model = modules.get_model(4)
    last = model.get_layer("conv4_linear")
    kernel, bias = last.get_weights()
    last.set_weights([kernel, np.full_like(bias, -10.0)])
    x = tf.random.uniform((2, 16, 16, 1))
    y = tf.random.uniform((2, 64, 64, 1))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    bias_grad = tape.gradient(loss, last.bias)
    assert np.all(np.abs(bias_grad.numpy()) > 0), bias_grad.numpy()


def test_ssim_matches_tensorflow():
    a = tf.random.uniform((3, 40, 33, 1), seed=1)
    b = tf.clip_by_value(a + tf.random.normal(a.shape, stddev=0.1, seed=2), 0.0, 1.0)
    _, ssim = modules.psnr_ssim(b, a)
    assert np.allclose(ssim, tf.image.ssim(b, a, max_val=1.0), atol=1e-5)


def test_psnr_is_per_image_ten_log_of_one_over_mse_capped_and_on_the_clipped_prediction():
    rng = np.random.default_rng(3)
    target = rng.random((4, 40, 33, 1)).astype(np.float32)
    noise = rng.normal(0, 1, target.shape) * np.array([0.0, 0.02, 0.05, 0.2]).reshape(4, 1, 1, 1)
    prediction = np.clip(target + noise, 0, 1).astype(np.float32)  # image 0 is the target itself
    psnr, _ = modules.psnr_ssim(prediction, target)
    mse = np.mean((prediction.astype(np.float64) - target) ** 2, axis=(1, 2, 3))
    assert psnr[0] == constants.PSNR_CAP_DB  # identical: capped, not infinite
    np.testing.assert_allclose(psnr[1:], 10 * np.log10(1 / mse[1:]), atol=1e-3)
    assert 10 < psnr[3] < psnr[2] < psnr[1] < 40
    tiny = modules.psnr_ssim(target + 1e-6, target)[0]  # finite, but far above the cap
    assert np.all(tiny.numpy() == constants.PSNR_CAP_DB)

    wild = prediction + rng.normal(0, 0.3, target.shape).astype(np.float32)  # outside [0, 1] in many pixels
    assert (wild < 0).mean() > 0.05 and (wild > 1).mean() > 0.05
    psnr_wild, ssim_wild = modules.psnr_ssim(wild, target)
    psnr_clipped, ssim_clipped = modules.psnr_ssim(np.clip(wild, 0, 1), target)
    assert np.array_equal(psnr_wild, psnr_clipped) and np.array_equal(ssim_wild, ssim_clipped)
    clipped_mse = np.mean((np.clip(wild, 0, 1).astype(np.float64) - target) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(psnr_wild, 10 * np.log10(1 / clipped_mse), atol=1e-3)


def test_psnr_callback_reports_mean_per_image_psnr():
    model = modules.get_model(4)
    x = np.random.rand(4, 8, 8, 1).astype("float32")
    y = np.random.rand(4, 32, 32, 1).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    callback = modules.PSNRCallback(data)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    pred = np.clip(model(x).numpy(), 0, 1)
    per_image = [10 * np.log10(1 / np.mean((pred[i] - y[i]) ** 2)) for i in range(4)]
    assert logs["val_psnr"] == pytest.approx(np.mean(per_image), abs=1e-3)
    assert logs["val_ssim"] == pytest.approx(float(tf.reduce_mean(tf.image.ssim(pred, y, 1.0))), abs=1e-5)
    assert logs["val_loss"] == pytest.approx(np.mean((model(x).numpy() - y) ** 2), rel=1e-4)


@pytest.mark.parametrize("trained_under", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_inference_model_computes_under_the_asked_precision_with_a_float32_output(trained_under, precision):
    model = modules.get_model(4, filters=(8, 8, 4), dtype=trained_under)
    served = modules.inference_model(model, precision)
    assert served is not model
    assert [layer.dtype_policy.name for layer in served.layers if layer.name.startswith(("conv", "depth"))] \
        == [precision] * 5
    assert served.output.dtype == "float32" and keras.mixed_precision.global_policy().name == "float32"
    for name in ("conv1", "conv2", "conv3", "conv4_linear"):
        for got, want in zip(served.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            assert np.array_equal(got, want), name
    x = np.random.default_rng(0).random((2, 12, 10, 1), dtype=np.float32)
    reference = modules.inference_model(model, "float32")(x).numpy()
    out = served(x).numpy()
    assert out.shape == (2, 48, 40, 1) and out.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: a few parts in a thousand of the output's range
    tolerance = 0 if precision == "float32" else 0.02 * np.abs(reference).max()
    assert np.abs(out - reference).max() <= tolerance


def test_inference_model_auto_is_train_py_auto_and_strangers_are_refused():
    model = modules.get_model(2, filters=(4, 4, 4))
    served = modules.inference_model(model, "auto")
    assert served.get_layer("conv1").dtype_policy.name == modules.choose_precision("auto")
    inputs = keras.Input((None, None, 1))
    stranger = keras.Model(inputs, modules.DepthToSpace(2)(keras.layers.Conv2D(4, 3, padding="same")(inputs)))
    with pytest.raises(ValueError, match="not this project's ESPCN"):
        modules.inference_model(stranger, "float32")


def test_l1_training_step_reports_mean_absolute_error():
    model = modules.get_model(4)
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.SGD(learning_rate=0.0)
    x, y = tf.random.uniform((2, 8, 8, 1), seed=2), tf.random.uniform((2, 32, 32, 1), seed=3)
    expected = float(tf.reduce_mean(tf.abs(model(x) - y)))
    loss = float(modules.make_train_step(model, optimizer, strategy, jit=False, loss_name="l1")((x, y)))
    assert abs(loss - expected) < 1e-5


def test_the_training_schedule_follows_the_one_cosine_curve():
    """train.py's Keras schedule and the cosine that adaptation and the GPU stage use are the same curve."""
    from common.schedules import cosine_factor
    schedule = modules.cosine_schedule(2e-3, 40)
    for step in (0, 1, 10, 20, 33, 40, 55):
        assert np.isclose(float(schedule(step)), 2e-3 * cosine_factor(step / 40), rtol=1e-5), step
    assert cosine_factor(0) == 1.0 and np.isclose(cosine_factor(1), constants.LR_FLOOR)
