"""Measure training and inference speed of the default ESPCN, and of the quality network, on this machine.

usage: python benchmark.py [--batch-size 16] [--precision auto] [--predict-precision auto] [--jit auto]
                           [--repeats 5] [--skip-volume] [--skip-quality] [--json]

Reports, for 64x64 -> 256x256 x4 after warm-up, the median over several
repeats of:
- training images per second (train.py's training step, random batches);
- inference images per second of the very function predict.py runs on the
  user's planes (inference.upscale_stack: edges, batching, tiling, clipping) on
  the model as predict.py loads it (inference.load_model, in predict's
  precision; one pass, predict's default for volumes: images get an 8-view
  self-ensemble), on planes like the ones users bring: the embedded test
  slices area-downsampled to 64x64 (their black border is served as trained);
  the same planes through the mirror-margin path (what small and flat planes
  take); and the bare model call on random batches, for comparison with
  other frameworks;
- the GFLOP/s these achieve against this machine's measured matrix-multiply peak;
then the end-to-end slices per second of `predict.py --input VOLUME.nii.gz` on
a generated 64-slice 256x256 int16 NIfTI volume (reading and writing
included; the library calls predict.py makes, in-process, so TensorFlow's start-up is
excluded), beside the bare model call's figure in slices of that size and
the volume's fraction of it (issue 31: at least a third), and the per-epoch
time of train.py's real input pipeline on the embedded data (pipeline alone, so one can see it never starves the model).
The quality network (`predict.py --model quality`) gets the same figures
but the pipeline's, its JSON keys prefixed `quality_` (--skip-quality: not).
Last, `python predict.py --input CLINICAL.nii.gz --through-plane` with the
default network, timed end to end as a user runs it (a new process:
TensorFlow's start-up, reading, adaptation, inference, writing and the
figure), on a clinical 2D acquisition made from the phantom: 3 mm coronal-like
slices of 0.875 mm pixels, 256x256x60 (a spacing / pixel ratio of 3.4, refined
x3, its pixels within 1.2x of the 1 mm working voxel kept), and 5 mm slices 6 mm apart of 0.45 mm zero-filled pixels,
512x512x30 (ratio 13.3; --skip-through-plane: not).
With --json the last line printed is one JSON object with the results.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

from common.cli import OneLineErrorParser, positive_int
from common import model_files
from common.tensorflow_env import keras, tf
import constants
import dataset
import inference
import modules
from scans import volumes


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=positive_int, default=constants.BATCH_SIZE)
    parser.add_argument("--precision", choices=constants.PRECISIONS,
                        default=constants.PRECISION)
    parser.add_argument("--predict-precision", choices=constants.PRECISIONS,
                        default=constants.PREDICT_PRECISION,
                        help="precision of the inference figures (the NIfTI run uses predict.py's own default)")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default=constants.JIT,
                        help="XLA for the training step, as train.py's --jit")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--steps", type=positive_int, default=10, help="batches per timed repeat")
    parser.add_argument("--input-size", type=positive_int, default=64, help="low-resolution side, pixels")
    parser.add_argument("--data-dir", default=constants.DATA_DIR, help="for the input-pipeline epoch time")
    parser.add_argument("--skip-pipeline", action="store_true", help="do not time the input pipeline")
    parser.add_argument("--volume-slices", type=positive_int, default=64, help="slices of the end-to-end NIfTI volume")
    parser.add_argument("--volume-size", type=positive_int, default=256, help="in-plane side of that volume, pixels")
    parser.add_argument("--skip-volume", action="store_true", help="do not time predict.py on a NIfTI volume")
    parser.add_argument("--skip-quality", action="store_true",
                        help="do not time the quality network (predict.py --model quality) beside the ESPCN")
    parser.add_argument("--skip-through-plane", action="store_true",
                        help="do not time predict.py --through-plane on the clinical volumes")
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


def served_model(model, directory, precision):
    """The model as predict.py serves it: saved, then loaded by inference.load_model under `precision`."""
    path = os.path.join(directory, f"{model.name}.keras")
    model.save(path)
    return inference.load_model(path, precision), path


def test_planes(data_dir, size):
    """The embedded test split's slices, area-downsampled to size x size (x4 smaller than the model's output)."""
    dataset.prepare_data_dir(data_dir)
    test = dataset.load_slices(dataset.list_images(os.path.join(data_dir, "test")), size * constants.UPSCALE_FACTOR,
                               progress=False)
    return dataset.downsample(dataset.to_unit_float(test.images), constants.UPSCALE_FACTOR).numpy()[..., 0]


def shipped_quality_blocks():
    """The residual blocks of the shipped in-plane quality network (6, where constants.QUALITY_BLOCKS is 4):
    the size `predict.py --model quality` serves; None (constants' size) if the file is missing."""
    path = model_files.shipped_path("quality")
    return modules.quality_blocks(keras.models.load_model(path, safe_mode=True)) if os.path.isfile(path) else None


def benchmark_model(args, policy, directory, network="espcn"):
    """Median images/s of training, of predict.py's inference (both edge paths) and of the bare model call.

    `network` is "espcn" or "quality" (untrained: the speed is the same), the quality network of the shipped
    in-plane file's size (shipped_quality_blocks).
    Returns (model, served model, its saved path, rates, jit, share of the planes served as trained).
    """
    blocks = shipped_quality_blocks() if network == "quality" else None
    model = modules.build_network(network, constants.UPSCALE_FACTOR, blocks=blocks, dtype=policy)
    optimizer = modules.adam(constants.LEARNING_RATE, policy)
    strategy = tf.distribute.get_strategy()
    jit = modules.use_xla(args.jit, policy)
    train_step = modules.make_train_step(model, optimizer, strategy, jit)
    size, factor, batch = args.input_size, constants.UPSCALE_FACTOR, args.batch_size
    x = tf.random.uniform((args.steps, batch, size, size, 1))
    y = tf.random.uniform((args.steps, batch, size * factor, size * factor, 1))
    served, path = served_model(model, directory, args.predict_precision)
    # The bare call: the served network on random batches (no edges, batching or clipping).
    bare = tf.function(lambda inputs: served(inputs, training=False))  # XLA measured slower here
    planes = test_planes(args.data_dir, size)
    margin = inference.receptive_radius(served)
    as_trained = float(np.mean([inference.serves_as_trained(plane, margin) for plane in planes]))

    def train_once():
        for i in range(args.steps):
            loss = train_step((x[i], y[i]))
        float(loss)

    def infer_once():
        # What predict.py runs on every plane the user gives it (evaluation.py calls the same
        # function; images and volumes call inference.upscale_planes, which it wraps).
        # predict.py's own batching too (constants.PREDICT_BATCH_PIXELS), not --batch-size.
        inference.upscale_stack(served, planes)

    def mirror_once():
        inference.upscale_stack(served, planes, edges="mirror")

    def bare_model_once():
        for i in range(args.steps):
            out = bare(x[i])
        out.numpy()

    for warm in (train_once, infer_once, mirror_once, bare_model_once):
        warm()
    rates = {"train": time_repeats(train_once, args.repeats, args.steps * batch),
             "infer": time_repeats(infer_once, args.repeats, len(planes)),
             "infer_mirror": time_repeats(mirror_once, args.repeats, len(planes)),
             "model_infer": time_repeats(bare_model_once, args.repeats, args.steps * batch)}
    return model, served, path, rates, jit, as_trained


def phantom_volume(slices, size, seed=0):
    """An int16 (size, size, slices) head-like volume: a smooth ellipsoid with texture and noise on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    volume = np.zeros((size, size, slices), np.float32)
    for k in range(slices):
        z = (k + 0.5) / slices - 0.5
        inside = (yy / 0.42) ** 2 + (xx / 0.36) ** 2 + (z / 0.6) ** 2 < 1
        texture = 600 + 250 * np.sin(xx * 40 + z * 7) * np.cos(yy * 33 - z * 5)
        volume[..., k] = np.where(inside, texture + rng.normal(0, 20, inside.shape), 0)
    return np.clip(volume, 0, 32767).astype(np.int16)


def volume_seconds(model_path, slices, size, directory, precision):
    """Seconds of predict.py's in-plane NIfTI job, first run and a second (warm) run.

    The library calls predict.py makes (loading the model, reading, scaling,
    inference, writing the x4 .nii.gz) are all timed; TensorFlow's import is
    not (it happened when this script started).
    """
    volume_path = os.path.join(directory, "volume.nii.gz")
    out_path = os.path.join(directory, "volume_x4.nii.gz")
    nib.save(nib.Nifti1Image(phantom_volume(slices, size), np.diag([1.0, 1.0, 1.0, 1.0])), volume_path)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        model = inference.load_model(model_path, precision)
        image, data = volumes.load_volume(volume_path)
        out = volumes.super_resolve_in_plane(model, image, data, 2, ensemble=constants.ENSEMBLE_VOLUMES)[0]
        volumes.save_resampled(image, out, volumes.in_plane_factors(2, constants.UPSCALE_FACTOR), out_path)
        seconds.append(time.perf_counter() - start)
        os.remove(out_path)
    return seconds


# Clinical 2D acquisitions for the through-plane timing: (name, in-plane pixels, pixel mm, slices, spacing mm,
# thickness mm), the kinds of issue 28's clinical geometry (docs/through-plane.md).
CLINICAL_VOLUMES = (("coronal_3mm", 256, 0.875, 60, 3.0, 3.0), ("axial_5of6mm_zero_filled", 512, 0.45, 30, 6.0, 5.0))


def clinical_volume(directory, name, size, pixel, slices, spacing, thickness):
    """Writes a phantom acquired as thick slices (with a BIDS sidecar stating a gap) and returns its path."""
    path = os.path.join(directory, f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(phantom_volume(slices, size), np.diag([pixel, pixel, spacing, 1.0])), path)
    if thickness != spacing:
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump({"SliceThickness": thickness, "SpacingBetweenSlices": spacing}, f)
    return path


def through_plane_seconds(directory, precision):
    """{volume name: seconds} of `python predict.py --input V --through-plane` with the default network, each in
    a new process as a user runs it (TensorFlow's start-up, reading, adaptation, inference, writing)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "predict.py")
    seconds = {}
    for name, *acquisition in CLINICAL_VOLUMES:
        path = clinical_volume(directory, name, *acquisition)
        start = time.perf_counter()
        subprocess.run([sys.executable, script, "--input", path, "--through-plane", "--precision", precision,
                        "--output-dir", os.path.join(directory, "through_plane")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds[name] = round(time.perf_counter() - start, 1)
    return seconds


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


# The /proc/cpuinfo flags that decide which oneDNN kernels run: vector width and bfloat16/AMX units.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_speed_flags():
    """Which of SPEED_FLAGS this CPU has, as one string ("avx2 avx512f avx512_bf16")."""
    flags = modules.cpu_flags()
    return " ".join(flag for flag in SPEED_FLAGS if flag in flags) or "none of " + " ".join(SPEED_FLAGS)


def cpu_name():
    """The CPU's model name, cores and native bfloat16 flags ("AMD EPYC, 2 cores, avx512_bf16")."""
    text = modules.cpuinfo_text()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = [flag for flag in modules.BF16_CPU_FLAGS if flag in modules.cpu_flags()] or ["no bf16"]
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores, {' '.join(flags)}"


def measure(args, directory):
    """Every figure of the report, as a dict."""
    policy = modules.choose_precision(args.precision)
    peak_dtype = tf.bfloat16 if policy == "mixed_bfloat16" else tf.float16 if policy == "mixed_float16" \
        else tf.float32
    peak = matmul_peak_gflops(peak_dtype)
    model, served, model_path, rates, jit, as_trained = benchmark_model(args, policy, directory)
    forward = model_flops_per_image(model, args.input_size)
    result = {
        "machine": cpu_name(), "cpu_flags": cpu_speed_flags(), "tensorflow": tf.__version__, "precision": policy,
        "jit": jit, "infer_precision": served.get_layer("conv4_linear").dtype_policy.name,
        "batch_size": args.batch_size, "input_size": args.input_size,
        "infer_planes_served_as_trained": round(as_trained, 3), "matmul_peak_gflops": round(peak, 1),
        **network_figures(args, rates, forward, peak, model_path, directory)}
    if not args.skip_quality:  # the quality network beside it (issue 30), its keys prefixed quality_
        quality, _, quality_path, quality_rates, _, _ = benchmark_model(args, policy, directory, "quality")
        figures = network_figures(args, quality_rates, model_flops_per_image(quality, args.input_size), peak,
                                  quality_path, directory)
        result.update({f"quality_{key}": value for key, value in figures.items() if key != "volume"})
    if not args.skip_through_plane:
        result["through_plane_network"] = constants.DEFAULT_NETWORK
        result["through_plane_seconds"] = through_plane_seconds(directory, args.predict_precision)
    if not args.skip_pipeline:
        seconds, count = pipeline_epoch_seconds(args.data_dir, args.batch_size)
        result["pipeline_epoch_s"] = round(seconds, 2)
        result["pipeline_examples_per_epoch"] = count
        patch_pixels = (constants.PATCH_SIZE // constants.UPSCALE_FACTOR) ** 2
        result["model_epoch_s_at_measured_speed"] = round(
            count * patch_pixels / args.input_size ** 2 / rates["train"], 2)
    return result


def network_figures(args, rates, forward, peak, model_path, directory):
    """One network's figures: training, inference, GFLOP/s and, unless skipped, the NIfTI volume's."""
    result = {
        "train_images_per_s": round(rates["train"], 1), "infer_images_per_s": round(rates["infer"], 1),
        "infer_mirror_images_per_s": round(rates["infer_mirror"], 1),
        "model_infer_images_per_s": round(rates["model_infer"], 1),
        "train_gflops": round(rates["train"] * 3 * forward / 1e9, 1),
        "infer_gflops": round(rates["model_infer"] * forward / 1e9, 1),
    }
    result["train_fraction_of_peak"] = round(result["train_gflops"] / peak, 3)
    result["infer_fraction_of_peak"] = round(result["infer_gflops"] / peak, 3)
    if not args.skip_volume:
        first, warm = volume_seconds(model_path, args.volume_slices, args.volume_size, directory,
                                     args.predict_precision)
        result["volume"] = f"{args.volume_slices} slices of {args.volume_size}x{args.volume_size}, int16, .nii.gz"
        result["volume_first_run_s"] = round(first, 2)
        result["volume_slices_per_s"] = round(args.volume_slices / warm, 1)
        # The bare model call's figure in slices of the volume's size (the same output pixels a second),
        # and the volume path's share of it: reading, scaling, converting and writing cost the rest.
        result["model_slices_per_s"] = round(rates["model_infer"] * (args.input_size / args.volume_size) ** 2, 1)
        result["volume_fraction_of_model"] = round(args.volume_slices / warm / result["model_slices_per_s"], 3)
    return result


def print_report(result, args):
    out_size = args.input_size * constants.UPSCALE_FACTOR
    print(f"CPU flags: {result['cpu_flags']}")
    print(f"{result['machine']}; precision {result['precision']} (inference {result['infer_precision']}), "
          f"XLA {'on' if result['jit'] else 'off'}, batch {args.batch_size}, "
          f"{args.input_size}x{args.input_size} -> {out_size}x{out_size}")
    print(f"train: {result['train_images_per_s']} img/s ({result['train_gflops']} GFLOP/s, "
          f"{100 * result['train_fraction_of_peak']:.0f}% of the {result['matmul_peak_gflops']:.0f} GFLOP/s "
          f"matmul peak)")
    print(f"infer: {result['infer_images_per_s']} img/s as predict.py runs it on the test slices "
          f"({100 * result['infer_planes_served_as_trained']:.0f}% served as trained, the rest with the mirror margin); "
          f"all with the mirror margin {result['infer_mirror_images_per_s']} img/s; bare model call "
          f"{result['model_infer_images_per_s']} img/s ({result['infer_gflops']} GFLOP/s, "
          f"{100 * result['infer_fraction_of_peak']:.0f}% of peak)")
    if "volume_slices_per_s" in result:
        print(f"predict.py on a NIfTI volume ({result['volume']}), reading and writing included: "
              f"{result['volume_slices_per_s']} slices/s (first run {result['volume_first_run_s']} s); the bare model "
              f"call {result['model_slices_per_s']} slices/s of that size, so the volume runs at "
              f"{100 * result['volume_fraction_of_model']:.0f}% of the model's speed")
    if "quality_train_images_per_s" in result:
        volume = (f"; the NIfTI volume {result['quality_volume_slices_per_s']} slices/s "
                  f"({100 * result['quality_volume_fraction_of_model']:.0f}% of its bare model call's "
                  f"{result['quality_model_slices_per_s']})" if "quality_volume_slices_per_s" in result else "")
        print(f"quality network: train {result['quality_train_images_per_s']} img/s, predict.py's path "
              f"{result['quality_infer_images_per_s']} img/s, bare model call "
              f"{result['quality_model_infer_images_per_s']} img/s ({result['quality_infer_gflops']} GFLOP/s){volume}")
    if "through_plane_seconds" in result:
        print(f"predict.py --through-plane ({result['through_plane_network']} network, a new process each): "
              + ", ".join(f"{name} {seconds} s" for name, seconds in result["through_plane_seconds"].items()))
    if "pipeline_epoch_s" in result:
        print(f"input pipeline: one epoch ({result['pipeline_examples_per_epoch']} crops) in "
              f"{result['pipeline_epoch_s']} s; the model needs {result['model_epoch_s_at_measured_speed']} s "
              f"for them")


def main(argv=None):
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="espcn-benchmark-") as directory:
            result = measure(args, directory)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_report(result, args)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
