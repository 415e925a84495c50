"""The ESPCN model (Shi et al. 2016), the quality network beside it, and their image-quality metrics.

Three feature convolutions (64@5x5, 64@3x3, 32@3x3, relu, orthogonal init,
same padding), a convolution to upscale^2 channels, and a sub-pixel
(depth-to-space) rearrangement to upscale x the input size.  Fully
convolutional: any input size works.

The one deviation from the seed: the last convolution is linear instead of
relu.  With relu there, a channel whose pre-activation goes negative for every
pixel gets no gradient again and stays black forever; each dead channel is one
of the 16 sub-pixel phases, so the output gets a black dot on every 4x4 cell
(2 of 16 died in a first run here).  A linear layer always passes gradient, so
that failure cannot happen; outputs are clipped to [0, 1] when they are used.

The quality network (`--model quality`, issue 30) is a residual network of
the EDSR kind ending in the same sub-pixel layer: a 5x5 convolution, residual
blocks of two 3x3 convolutions (relu between them, no batch normalisation,
as EDSR), a 3x3 convolution with a skip over the whole body, a 3x3
convolution to the sub-pixel channels, plus the input itself on every
sub-pixel (nearest-neighbour upsampling, so the network learns only what
nearest-neighbour misses).  Sizes in constants.QUALITY_FILTERS and
QUALITY_BLOCKS; both kinds go through the same inference path.
"""
import os

from common.tensorflow_env import keras, tf
import constants


@keras.saving.register_keras_serializable(package="espcn")
class DepthToSpace(keras.layers.Layer):
    """Sub-pixel shuffle: (H, W, r*r*C) -> (r*H, r*W, C), as tf.nn.depth_to_space."""

    def __init__(self, upscale_factor, **kwargs):
        super().__init__(**kwargs)
        self.upscale_factor = int(upscale_factor)

    def call(self, inputs):
        # A reshape-transpose-reshape, not tf.nn.depth_to_space: the same pixel
        # order, but TensorFlow's DepthToSpace kernel runs on one thread and
        # took 4x longer (1.7 against 0.4 ms for a batch of 16 64x64x16, float32
        # or bfloat16, 2-core EPYC); its gradient (SpaceToDepth) likewise.
        r = self.upscale_factor
        batch, height, width = tf.unstack(tf.shape(inputs)[:3])
        channels = inputs.shape[-1] // (r * r)
        x = tf.reshape(inputs, [batch, height, width, r, r, channels])
        x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
        return tf.reshape(x, [batch, height * r, width * r, channels])

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        r = self.upscale_factor
        scale = lambda size: None if size is None else size * r  # noqa: E731
        return batch, scale(height), scale(width), channels // (r * r)

    def get_config(self):
        return {**super().get_config(), "upscale_factor": self.upscale_factor}


@keras.saving.register_keras_serializable(package="espcn")
class DepthToSpace1D(keras.layers.Layer):
    """Sub-pixel shuffle along rows only: (H, W, r*C) -> (r*H, W, C).

    Channel j of input row h becomes output row r*h + j: the through-plane
    model's r output channels are the r fine slices inside one thick slice.
    """

    def __init__(self, upscale_factor, **kwargs):
        super().__init__(**kwargs)
        self.upscale_factor = int(upscale_factor)

    def call(self, inputs):
        shape = tf.shape(inputs)
        r = self.upscale_factor
        channels = inputs.shape[-1] // r
        split = tf.reshape(inputs, [shape[0], shape[1], shape[2], r, channels])
        rows_first = tf.transpose(split, [0, 1, 3, 2, 4])  # (N, H, r, W, C)
        return tf.reshape(rows_first, [shape[0], shape[1] * r, shape[2], channels])

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        r = self.upscale_factor
        return batch, None if height is None else height * r, width, channels // r

    def get_config(self):
        return {**super().get_config(), "upscale_factor": self.upscale_factor}


def get_model(upscale_factor=constants.UPSCALE_FACTOR, channels=1, filters=constants.FILTERS, dtype="float32"):
    """The seed's ESPCN for `upscale_factor` (x2 .. x8), any input size.

    Args:
        upscale_factor: 2 to 8.
        channels: image channels in and out.
        filters: the three feature convolutions' filter counts.
        dtype: the body's Keras dtype policy ("float32", "mixed_bfloat16", "mixed_float16"; see
            choose_precision), always explicit: nothing here reads Keras' global policy.  The output is
            float32 under every policy.
    """
    check_factor(upscale_factor)
    inputs = keras.Input(shape=(None, None, channels), name="low_res")
    x = feature_convolutions(inputs, filters, dtype)
    x = keras.layers.Conv2D(channels * upscale_factor ** 2, 3, padding="same", kernel_initializer="orthogonal",
                            dtype=dtype, name="conv4_linear")(x)
    x = DepthToSpace(upscale_factor, dtype=dtype, name="depth_to_space")(x)
    return keras.Model(inputs, float32_output(x), name=f"espcn_x{upscale_factor}")


def get_model_1d(upscale_factor, channels=1, filters=constants.FILTERS, dtype="float32"):
    """The seed's ESPCN upsampling rows only (through-plane): (H, W) -> (upscale_factor * H, W).

    The same three feature convolutions as get_model; the last convolution
    makes upscale_factor channels, one per fine slice inside a thick one, and
    DepthToSpace1D puts them in order along the rows.  Args as get_model's.
    """
    check_factor(upscale_factor)
    inputs = keras.Input(shape=(None, None, channels), name="thick")
    x = feature_convolutions(inputs, filters, dtype)
    x = keras.layers.Conv2D(channels * upscale_factor, 3, padding="same", kernel_initializer="orthogonal",
                            dtype=dtype, name="conv4_linear")(x)
    x = DepthToSpace1D(upscale_factor, dtype=dtype, name="depth_to_space_1d")(x)
    return keras.Model(inputs, float32_output(x), name=f"espcn_1d_x{upscale_factor}")


def get_quality_model(upscale_factor=constants.UPSCALE_FACTOR, channels=1, filters=constants.QUALITY_FILTERS,
                      blocks=constants.QUALITY_BLOCKS, dtype="float32"):
    """The quality network for `upscale_factor` in-plane (x r along rows and columns), any input size.

    Args as get_model's; `filters` is the width of every convolution of the
    body, `blocks` the number of residual blocks.
    """
    check_factor(upscale_factor)
    inputs = keras.Input(shape=(None, None, channels), name="low_res")
    x = residual_body(inputs, filters, blocks, dtype)
    x = subpixel_channels(x, inputs, channels * upscale_factor ** 2, dtype)
    x = DepthToSpace(upscale_factor, dtype=dtype, name="depth_to_space")(x)
    return keras.Model(inputs, float32_output(x), name=f"quality_x{upscale_factor}")


def get_quality_model_1d(upscale_factor, channels=1, filters=constants.QUALITY_FILTERS,
                         blocks=constants.QUALITY_BLOCKS, dtype="float32"):
    """The quality network upsampling rows only (through-plane), as get_model_1d is the ESPCN's."""
    check_factor(upscale_factor)
    inputs = keras.Input(shape=(None, None, channels), name="thick")
    x = residual_body(inputs, filters, blocks, dtype)
    x = subpixel_channels(x, inputs, channels * upscale_factor, dtype)
    x = DepthToSpace1D(upscale_factor, dtype=dtype, name="depth_to_space_1d")(x)
    return keras.Model(inputs, float32_output(x), name=f"quality_1d_x{upscale_factor}")


def residual_body(inputs, filters, blocks, dtype):
    """5x5 convolution, `blocks` residual blocks (3x3, relu, 3x3, plus the block's input), a 3x3 convolution
    plus the first convolution's output (EDSR's body without batch normalisation or upsampling)."""
    conv_args = {"kernel_initializer": "he_normal", "padding": "same", "dtype": dtype}
    head = keras.layers.Conv2D(filters, 5, name="head_conv", **conv_args)(inputs)
    x = head
    for block in range(1, blocks + 1):
        y = keras.layers.Conv2D(filters, 3, activation="relu", name=f"block{block}_conv1", **conv_args)(x)
        y = keras.layers.Conv2D(filters, 3, name=f"block{block}_conv2", **conv_args)(y)
        x = keras.layers.Add(dtype=dtype, name=f"block{block}_add")([x, y])
    x = keras.layers.Conv2D(filters, 3, name="body_end_conv", **conv_args)(x)
    return keras.layers.Add(dtype=dtype, name="body_skip")([head, x])


def subpixel_channels(features, inputs, count, dtype):
    """A 3x3 convolution to `count` sub-pixel channels, plus the input repeated on each of them (so that,
    after the sub-pixel layer, the network adds to nearest-neighbour upsampling)."""
    # zero-initialised, so training starts from nearest-neighbour upsampling: with he_normal here the first
    # training loss was 50 (MSE on [0, 1]) and the first few hundred steps went to undoing it
    x = keras.layers.Conv2D(count, 3, padding="same", kernel_initializer="zeros", dtype=dtype,
                            name="conv4_linear")(features)
    repeated = inputs if count == inputs.shape[-1] else \
        keras.layers.Concatenate(dtype=dtype, name="input_on_every_subpixel")([inputs] * (count // inputs.shape[-1]))
    return keras.layers.Add(dtype=dtype, name="plus_nearest")([x, repeated])


def build_network(network, factor, through_plane=False, channels=1, filters=None, blocks=None, dtype="float32"):
    """A new, untrained network of either kind: "espcn" or "quality", in-plane or through-plane (1-D).

    `filters` is the ESPCN's three counts or the quality network's width, `blocks` the quality network's
    residual blocks; None takes constants' defaults.
    """
    if network == "quality":
        build = get_quality_model_1d if through_plane else get_quality_model
        return build(factor, channels, filters or constants.QUALITY_FILTERS, blocks or constants.QUALITY_BLOCKS,
                     dtype=dtype)
    return (get_model_1d if through_plane else get_model)(factor, channels, filters or constants.FILTERS,
                                                          dtype=dtype)


def network_of(model):
    """"quality" or "espcn": which of this project's networks a model is, from its layers' names."""
    names = {layer.name for layer in model.layers}
    if "head_conv" in names:
        return "quality"
    missing = [name for name in ("conv1", "conv2", "conv3", "conv4_linear") if name not in names]
    if missing:
        raise ValueError(f"model {model.name} is not this project's ESPCN or quality network "
                         f"(no layer {missing[0]})")
    return "espcn"


def network_description(model):
    """The network in words for notes and provenance ("ESPCN 64,64,32", "quality network 64 filters, 4 blocks")."""
    if network_of(model) == "quality":
        return f"quality network {model.get_layer('head_conv').filters} filters, {quality_blocks(model)} blocks"
    return "ESPCN " + ",".join(str(model.get_layer(name).filters) for name in ("conv1", "conv2", "conv3"))


def quality_blocks(model):
    return sum(1 for layer in model.layers if layer.name.startswith("block") and layer.name.endswith("_add"))


def check_factor(upscale_factor):
    if not 2 <= int(upscale_factor) <= 8:
        raise ValueError(f"upscale factor must be an integer from 2 to 8, got {upscale_factor}")


def feature_convolutions(inputs, filters, dtype):
    """The seed's three feature convolutions: 5x5, 3x3, 3x3, relu, orthogonal initialisation, same padding."""
    conv_args = {"activation": "relu", "kernel_initializer": "orthogonal", "padding": "same", "dtype": dtype}
    x = keras.layers.Conv2D(filters[0], 5, name="conv1", **conv_args)(inputs)
    x = keras.layers.Conv2D(filters[1], 3, name="conv2", **conv_args)(x)
    return keras.layers.Conv2D(filters[2], 3, name="conv3", **conv_args)(x)


def float32_output(x):
    """The output cast to float32, for the loss and for callers.

    Under mixed precision every layer computes in bfloat16/float16 and only
    the output is cast.  Measured on a 2-core EPYC with AVX-512 BF16 against a
    float32 last convolution and depth-to-space: +5% training and +7%
    inference throughput; default train.py on two seeds, held-out PSNR
    32.35/32.38 against 32.27/32.30 dB (SSIM 0.9313/0.9385 against
    0.9362/0.9389).
    """
    return keras.layers.Activation("linear", dtype="float32", name="output_float32")(x)


def through_plane_factor(model):
    """The factor a through-plane (1-D) ESPCN was built for, or None for any other model."""
    for layer in model.layers:
        if isinstance(layer, DepthToSpace1D):
            return layer.upscale_factor
    return None


def upscale_factors(model):
    """(rows, columns) factors of an ESPCN: (r, r) in-plane, (F, 1) through-plane."""
    one_d = through_plane_factor(model)
    if one_d is not None:
        return one_d, 1
    factor = model_upscale_factor(model)
    return factor, factor


def model_upscale_factor(model):
    """The upscale factor a loaded model was built for."""
    for layer in model.layers:
        if isinstance(layer, DepthToSpace):
            return layer.upscale_factor
    raise ValueError(f"model {model.name} has no DepthToSpace layer: not an ESPCN model")


def ssim(a, b, max_val=1.0, filter_size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Per-image SSIM of (N, H, W, 1) images; the same numbers as tf.image.ssim.

    Written out because tf.image.ssim blurs with one 11x11 depthwise
    convolution per statistic, which takes ~150 ms per 256x256 slice on a CPU.
    The Gaussian is separable, so here the four local statistics are stacked
    as channels and blurred by an 11x1 and a 1x11 depthwise convolution
    (2.7 ms a slice here, ~50x faster).
    """
    coords = tf.range(filter_size, dtype=tf.float32) - (filter_size - 1) / 2.0
    taps = tf.nn.softmax(-0.5 * tf.square(coords) / sigma ** 2)
    stats = tf.concat([a, b, a * b, tf.square(a) + tf.square(b)], axis=-1)
    column = tf.tile(tf.reshape(taps, [filter_size, 1, 1, 1]), [1, 1, 4, 1])
    stats = tf.nn.depthwise_conv2d(stats, column, [1, 1, 1, 1], "VALID")
    stats = tf.nn.depthwise_conv2d(stats, tf.transpose(column, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")
    mean_a, mean_b, mean_ab, mean_squares = tf.unstack(stats, axis=-1)

    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    num0, den0 = 2.0 * mean_a * mean_b, tf.square(mean_a) + tf.square(mean_b)
    luminance = (num0 + c1) / (den0 + c1)
    contrast_structure = (2.0 * mean_ab - num0 + c2) / (mean_squares - den0 + c2)
    return tf.reduce_mean(luminance * contrast_structure, axis=[1, 2])


@tf.function(reduce_retracing=True)
def psnr_ssim(prediction, target):
    """Per-image PSNR (dB, capped) and SSIM of [0,1] images, prediction clipped to [0,1].

    Images must be at least 11x11 (the SSIM window).
    """
    prediction = tf.clip_by_value(tf.cast(prediction, tf.float32), 0.0, 1.0)
    target = tf.cast(target, tf.float32)
    psnr = tf.minimum(tf.image.psnr(prediction, target, max_val=1.0), constants.PSNR_CAP_DB)
    return psnr, ssim(prediction, target)


class PSNRCallback(keras.callbacks.Callback):
    """Adds the validation set's true mean per-image PSNR and SSIM to the logs.

    The seed reported 10*log10(1/loss) of a batch, which is the PSNR of the
    batch's mean squared error, not the mean of per-image PSNRs.  This runs the
    model over every validation slice after each epoch and logs val_psnr and
    val_ssim (and val_loss, the mean MSE, when the logs lack it), so they land
    in the history.
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.scores = {}

    def on_epoch_end(self, epoch, logs=None):
        scores = self.scores = evaluate_pairs(self.model, self.dataset)
        if logs is not None:
            logs.setdefault("val_loss", scores["loss"])
            logs["val_psnr"], logs["val_ssim"] = scores["psnr"], scores["ssim"]


@tf.function(reduce_retracing=True)
def _scores_of_batch(model, low_res, target):
    prediction = model(low_res, training=False)
    psnr, ssim = psnr_ssim(prediction, target)
    mse = tf.reduce_mean(tf.square(tf.cast(prediction, tf.float32) - target), axis=[1, 2, 3])
    return mse, psnr, ssim


def evaluate_pairs(model, dataset):
    """Mean per-image MSE ("loss"), PSNR and SSIM of the model on (input, target) batches."""
    totals = {"loss": 0.0, "psnr": 0.0, "ssim": 0.0}
    count = 0
    for low_res, target in dataset:
        for name, values in zip(totals, _scores_of_batch(model, low_res, target)):
            totals[name] += float(tf.reduce_sum(values))
        count += int(target.shape[0])
    if count == 0:
        raise ValueError("evaluation set is empty")
    return {name: total / count for name, total in totals.items()}


# --- Training step and precision (shared by train.py and benchmark.py) ------

# /proc/cpuinfo flags of native bfloat16 math: AVX-512 BF16 and AMX.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Where native bfloat16 is also the faster choice (docs/performance.md, *Which CPUs get bfloat16*): AMX
# anywhere; AVX-512 BF16 alone on AMD's cores (an EPYC: mixed bfloat16 about 3x float32), not on Intel's
# (a 2-core Intel Xeon with AVX-512 BF16 and no AMX: the quality network's inference 38 img/s in bfloat16,
# 90 in float32; benchmark.py's matmul peak 181 against 357 GFLOP/s).
BF16_FASTER_VENDORS = ("AuthenticAMD",)


def cpuinfo_text():
    """/proc/cpuinfo, or "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as info:
            return info.read()
    except OSError:
        return ""


def cpu_flags():
    """The flags of the first CPU in /proc/cpuinfo, as a set (empty where it cannot be read)."""
    for line in cpuinfo_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# oneDNN's ISA caps (its ONEDNN_MAX_CPU_ISA variable) below which bfloat16 math is not native.
ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
# ... and those below which AMX is not used (bfloat16 then runs on AVX-512 BF16 alone).
ISAS_WITHOUT_AMX = ISAS_WITHOUT_BF16 + ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512")


def cpu_vendor():
    """The first CPU's vendor_id in /proc/cpuinfo ("GenuineIntel", "AuthenticAMD"), "" where it cannot be read."""
    for line in cpuinfo_text().splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_has_bf16():
    """True on CPUs with native bfloat16 math (AVX-512 BF16 or AMX) that oneDNN may use: ONEDNN_MAX_CPU_ISA
    set below AVX-512 BF16 (AVX2, say, to run as an AVX2-only CPU does) leaves bfloat16 to emulation."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ISAS_WITHOUT_BF16:
        return False
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def bf16_is_faster():
    """True where mixed bfloat16 outruns float32: native bfloat16 (cpu_has_bf16) with AMX units oneDNN may use,
    or AVX-512 BF16 on a vendor of BF16_FASTER_VENDORS.  ONEDNN_MAX_CPU_ISA capped below AMX leaves an Intel
    CPU its AVX-512 BF16 alone."""
    if not cpu_has_bf16():
        return False
    amx = "amx_bf16" in cpu_flags() and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in ISAS_WITHOUT_AMX
    return amx or cpu_vendor() in BF16_FASTER_VENDORS


def has_gpu():
    return bool(tf.config.list_physical_devices("GPU"))


def choose_precision(name):
    """The Keras dtype policy for a --precision flag: the one place precision is decided (constants.PRECISION).

    "auto" is mixed_float16 on a GPU, mixed_bfloat16 on a CPU where native
    bfloat16 math is the faster (bf16_is_faster: AMX, or AVX-512 BF16 on an AMD
    CPU), float32 elsewhere (AVX2 CPUs emulate bfloat16, slowly; Intel's
    AVX-512 BF16 without AMX runs it slower than float32).  Every model is then
    built with this policy as its explicit dtype: nothing sets Keras' global
    policy.
    """
    if name != "auto":
        return name
    if has_gpu():
        return "mixed_float16"
    return "mixed_bfloat16" if bf16_is_faster() else "float32"


def cosine_schedule(learning_rate, steps):
    """Keras' CosineDecay from `learning_rate` to constants.LR_FLOOR of it over `steps`: the curve of
    common.schedules.cosine_factor, as a schedule the optimizer follows step by step."""
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps), alpha=constants.LR_FLOOR)


def adam(learning_rate, policy):
    """Adam for a model computing under `policy`; loss-scaled for float16, whose small gradients underflow."""
    optimizer = keras.optimizers.Adam(learning_rate)
    return keras.optimizers.LossScaleOptimizer(optimizer) if policy == "mixed_float16" else optimizer


def inference_model(model, precision=constants.PREDICT_PRECISION):
    """The same ESPCN (in-plane or through-plane), rebuilt to compute under `precision`, with a float32 output.

    A saved model keeps the policy it was trained under, whatever the machine
    that loads it: bfloat16 math is emulated (slow) on CPUs without AVX-512
    BF16 or AMX, and float32 leaves half the speed unused on those that have
    them.  Measured on the held-out split through predict.py's path, one
    pass (2-core AMD EPYC with AVX-512 BF16): the shipped model scores
    33.2847 dB in float32 and 33.2750 dB in mixed_bfloat16 (-0.010 dB), SSIM
    0.9612 against 0.9609; the model shipped before it 33.5653 against
    33.5537 dB (-0.012 dB), largest pixel difference 0.013 on [0, 1].

    Args:
        model: an ESPCN or quality network made by get_model, get_model_1d, get_quality_model or
            get_quality_model_1d (any policy, any factor).
        precision: a --precision value (choose_precision: "auto", "float32", "mixed_bfloat16",
            "mixed_float16").

    Returns:
        A new model with the same weights (copied layer by layer, by name).
    """
    one_d = through_plane_factor(model)
    factor, channels, policy = one_d or model_upscale_factor(model), model.input_shape[-1], choose_precision(precision)
    network = network_of(model)
    if network == "quality":
        filters, blocks = model.get_layer("head_conv").filters, quality_blocks(model)
    else:
        filters, blocks = tuple(model.get_layer(name).filters for name in ("conv1", "conv2", "conv3")), None
    rebuilt = build_network(network, factor, bool(one_d), channels, filters, blocks, dtype=policy)
    copy_weights(model, rebuilt)
    return rebuilt


def copy_weights(source, target):
    """Sets every weighted layer of `target` to the weights of `source`'s layer of the same name.

    ValueError in words where `source` is another kind of model (in-plane or through-plane, another factor,
    a layer missing or of another shape).
    """
    if upscale_factors(source) != upscale_factors(target):
        raise ValueError(f"model {source.name} upscales (rows, columns) x{upscale_factors(source)}, not "
                         f"x{upscale_factors(target)}")
    if network_of(source) == network_of(target) == "quality" and quality_blocks(source) != quality_blocks(target):
        # copying by name alone would drop a deeper source's last blocks, or leave a shallower one's new
        raise ValueError(f"model {source.name} has {quality_blocks(source)} residual blocks, not "
                         f"{quality_blocks(target)} (train.py --blocks)")
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise ValueError(f"model {source.name} has no layer {layer.name}: another kind of model") from None
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != shapes:
            raise ValueError(f"model {source.name}: layer {layer.name} has other shapes than {shapes} (another "
                             "factor or filter count)")
        layer.set_weights(weights)


def copy_body(source, target):
    """Sets the residual body of quality network `target` (head_conv, the blocks, body_end_conv) to `source`'s.

    `source` may be a quality network of another factor or direction (the in-plane x4 model starting a
    through-plane one): the body computes at the input's resolution and does not depend on either; the
    sub-pixel convolution stays as built (zero: nearest-neighbour).  ValueError in words where `source` has
    no such body or one of another width or depth.
    """
    body = [layer for layer in target.layers if layer.weights and layer.name != "conv4_linear"]
    if network_of(target) != "quality":
        raise ValueError(f"model {target.name} is not the quality network: only its residual body is copied")
    if len(body) != len([layer for layer in source.layers if layer.weights]) - 1:
        raise ValueError(f"model {source.name} is not a quality network of {quality_blocks(target)} blocks")
    for layer in body:
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise ValueError(f"model {source.name} has no layer {layer.name}: not a quality network") from None
        if [tuple(w.shape) for w in weights] != [tuple(w.shape) for w in layer.get_weights()]:
            raise ValueError(f"model {source.name}: layer {layer.name} has other shapes (another width or channel "
                             "count)")
        layer.set_weights(weights)


def as_float32(model):
    """The same ESPCN computing in float32 (inference_model with precision "float32")."""
    return inference_model(model, "float32")


def use_xla(jit, policy):
    """Whether --jit {auto,on,off} compiles the training step under this dtype policy (see constants.JIT)."""
    return jit == "on" or (jit == "auto" and policy == "float32")


def make_train_step(model, optimizer, strategy, jit, loss_name=constants.LOSS):
    """A tf.function running one synchronous training step on every replica.

    The loss (per-image MSE, or mean absolute error with loss_name "l1") is
    averaged over the global batch, so gradients summed across replicas are
    those of the whole batch.  With jit, XLA
    compiles the forward and backward pass; the update (where replicas
    all-reduce their gradients) stays outside it, since collectives cannot be
    XLA-compiled on CPU.
    """
    scale_loss = getattr(optimizer, "scale_loss", lambda loss: loss)  # LossScaleOptimizer (float16)

    def loss_and_gradients(low_res, target):
        with tf.GradientTape() as tape:
            prediction = model(low_res, training=True)
            error = prediction - target
            per_image = tf.reduce_mean(tf.abs(error) if loss_name == "l1" else tf.square(error), axis=[1, 2, 3])
            loss = tf.nn.compute_average_loss(per_image)  # divided by the global batch
            scaled_loss = scale_loss(loss)
        return loss, tape.gradient(scaled_loss, model.trainable_variables)

    compiled = tf.function(loss_and_gradients, jit_compile=True) if jit else loss_and_gradients

    def replica_step(low_res, target):
        loss, gradients = compiled(low_res, target)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return train_step
