"""In-plane adaptation scored on held-out volumes of each contrast: the x4 model fine-tuned on a volume's own
slices made 4x coarser once more (pairs of the volume's contrast, noise and texture, as through-plane
adaptation learns from a volume's fine planes).  Measured and not kept: docs/training-recipe.md, *In-plane
adaptation*.

usage:
  python tools/in_plane_adaptation_check.py --volume NAME=PATH [...] [--ms GITDIR --functional GITDIR]
      [--model quality] [--steps 0 100 300] [--keep 1 0.5]

Each volume (a NIfTI/MGH file, or with --ms / --functional the held-out scans of tools/contrast_slices.py:
MS patients 04 and 19's FLAIR and T2, the functional subject's first EPI volume) is the truth: the 12 slices
with most tissue across its largest voxel size are area-downsampled x4, the model is adapted on those
low-resolution slices alone (their own pairs, made coarser once more: nothing of the truth), and the slices are
super-resolved (one view) and scored on the volume's robust range: PSNR against the truth minus bicubic's, the
mean over the slices.  --steps 0 is the model as shipped.  Precision: predict.py's auto.  Not a test.
"""
import argparse
import json
import os
import sys

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import constants  # noqa: E402
import inference  # noqa: E402
import modules  # noqa: E402
from common import measures, model_files  # noqa: E402
from common.schedules import cosine_factor  # noqa: E402
from common.tensorflow_env import deterministic_ops, tf  # noqa: E402
from contrast_slices import MS_SCAN, functional_volumes  # noqa: E402  (this folder is on the path)
from real_volumes import Source, load_bytes  # noqa: E402
from scans import volumes  # noqa: E402
from through_plane.adaptation import keep_share_of_change  # noqa: E402

FACTOR = 4
PRECISION = "auto"


def training_pairs(planes, factor, patch, count, rng):
    """(low-resolution (count, patch/F, patch/F, 1), target (count, patch, patch, 1)) float32 crops of [0, 1]
    planes (n, h, w), centred on tissue, turned by one of the 8 flips and quarter turns, area-downsampled."""
    size = max(factor, min(patch, *planes.shape[1:]) // factor * factor)
    tissue = np.argwhere(planes > 0.1)
    centres = tissue if len(tissue) else np.argwhere(np.ones(planes.shape, bool))
    target = np.empty((count, size, size), np.float32)
    for i, (index, row, col) in enumerate(centres[rng.integers(len(centres), size=count)]):
        top = int(np.clip(row - size // 2, 0, planes.shape[1] - size))
        left = int(np.clip(col - size // 2, 0, planes.shape[2] - size))
        crop = np.rot90(planes[index, top:top + size, left:left + size], rng.integers(4))
        target[i] = crop[::-1] if rng.integers(2) else crop
    low = target.reshape(count, size // factor, factor, size // factor, factor).mean(axis=(2, 4))
    return low[..., None], target[..., None]


def adapt_in_plane(start, planes, *, steps, precision, seed=constants.ADAPT_SEED, batch_size=constants.ADAPT_BATCH_SIZE,
                   patch=constants.ADAPT_PATCH, learning_rate=constants.ADAPT_LEARNING_RATE, keep=1.0):
    """The in-plane model `start` fine-tuned for `steps` steps on pairs from `planes` (n, h, w) in [0, 1].

    The learning rate falls by the cosine of common.schedules over the steps; `keep` of the change to the
    weights is kept (the model lies that share of the way from `start` to the adapted one).  Returns the
    model served in `precision`.
    """
    factor = modules.model_upscale_factor(start)
    policy = modules.choose_precision(precision)
    model = modules.inference_model(start, precision)
    optimizer = modules.adam(learning_rate, policy)
    step = modules.make_train_step(model, optimizer, tf.distribute.get_strategy(), jit=False)
    rng = np.random.default_rng(seed)
    for done in range(steps):
        optimizer.learning_rate.assign(learning_rate * cosine_factor(done / steps))
        step(tuple(tf.constant(array) for array in training_pairs(planes, factor, patch, batch_size, rng)))
    model.set_weights(keep_share_of_change(start.get_weights(), model.get_weights(), keep))
    return modules.inference_model(model, precision)


def truth_slices(data, zooms, count=12):
    """(count, h, w) slices across the largest voxel size with most tissue, on [0, 1] by the robust range."""
    data = np.nan_to_num(np.asarray(data, np.float32))
    low, high = volumes.robust_range(data)
    planes = np.moveaxis((data - low) / (high - low), int(np.argmax(zooms[:3])), 0)
    planes = planes[:, :planes.shape[1] // FACTOR * FACTOR, :planes.shape[2] // FACTOR * FACTOR]
    tissue = np.argsort([-np.mean(plane > 0.1) for plane in planes])[:count]
    return np.clip(planes[np.sort(tissue)], 0.0, 1.0).astype(np.float32)


def gain(model, truth, low):
    """Mean over slices of (model PSNR - bicubic PSNR), both on [0, 1]."""
    model_out = inference.upscale_stack(model, low, ensemble=1)
    bicubic = np.clip(inference.bicubic_upscale(low[..., None], FACTOR)[..., 0], 0.0, 1.0)
    return float(np.mean([measures.psnr(m, t, 1.0) - measures.psnr(b, t, 1.0)
                          for m, b, t in zip(model_out, bicubic, truth)]))


def held_out_volumes(args):
    """{name: (data, zooms)} of --volume and the held-out scans of the contrast sources."""
    found = {}
    for spec in args.volume:
        name, path = spec.split("=", 1)
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
        found[name] = (data if data.ndim == 3 else data[..., 0], image.header.get_zooms()[:3])
    if args.ms:
        ms = Source(args.ms, mirror=True)
        for path in ms.names():
            match = MS_SCAN.match(path)
            if match and match.group(1) in ("patient04", "patient19") and (data := ms.read(path)) is not None:
                image = load_bytes(data, ".nii.gz")
                found[f"{match.group(3).lower()}_{match.group(1)}_{match.group(2)}"] = (
                    np.asanyarray(image.dataobj), image.header.get_zooms()[:3])
    if args.functional:
        for image, data in functional_volumes(Source(args.functional, mirror=True), 1):
            found["epi_functional"] = (data if data.ndim == 3 else data[..., 0], image.header.get_zooms()[:3])
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--volume", nargs="*", default=[], metavar="NAME=PATH")
    parser.add_argument("--ms", default=None, help="muschellij2/open_ms_data's bare git directory")
    parser.add_argument("--functional", default=None, help="datalad/example-dicom-functional's bare git directory")
    parser.add_argument("--model", default="quality", help="espcn, quality or a .keras file")
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 100, 300])
    parser.add_argument("--keep", nargs="+", type=float, default=[1.0])
    args = parser.parse_args(argv)
    deterministic_ops()
    path = model_files.shipped_path(args.model) if args.model in ("espcn", "quality") else args.model
    start = inference.load_model(path, PRECISION)
    record = {}
    for name, (data, zooms) in held_out_volumes(args).items():
        truth = truth_slices(data, zooms)
        low = truth.reshape(len(truth), truth.shape[1] // FACTOR, FACTOR, truth.shape[2] // FACTOR,
                            FACTOR).mean(axis=(2, 4))
        for steps in args.steps:
            for keep in (args.keep if steps else [1.0]):
                model = adapt_in_plane(start, low, steps=steps, precision=PRECISION, keep=keep) if steps else start
                record[f"{name} steps {steps} keep {keep:g}"] = value = round(gain(model, truth, low), 3)
                print(f"{name:<36} {truth.shape[1]}x{truth.shape[2]} steps {steps:4d} keep {keep:g}: "
                      f"gain {value:+.3f} dB", flush=True)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
