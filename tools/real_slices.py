"""Slices of the real training heads as an AD_NC-style image tree, for train.py --through-plane-factor.

usage:
  python tools/real_slices.py [--volumes data/real_volumes] [--output-dir data/real_slices] [--step 3]
      [--head-step NAME STEP ...] [--template DIR] [--coarsen K]

train.py reads 2D slices from image files; the through-plane models learn from slices made thick along
their rows (dataset.make_thick_pair, with flips and quarter turns).  This writes, for every head of
tools/real_volumes.py's train/ and validation/ splits, the slices across each of its three axes (every
--step-th slice holding at least --min-tissue of tissue), as 8-bit greyscale PNG on the head's own 0.5-99.5
percentile range (volumes.robust_range, as predict.py scales a volume); --head-step gives a head a step of its
own (the one training head with a skull, studyforrest_T1w, takes every slice: 887 slices instead of 221 at
step 4, so that heads with skull and scalp are not 3% of what the models see):
  <output-dir>/train/heads/<name>_<axis><index>.png        (train.py's groups: one head, one group)
  <output-dir>/validation/heads/<name>_<axis><index>.png   (the held-out heads: validation, by subject)
  <output-dir>/test/heads/...                              (a copy of validation/: train.py needs a test/)
  <output-dir>/train/<class>/...                           with --template DIR: the embedded template's
                                                           training slices too (data/AD_NC/train, which
                                                           python train.py builds), so the models keep it
--coarsen K first averages each head over blocks of KxKxK voxels (area averaging in 3D), so the slices show
heads at K times the voxel size, the regime of 2 mm diffusion and EPI scans and coarse clinical series that
1 mm heads never show a 4x model (their 4x-smaller inputs have 8 mm pixels); the file names then end the
head's name with -coarseK.
The data is not committed (data/ is git-ignored).
"""
import argparse
import os
import shutil
import sys

import nibabel as nib
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common.cli import positive_int  # noqa: E402
from scans import volumes  # noqa: E402


def head_slices(data, step, min_tissue):
    """(axis, index, uint8 slice) of a [0, 1] volume: every step-th slice across each axis with enough tissue."""
    for axis in range(3):
        for index in range(0, data.shape[axis], step):
            plane = data[(slice(None),) * axis + (index,)]  # a view: np.take copied 15M voxels each time
            if np.mean(plane > 0.05) >= min_tissue:
                yield axis, index, np.round(plane * 255).astype(np.uint8)


def coarsened(data, factor):
    """The 3D volume averaged over factor^3 blocks (a partial block at an edge is dropped)."""
    if factor == 1:
        return data
    shape = [size // factor for size in data.shape]
    blocks = data[:shape[0] * factor, :shape[1] * factor, :shape[2] * factor]
    return blocks.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def write_head(path, folder, step, min_tissue, coarsen=1):
    """Writes one head's slices into `folder`; returns how many."""
    data = np.asarray(nib.load(path).dataobj, np.float32)
    if data.ndim != 3 or min(data.shape) < coarsen:
        raise SystemExit(f"error: {path}: a {'x'.join(map(str, data.shape))} volume, not a 3D head of at least "
                         f"--coarsen {coarsen} voxels a side")
    data = coarsened(data, coarsen)
    low, high = volumes.robust_range(data)
    scaled = np.clip((data - low) / (high - low), 0.0, 1.0)
    name = volumes.nifti_stem(path).replace("_", "-")  # train.py groups by the name up to its last "_"
    name += f"-coarse{coarsen}" if coarsen > 1 else ""
    count = 0
    for axis, index, plane in head_slices(scaled, step, min_tissue):
        Image.fromarray(plane).save(os.path.join(folder, f"{name}_{'xyz'[axis]}{index:03d}.png"))
        count += 1
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--volumes", default=os.path.join(ROOT, "data", "real_volumes"),
                        help="tools/real_volumes.py's output (train/ and validation/ heads)")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "data", "real_slices"))
    parser.add_argument("--step", type=int, default=3, help="every step-th slice across each axis")
    parser.add_argument("--head-step", nargs=2, action="append", default=[], metavar=("NAME", "STEP"),
                        help="a step of its own for the head NAME (its file name without .nii.gz); repeatable")
    parser.add_argument("--min-tissue", type=float, default=0.05, help="share of the slice above 5%% of the range")
    parser.add_argument("--template", default=None, metavar="DIR",
                        help="a train/ folder of image slices to add (e.g. data/AD_NC/train)")
    parser.add_argument("--coarsen", type=positive_int, default=1, metavar="K",
                        help="average each head over KxKxK voxels first: heads at K times the voxel size")
    args = parser.parse_args(argv)
    try:
        steps = {name: int(step) for name, step in args.head_step}
    except ValueError:
        parser.error(f"--head-step: STEP must be a whole number, got {args.head_step}")
    if any(step < 1 for step in steps.values()):
        parser.error("--head-step: STEP must be at least 1")
    known = {volumes.nifti_stem(name) for split in ("train", "validation")
             for name in os.listdir(os.path.join(args.volumes, split)) if volumes.is_nifti(name)}
    if set(steps) - known:
        parser.error(f"--head-step: no head named {' '.join(sorted(set(steps) - known))} in {args.volumes}")
    for split in ("train", "validation"):
        source = os.path.join(args.volumes, split)
        folder = os.path.join(args.output_dir, split, "heads")
        os.makedirs(folder, exist_ok=True)
        heads = sorted(name for name in os.listdir(source) if volumes.is_nifti(name))
        total = sum(write_head(os.path.join(source, name), folder, steps.get(volumes.nifti_stem(name), args.step),
                               args.min_tissue, args.coarsen) for name in heads)
        print(f"{split}: {len(heads)} heads, {total} slices")
    if args.template:
        shutil.copytree(args.template, os.path.join(args.output_dir, "train"), dirs_exist_ok=True)
    test = os.path.join(args.output_dir, "test")
    shutil.rmtree(test, ignore_errors=True)
    shutil.copytree(os.path.join(args.output_dir, "validation"), test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
