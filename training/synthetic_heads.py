"""Synthetic head slices for training: skull, scalp, random contrasts, bias, noise, resolutions.

usage: python -m training.synthetic_heads --output-dir data/synthetic [--variants 12] [--step 8] [--seed 1337]

Users feed whole heads (skull, scalp, fat, a noisy background), of any contrast,
at in-plane resolutions other than 1 mm; the MNI152 template is one smooth,
skull-stripped T1.  This module makes training slices closer to what users
feed, SynthSR-style: the grey- and white-matter probability maps that ship with
nilearn (the rest of the brain mask is CSF) plus a head built around them
(CSF rim, inner table, marrow, outer table, muscle, fat, skin: shells of random,
smoothly varying thickness) get random intensities per label, mixed by their
partial-volume weights; each slice is then resampled to a random in-plane voxel
size, blurred (partial volume), multiplied by a smooth bias field, given Rician
noise (the background too) and written as an 8-bit PNG.

Only the TRAINING blocks of the embedded sample are used (dataset.sample_slab_ranges:
the bottom and top blocks, away from the validation and test slabs and their gaps); each block
is synthesised on its own, so no test voxel reaches a training slice.  Feed the
output to train.py with --extra-train-dir.  `synthesize_slab` is also used by
tools/proxy_check.py to make held-out heads from the TEST slab.
"""
import os
import sys

import numpy as np
from PIL import Image
from scipy import ndimage

from common.atomic_files import write_atomically
from common.cli import OneLineErrorParser, positive_int
import constants
import dataset

# Labels, in the order of their intensity vectors.
LABELS = ("background", "csf", "grey", "white", "bone", "marrow", "muscle", "fat", "skin")
# Shells around the brain, inside out: (label, thickness range in mm).  Thicknesses of
# an adult head; each varies smoothly over the head.
SHELLS = (("csf", (1.0, 3.0)), ("bone", (1.0, 2.5)), ("marrow", (1.0, 4.0)), ("bone", (1.0, 2.0)),
          ("muscle", (1.0, 3.0)), ("fat", (2.0, 6.0)), ("skin", (1.0, 2.0)))
# Mean intensities per label of common contrasts (background first); drawn with
# jitter half the time, fully random per label the other half (SynthSR).
CONTRASTS = {
    "t1": (0.0, 0.15, 0.45, 0.70, 0.05, 0.60, 0.35, 0.90, 0.50),
    "t2": (0.0, 0.95, 0.55, 0.40, 0.05, 0.50, 0.25, 0.70, 0.45),
    "pd": (0.0, 0.75, 0.70, 0.55, 0.05, 0.60, 0.40, 0.85, 0.60),
    "flair": (0.0, 0.10, 0.60, 0.45, 0.05, 0.40, 0.30, 0.70, 0.50),
}
PRESET_PROBABILITY = 0.5
CONTRAST_JITTER = 0.1
# In-plane voxel size (mm) each slice is resampled to: mostly coarser than the
# template's 1 mm, since the template (a mean of 152 brains) is smoother per
# pixel than one subject's scan.
VOXEL_SIZE_RANGE = (0.8, 1.6)
BLUR_SIGMA_MAX = 0.7            # partial-volume blur after resampling, pixels
BIAS_AMPLITUDE_MAX = 0.35       # smooth multiplicative field, exp(+-0.35) at most
NOISE_RANGE = (0.005, 0.05)     # Rician noise std over the image peak, log-uniform
TEXTURE_MAX = 0.12              # smooth within-label intensity variation (relative)
PEAK_PERCENTILE = 99.8          # the 8-bit export's white point, as a viewer scales a scan
HULL_SMOOTHING_MM = 5.0         # the brain mask's blur that gives the skull's inner surface
HEAD_MARGIN = 24                # voxels of room around the brain for the shells
# Random heads (contrasts, shells) per training block: 12 gave +0.07 dB on the
# real proxy slices over 6 in 40-epoch runs (more steps an epoch, too).
VARIANTS = 12
SLICE_STEP = 8                  # every n-th slice of each orientation (neighbours are near-identical)


def tissue_maps():
    """Grey, white and CSF partial-volume maps (float32 [0, 1]) on the template's 1 mm grid."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    grey = load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    white = load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    grey, white = grey / grey.max(), white / white.max()
    brain = (dataset.template_volume() > 0) | (grey + white > 0.1)
    csf = np.clip(brain - grey - white, 0.0, 1.0) * brain
    return {"grey": grey, "white": white, "csf": csf}


def smooth_field(shape, rng, sigma):
    """Gaussian-smoothed white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def head_weights(maps, rng, pad):
    """Partial-volume weights of every label (dict of arrays) for one block, with a random head around the brain.

    Args:
        maps: grey/white/csf arrays of one block.
        rng: numpy Generator.
        pad: ((before, after),) * 3 voxels added around the block for the shells.
    """
    maps = {name: np.pad(values, pad) for name, values in maps.items()}
    brain = np.clip(maps["grey"] + maps["white"] + maps["csf"], 0.0, 1.0)
    # The skull follows a smooth hull of the brain, not each lobe: CSF fills the space between.
    hull = (ndimage.gaussian_filter(brain, HULL_SMOOTHING_MM) > 0.25) | (brain > 0.5)
    outside = ndimage.distance_transform_edt(~hull).astype(np.float32)
    weights = {name: np.zeros_like(brain) for name in LABELS}
    weights.update(grey=maps["grey"], white=maps["white"], csf=maps["csf"] + hull * (1.0 - brain))
    inner = np.zeros_like(brain)
    coarse = tuple(max(2, n // 8) for n in brain.shape)
    for label, (low, high) in SHELLS:
        variation = ndimage.zoom(rng.uniform(0.0, 1.0, coarse).astype(np.float32),
                                 [n / c for n, c in zip(brain.shape, coarse)], order=1)
        outer = inner + low + (high - low) * variation
        # Soft edges (0.5 mm logistic) give partial volume between shells.
        share = 1.0 / (1.0 + np.exp(-(outside - inner) / 0.5)) - 1.0 / (1.0 + np.exp(-(outside - outer) / 0.5))
        weights[label] += share * (1.0 - brain) * ~hull  # inside the hull it is brain or CSF already
        inner = outer
    weights["background"] = np.clip(1.0 - sum(weights.values()), 0.0, 1.0)
    return weights


def random_contrast(rng):
    """Mean intensity per label: a jittered preset or fully random (background 0, bone dark)."""
    if rng.uniform() < PRESET_PROBABILITY:
        preset = CONTRASTS[rng.choice(sorted(CONTRASTS))]
        means = np.clip(np.asarray(preset) + rng.uniform(-CONTRAST_JITTER, CONTRAST_JITTER, len(LABELS)), 0.0, 1.0)
    else:
        means = rng.uniform(0.0, 1.0, len(LABELS))
        means[LABELS.index("bone")] = rng.uniform(0.0, 0.3)
    means[0] = 0.0
    return means


def synthesize_volume(weights, means, rng):
    """Intensities: each label's mean, with smooth within-label texture, mixed by partial-volume weights."""
    shape = weights["background"].shape
    texture = smooth_field(shape, rng, rng.uniform(1.0, 3.0))
    volume = np.zeros(shape, np.float32)
    for label, mean in zip(LABELS, means):
        if label != "background":
            volume += weights[label] * mean * (1.0 + rng.uniform(0.0, TEXTURE_MAX) * texture)
    return np.clip(volume, 0.0, None)


def bias_field(shape, rng):
    """A smooth multiplicative field, exp of a random low-frequency surface."""
    coarse = rng.standard_normal((4, 4)).astype(np.float32)
    surface = ndimage.zoom(coarse, (shape[0] / 4, shape[1] / 4), order=3)[:shape[0], :shape[1]]
    surface = surface / max(float(np.abs(surface).max()), 1e-6)
    return np.exp(rng.uniform(0.0, BIAS_AMPLITUDE_MAX) * surface)


def centre_fit(plane, rows, cols):
    """The plane centre-cropped or zero-padded (background) to rows x cols."""
    out = np.zeros((rows, cols), plane.dtype)
    h, w = min(rows, plane.shape[0]), min(cols, plane.shape[1])
    top, left = (plane.shape[0] - h) // 2, (plane.shape[1] - w) // 2
    out_top, out_left = (rows - h) // 2, (cols - w) // 2
    out[out_top:out_top + h, out_left:out_left + w] = plane[top:top + h, left:left + w]
    return out


def degrade_plane(plane, rng, size=constants.TARGET_SIZE):
    """One synthetic slice as a user's scan, size x size: resampled, blurred, biased, Rician noise (background too),
    scaled to [0, 1] by its white point."""
    voxel = rng.uniform(*VOXEL_SIZE_RANGE)
    side = int(np.ceil(size * voxel)) + 4  # the field of view that fills size x size pixels after resampling
    plane = centre_fit(plane, side, side)
    if voxel > 1.0:  # anti-alias before making pixels coarser
        plane = ndimage.gaussian_filter(plane, 0.5 * np.sqrt(voxel ** 2 - 1.0))
    plane = centre_fit(np.clip(ndimage.zoom(plane, 1.0 / voxel, order=1), 0.0, None), size, size)
    plane = ndimage.gaussian_filter(plane, rng.uniform(0.0, BLUR_SIGMA_MAX))
    plane = plane * bias_field(plane.shape, rng)
    peak = max(float(np.percentile(plane, PEAK_PERCENTILE)), 1e-6)
    sigma = peak * np.exp(rng.uniform(*np.log(NOISE_RANGE)))
    real, imaginary = rng.normal(plane, sigma), rng.normal(0.0, sigma, plane.shape)
    plane = np.sqrt(real ** 2 + imaginary ** 2)
    return np.clip(plane / max(float(np.percentile(plane, PEAK_PERCENTILE)), 1e-6), 0.0, 1.0)


def block_padding(block_index, n_blocks, margin=HEAD_MARGIN):
    """Room for the shells on every side except the cut face toward the test slab."""
    below_cut = (margin, 0) if block_index == 0 else (0, margin)
    return ((margin, margin), (margin, margin), below_cut if n_blocks > 1 else (margin, margin))


def synthesize_slab(maps, rng, pad, means=None):
    """One random head of a block of tissue maps: its intensity volume (padded) and the contrast used."""
    means = random_contrast(rng) if means is None else np.asarray(means, np.float32)
    return synthesize_volume(head_weights(maps, rng, pad), means, rng), means


def training_blocks(maps):
    """The tissue maps cut to the embedded sample's two training blocks (validation and test slabs and gaps left out)."""
    blocks = dataset.sample_slab_ranges(maps["grey"].shape[2])["train"]
    return [{name: values[:, :, start:stop] for name, values in maps.items()} for start, stop in blocks]


def block_slices(volume, rng, step=SLICE_STEP, min_tissue=0.02):
    """Degraded 8-bit slices of every orientation of one synthetic block, every `step`-th slice."""
    for axis in (0, 1, 2):
        for index in range(int(rng.integers(step)), volume.shape[axis], step):
            plane = np.take(volume, index, axis=axis)
            if (plane > 0.05 * max(float(volume.max()), 1e-6)).mean() < min_tissue:
                continue
            yield axis, index, np.round(degrade_plane(np.rot90(plane), rng) * 255.0).astype(np.uint8)


def write_png(image, path):
    """An 8-bit greyscale PNG, written atomically."""
    write_atomically(path, lambda tmp_path: Image.fromarray(image).save(tmp_path, format="PNG"))


def write_synthetic_heads(output_dir, variants=VARIANTS, step=SLICE_STEP, seed=constants.SEED):
    """Writes `variants` random heads of each training block as PNG slices; returns how many."""
    os.makedirs(output_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    blocks = training_blocks(tissue_maps())
    count = 0
    for variant in range(variants):
        for block_index, block in enumerate(blocks):
            volume, _ = synthesize_slab(block, rng, block_padding(block_index, len(blocks)))
            for axis, index, image in block_slices(volume, rng, step):
                write_png(image, os.path.join(output_dir, f"head{variant:02d}_b{block_index}_a{axis}_{index:03d}.png"))
                count += 1
    return count


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="data/synthetic", help="where the PNG slices go")
    parser.add_argument("--variants", type=positive_int, default=VARIANTS, help="random heads per training block")
    parser.add_argument("--step", type=positive_int, default=SLICE_STEP, help="every n-th slice of each orientation")
    parser.add_argument("--seed", type=int, default=constants.SEED, help="fixes every random draw")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    count = write_synthetic_heads(args.output_dir, args.variants, args.step, args.seed)
    print(f"wrote {count} synthetic head slices in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
