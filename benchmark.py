"""Measure training and inference speed of the default ESPCN on this machine.

usage: python benchmark.py [--batch-size 16] [--precision auto] [--jit auto] [--repeats 5] [--json]

Reports, for 64x64 -> 256x256 x4 batches of random data after warm-up, the
median over several repeats of training and inference images per second, the
GFLOP/s they achieve against this machine's measured matrix-multiply peak,
and the per-epoch time of train.py's real input pipeline on the embedded data
(pipeline alone, so one can see it never starves the model).  With --json the
last line printed is one JSON object with the results.
"""
import json
import os
import platform
import statistics
import sys
import time

import constants
import dataset
import modules
from cli import OneLineErrorParser, positive_int
from tensorflow_env import keras, tf


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=positive_int, default=constants.BATCH_SIZE)
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                        default=constants.PRECISION)
    parser.add_argument("--jit", choices=("auto", "on", "off"), default=constants.JIT,
                        help="XLA for the training step, as train.py's --jit")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--steps", type=positive_int, default=10, help="batches per timed repeat")
    parser.add_argument("--input-size", type=positive_int, default=64, help="low-resolution side, pixels")
    parser.add_argument("--data-dir", default=constants.DATA_DIR, help="for the input-pipeline epoch time")
    parser.add_argument("--skip-pipeline", action="store_true", help="do not time the input pipeline")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser.parse_args(argv)


def model_flops_per_image(model, input_size):
    """Multiply-adds x2 of every convolution for one input_size^2 image (forward pass)."""
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            flops += 2 * kh * kw * cin * cout * input_size * input_size
    return flops


def matmul_peak_gflops(dtype, size=2048, repeats=5):
    """Best GFLOP/s of a size^3 matrix multiply in `dtype`: the machine's practical peak."""
    a = tf.random.uniform((size, size), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.matmul(x, x))
    matmul(a).numpy()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def time_repeats(run_once, repeats, images_per_run):
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        rates.append(images_per_run / (time.perf_counter() - start))
    return statistics.median(rates)


def benchmark_model(args, policy):
    """Median train and inference images/s on random data."""


    keras.mixed_precision.set_global_policy(policy)
    model = modules.get_model(constants.UPSCALE_FACTOR)
    optimizer = keras.optimizers.Adam(constants.LEARNING_RATE)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    strategy = tf.distribute.get_strategy()
    jit = modules.use_xla(args.jit, policy)
    train_step = modules.make_train_step(model, optimizer, strategy, jit)
    size, factor, batch = args.input_size, constants.UPSCALE_FACTOR, args.batch_size
    x = tf.random.uniform((args.steps, batch, size, size, 1))
    y = tf.random.uniform((args.steps, batch, size * factor, size * factor, 1))
    infer = tf.function(lambda inputs: model(inputs, training=False))  # XLA measured slower here

    def train_once():
        for i in range(args.steps):
            loss = train_step((x[i], y[i]))
        float(loss)

    def infer_once():
        for i in range(args.steps):
            out = infer(x[i])
        out.numpy()

    for warm in (train_once, infer_once):
        warm()
    train_rate = time_repeats(train_once, args.repeats, args.steps * batch)
    infer_rate = time_repeats(infer_once, args.repeats, args.steps * batch)
    return model, train_rate, infer_rate, jit


def pipeline_epoch_seconds(data_dir, batch_size):
    """Seconds to produce one epoch of train.py's training batches (no model)."""
    dataset.prepare_data_dir(data_dir)
    slices, _ = dataset.load_train_validation(data_dir, progress=False)
    batches = dataset.make_training_dataset(slices.images, batch_size)
    for _ in batches.take(2):
        pass
    start = time.perf_counter()
    count = sum(int(low_res.shape[0]) for low_res, _ in batches)
    return time.perf_counter() - start, count


def main(argv=None):
    args = parse_args(argv)


    try:
        policy = modules.choose_precision(args.precision)
        peak_dtype = tf.bfloat16 if policy == "mixed_bfloat16" else tf.float16 if policy == "mixed_float16" \
            else tf.float32
        peak = matmul_peak_gflops(peak_dtype)
        model, train_rate, infer_rate, jit = benchmark_model(args, policy)
        forward = model_flops_per_image(model, args.input_size)
        result = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "tensorflow": tf.__version__, "precision": policy, "jit": jit, "batch_size": args.batch_size,
            "input_size": args.input_size,
            "train_images_per_s": round(train_rate, 1), "infer_images_per_s": round(infer_rate, 1),
            "train_gflops": round(train_rate * 3 * forward / 1e9, 1),
            "infer_gflops": round(infer_rate * forward / 1e9, 1),
            "matmul_peak_gflops": round(peak, 1),
        }
        result["train_fraction_of_peak"] = round(result["train_gflops"] / peak, 3)
        result["infer_fraction_of_peak"] = round(result["infer_gflops"] / peak, 3)
        if not args.skip_pipeline:
            seconds, count = pipeline_epoch_seconds(args.data_dir, args.batch_size)
            result["pipeline_epoch_s"] = round(seconds, 2)
            result["pipeline_examples_per_epoch"] = count
            patch_pixels = (constants.PATCH_SIZE // constants.UPSCALE_FACTOR) ** 2
            result["model_epoch_s_at_measured_speed"] = round(
                count * patch_pixels / args.input_size ** 2 / train_rate, 2)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out_size = args.input_size * constants.UPSCALE_FACTOR
    print(f"precision {policy}, XLA {'on' if jit else 'off'}, batch {args.batch_size}, "
          f"{args.input_size}x{args.input_size} -> {out_size}x{out_size}")
    print(f"train: {result['train_images_per_s']} img/s ({result['train_gflops']} GFLOP/s, "
          f"{100 * result['train_fraction_of_peak']:.0f}% of the {peak:.0f} GFLOP/s matmul peak)")
    print(f"infer: {result['infer_images_per_s']} img/s ({result['infer_gflops']} GFLOP/s, "
          f"{100 * result['infer_fraction_of_peak']:.0f}% of peak)")
    if "pipeline_epoch_s" in result:
        print(f"input pipeline: one epoch ({result['pipeline_examples_per_epoch']} crops) in "
              f"{result['pipeline_epoch_s']} s; the model needs {result['model_epoch_s_at_measured_speed']} s "
              f"for them")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
