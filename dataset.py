"""Brain-MRI slices in, (low-resolution, high-resolution) training pairs out.

Reads an ADNI-style tree <data-dir>/{train,test}/<class>/*.jpeg|jpg|png, turns
every slice into the Y (luma) channel on a black TARGET_SIZE square, and makes
(input, target) pairs where the input is the target shrunk by area averaging.
Also builds the embedded sample dataset from nilearn's MNI152 template.

Reading rule for images of other sizes or modes (documented in docs/data.md):
colour is reduced to Y (ITU-R 601 luma, the Y of YUV); 16-bit and float images
are scaled by their own maximum into 8 bits; a side shorter than the target is
padded with black at the bottom/right (ADNI's 240 rows get 16 black rows, as
the seed did), a longer side is centre-cropped.  Files that cannot be decoded
are skipped with one warning each.
"""
import os
import random
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from common.atomic_files import write_folder_atomically
from common import slice_profiles
from common.tensorflow_env import tf
import constants


@dataclass
class Split:
    """Decoded slices of one split: uint8 (N, size, size) and their files."""

    images: np.ndarray
    paths: list


# --- Reading images ----------------------------------------------------------

def list_images(split_dir):
    """Sorted image files under <split_dir>/<class>/ (any class names)."""
    paths = []
    for root, _, files in os.walk(split_dir):
        for name in files:
            if name.lower().endswith(constants.IMAGE_SUFFIXES):
                paths.append(os.path.join(root, name))
    return sorted(paths)


def luma_uint8(image):
    """The Y channel of a PIL image as uint8, whatever its mode."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        finite = np.isfinite(values)
        peak = float(values[finite].max()) if finite.any() else 0.0
        values = np.where(finite, values, 0.0) if not finite.all() else values  # NaN/Inf read as black
        scaled = values / peak * 255.0 if peak > 0 else np.zeros_like(values)
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    if image.mode in ("P", "PA", "RGBA", "LA", "CMYK", "1"):
        image = image.convert("RGB")
    # PIL's "L" conversion is ITU-R 601-2 luma: the Y of YUV (0.299, 0.587, 0.114).
    return np.asarray(image.convert("L"), dtype=np.uint8)


def open_image(path):
    """The fully decoded PIL image in `path`; ValueError with the reason if unusable.

    PIL's decompression-bomb limit stands (twice MAX_IMAGE_PIXELS is refused);
    its warning for images between the two limits is silenced, since the
    callers check that what they make of the image fits in memory.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise ValueError("not an image file that PIL can identify") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot be read ({getattr(error, 'strerror', None) or error})") from None
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        image.close()
        raise ValueError(f"not a readable image ({error})") from None
    return image


def read_slice(path):
    """Decodes one image file to a uint8 Y array; ValueError if unusable."""
    with open_image(path) as image:
        return luma_uint8(image)


def pad_or_crop(image, size):
    """Pads with black at the bottom/right, or centre-crops, to size x size."""
    height, width = image.shape
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    image = image[top:top + size, left:left + size]
    out = np.zeros((size, size), dtype=image.dtype)
    out[:image.shape[0], :image.shape[1]] = image
    return out


def tiles_of(image, size):
    """Non-overlapping size x size tiles covering an image (edge tiles padded)."""
    rows = max(1, -(-image.shape[0] // size))
    cols = max(1, -(-image.shape[1] // size))
    return [pad_or_crop(image[r * size:(r + 1) * size, c * size:(c + 1) * size], size)
            for r in range(rows) for c in range(cols)]


def load_slices(paths, size=constants.TARGET_SIZE, progress=True, tile=False):
    """Decodes, pads and reduces to Y every usable file, once.

    Unusable files get one warning each and are left out.  With tile=True a
    large image gives all its size x size tiles instead of its centre.
    """
    images, kept = [], []
    for path in tqdm(paths, desc="reading slices", unit="img", disable=not progress, leave=False):
        try:
            luma = read_slice(path)
            pieces = tiles_of(luma, size) if tile else [pad_or_crop(luma, size)]
            images += pieces
            kept += [path] * len(pieces)
        except ValueError as error:  # once per file: slices are decoded once, not per epoch
            print(f"warning: skipping {path}: {error}", file=sys.stderr)
    stack = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return Split(stack, kept)


def load_extra_images(folder, size=constants.TARGET_SIZE):
    """Every image under `folder` (train.py's --extra-train-dir), tiled into training slices (training only,
    never validation); ValueError naming the flag if none is usable."""
    extra = load_slices(list_images(folder), size, tile=True)
    if not extra.paths:
        raise ValueError(f"--extra-train-dir {folder}: no usable images")
    print(f"{len(extra.paths)} extra training tiles from {len(set(extra.paths))} images in {folder}")
    return extra


def group_of(path):
    """The group a slice file belongs to: its name up to the last '_', or the whole name without one.

    ADNI slices are named <subject>_<slice>.jpeg, so a group is one subject's
    volume; all its slices go to the same side of the validation split.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem.rpartition("_")[0] or stem


def split_train_validation(paths, fraction=constants.VALIDATION_SPLIT, seed=constants.SEED):
    """(training, validation) paths: a seeded `fraction` of the groups (group_of) held out whole.

    Neighbouring slices of one volume are near-copies; splitting by file would
    put them on both sides and make validation measure memory, not
    generalisation.  With a single group nothing can be held out: validation is empty.
    """
    groups = sorted({group_of(path) for path in paths})
    random.Random(seed).shuffle(groups)
    n_val = int(round(len(groups) * fraction))
    n_val = min(max(n_val, 1), len(groups) - 1) if len(groups) > 1 else 0
    held_out = set(groups[:n_val])
    return (sorted(p for p in paths if group_of(p) not in held_out),
            sorted(p for p in paths if group_of(p) in held_out))


def prepare_data_dir(data_dir):
    """Builds (or rebuilds an outdated) embedded sample if data_dir is the default, then checks the tree.

    An explicitly given data dir that does not exist is an error, never a reason to build.
    """
    if data_dir == constants.DATA_DIR:
        ensure_default_data(data_dir)
    check_data_dir(data_dir)


def validation_source(data_dir):
    """'folder' when <data_dir>/validation/ holds the validation slices, else 'groups' (carved from train/)."""
    return "folder" if os.path.isdir(os.path.join(data_dir, "validation")) else "groups"


def train_validation_paths(data_dir, fraction=constants.VALIDATION_SPLIT, seed=constants.SEED):
    """(training, validation) files: validation/ when the tree has one, else whole groups of train/."""
    train_paths = list_images(os.path.join(data_dir, "train"))
    if validation_source(data_dir) == "folder":
        return train_paths, list_images(os.path.join(data_dir, "validation"))
    train_paths, val_paths = split_train_validation(train_paths, fraction, seed)
    if not val_paths and train_paths:
        print(f"warning: --data-dir {data_dir}: every file in train/ is in one group (its name up to the last "
              f"'_'), so none is left for validation; name files <subject>_<slice>.<ext> or add a validation/ "
              f"folder", file=sys.stderr)
    return train_paths, val_paths


def load_train_validation(data_dir, fraction=constants.VALIDATION_SPLIT, seed=constants.SEED,
                          size=constants.TARGET_SIZE, progress=True):
    """The decoded training and validation slices of data_dir (see train_validation_paths)."""
    train_paths, val_paths = train_validation_paths(data_dir, fraction, seed)
    return load_slices(train_paths, size, progress), load_slices(val_paths, size, progress)


def check_data_dir(data_dir):
    """Raises ValueError naming what is missing from an AD_NC-style tree."""
    if not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir {data_dir}: no such directory")
    for split in ("train", "test"):
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise ValueError(f"--data-dir {data_dir}: no {split}/ folder (expected {split}/<class>/*.png|jpg)")
        if not list_images(split_dir):
            raise ValueError(f"--data-dir {data_dir}: no images in {split}/")
    validation_dir = os.path.join(data_dir, "validation")
    if os.path.isdir(validation_dir) and not list_images(validation_dir):
        raise ValueError(f"--data-dir {data_dir}: no images in validation/ (remove it to split train/ instead)")


# --- Pairs -------------------------------------------------------------------

def downsample(target, factor=constants.UPSCALE_FACTOR):
    """Area (box) downsampling of (..., H, W, C) by an integer factor."""
    height, width = tf.shape(target)[-3] // factor, tf.shape(target)[-2] // factor
    return tf.image.resize(target, (height, width), method="area")


def make_pair(target, factor=constants.UPSCALE_FACTOR):
    """(input, target): the [0,1] Y target and its area-downsampled input."""
    return downsample(target, factor), target


def make_gapped_thick_pair(target, factor, thickness_ratios, seed):
    """make_thick_pair with the slice thickness / spacing drawn per batch from `thickness_ratios` (with `seed`).

    Clinical 2D scans leave gaps (5 mm slices 6 mm apart); a model that has
    seen thick rows of several thicknesses starts per-volume adaptation
    nearer the one it meets.
    """
    n_thick = target.shape[-3] // factor
    target = target[:, :n_thick * factor]
    stack = tf.constant(np.stack([slice_profiles.regular_weights(n_thick, factor, ratio)
                                  for ratio in thickness_ratios]).astype(np.float32))
    pick = tf.random.stateless_uniform([], seed, 0, len(thickness_ratios), dtype=tf.int32)
    return tf.einsum("tr,nrwc->ntwc", stack[pick], target), target


def make_thick_pair(target, factor, thickness_ratio=1.0):
    """(thick, fine) for through-plane training: thick rows every `factor` rows of (N, H, W, C) fine ones.

    The project's one thick-slice operator (slice_profiles.regular_weights):
    a box `thickness_ratio` x `factor` rows thick (1: no gap, the mean of the
    `factor` rows it covers).  The rows are first cut to a multiple of
    `factor`, so the fine target is cut too; their number must be static.
    """
    n_thick = target.shape[-3] // factor
    target = target[:, :n_thick * factor]
    weights = tf.constant(slice_profiles.regular_weights(n_thick, factor, thickness_ratio).astype(np.float32))
    return tf.einsum("tr,nrwc->ntwc", weights, target), target


def to_unit_float(images):
    """uint8 (..., H, W) -> float32 (..., H, W, 1) in [0, 1]."""
    return tf.cast(images, tf.float32)[..., None] / 255.0


def tissue_boxes(images, threshold=12):
    """Per image (top, bottom, left, right) of pixels brighter than threshold."""
    boxes = []
    for image in images:
        rows, cols = np.nonzero(image.max(axis=1) > threshold)[0], np.nonzero(image.max(axis=0) > threshold)[0]
        if len(rows) == 0:
            boxes.append((0, image.shape[0] - 1, 0, image.shape[1] - 1))
        else:
            boxes.append((rows[0], rows[-1], cols[0], cols[-1]))
    return np.asarray(boxes, dtype=np.int32)


def crop_at_tissue(images, boxes, patch, seed):
    """One patch x patch crop per (N, S, S) image whose centre lies inside its tissue box.

    Batched: the crops are gathered by index, one op for the whole batch.
    """
    size = tf.shape(images)[1]
    boxes = tf.cast(boxes, tf.float32)
    centre = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed)
    cy = boxes[:, 0] + centre[:, 0] * (boxes[:, 1] - boxes[:, 0])
    cx = boxes[:, 2] + centre[:, 1] * (boxes[:, 3] - boxes[:, 2])
    top = tf.clip_by_value(tf.cast(cy, tf.int32) - patch // 2, 0, size - patch)
    left = tf.clip_by_value(tf.cast(cx, tf.int32) - patch // 2, 0, size - patch)
    offsets = tf.range(patch)
    rows = tf.gather(images, top[:, None] + offsets, axis=1, batch_dims=1)
    return tf.gather(rows, left[:, None] + offsets, axis=2, batch_dims=1)


def random_dihedral(targets, seed):
    """Each (N, S, S, C) image flipped and/or transposed at random: all 8 flips/90-degree turns, uniformly."""
    draws = tf.random.stateless_uniform([3, tf.shape(targets)[0], 1, 1, 1], seed) < 0.5
    targets = tf.where(draws[0], tf.reverse(targets, [2]), targets)
    targets = tf.where(draws[1], tf.reverse(targets, [1]), targets)
    return tf.where(draws[2], tf.transpose(targets, [0, 2, 1, 3]), targets)


def augment_target(targets, seed):
    """Random flips, 90-degree turns, contrast inversion, intensity scale/gamma and noise.

    Batched over (N, S, S, 1) square targets, with independent draws per image.
    Everything is applied to the high-resolution target, before the input is
    made from it, so (input, target) stay an exact area-downsampling pair.
    Contrast inversion inside the tissue turns the T1 template into a
    T2/PD-like image (bright fluid, dark white matter); noise goes on tissue
    only, so a black background stays exactly black.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    targets = random_dihedral(targets, seeds[0])
    draw = tf.random.stateless_uniform([4, tf.shape(targets)[0], 1, 1, 1], seeds[1])
    tissue = tf.cast(targets > 0.02, targets.dtype)
    targets = tf.where(draw[3] < constants.INVERT_PROBABILITY, tissue * (1.05 - targets), targets)
    low_gamma, high_gamma = constants.GAMMA_RANGE
    gamma = low_gamma * (high_gamma / low_gamma) ** draw[1]        # log-uniform
    targets = tf.where(targets > 0, tf.exp(gamma * tf.math.log(targets)), 0.0)  # pow, 2x faster here
    low_peak, high_peak = constants.INTENSITY_SCALE_RANGE
    targets = targets * (low_peak + (high_peak - low_peak) * draw[0])
    sigma = constants.NOISE_MAX * draw[2] ** 2                     # mostly small
    noise = tf.random.stateless_normal(tf.shape(targets), seeds[2]) * sigma
    return tf.clip_by_value(targets + noise * tissue, 0.0, 1.0)


def quantize_input(low_res):
    """Rounds to 8-bit levels: users feed 8-bit PNGs at prediction time."""
    return tf.round(low_res * 255.0) / 255.0


def effective_patch(patch, size, factor):
    """The crop size actually used: a multiple of factor, 0 (whole slices) if none fits."""
    patch = patch if patch and patch < size else 0
    patch -= patch % factor
    return patch if patch >= factor else 0


def without_autotune(data, parallel=constants.PIPELINE_PARALLEL_BATCHES):
    """The dataset with tf.data's autotuner off.

    Its background optimisation stalled every other pass over a dataset by
    ~1 s on a 2-core machine (measured on the validation set); fixed
    parallelism and prefetch of a few whole batches keep the model fed.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = parallel
    return data.with_options(options)


def make_training_dataset(images, batch_size, *, factor=constants.UPSCALE_FACTOR, patch=constants.PATCH_SIZE,
                          patches_per_image=constants.PATCHES_PER_IMAGE, augment=constants.AUGMENT,
                          seed=constants.SEED, epochs=1, first_epoch=0,
                          parallel=constants.PIPELINE_PARALLEL_BATCHES, thick_slices=False, thickness_ratios=(1.0,)):
    """Shuffled, augmented (input, target) batches from uint8 slices, `epochs` epochs in a row.

    With thick_slices, inputs are made by make_thick_pair (rows only) for the
    through-plane model instead of area downsampling in both directions, each
    batch's slices as thick as one of `thickness_ratios` x their spacing
    (make_gapped_thick_pair; (1.0,): no gap).

    An epoch is len(images) x patches_per_image crops (1 per slice with whole
    slices) in full batches, the remainder dropped; epoch e is shuffled and
    augmented from (seed, e) alone, so a run resumed at `first_epoch` sees the
    same data as one that never stopped.  Decoding, padding and the Y
    conversion were done once by load_slices; the per-epoch work (crop,
    augment, downsample) runs on whole batches, so each op runs once per batch
    instead of once per crop (0.85 -> 0.5 s of CPU an epoch on 2 cores, time
    the training step would otherwise lose).
    """
    patch = effective_patch(patch, images.shape[1], factor)
    n_examples = len(images) * (patches_per_image if patch else 1)
    images_t, boxes_t = tf.constant(images), tf.constant(tissue_boxes(images))

    def batches_of_epoch(epoch):
        epoch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)
        order = tf.argsort(tf.random.stateless_uniform([n_examples], epoch_seed))
        batches = tf.data.Dataset.from_tensor_slices(order % len(images)).batch(batch_size, drop_remainder=True)
        return batches.enumerate().map(
            lambda step, indices: (indices, tf.random.experimental.stateless_fold_in(epoch_seed, step + 1)))

    def batch_of_pairs(indices, batch_seed):
        seeds = tf.random.experimental.stateless_split(batch_seed, 2)
        slices = tf.gather(images_t, indices)
        if patch:
            slices = crop_at_tissue(slices, tf.gather(boxes_t, indices), patch, seeds[0])
        targets = to_unit_float(slices)
        if augment:
            targets = augment_target(targets, seeds[1])
        if not thick_slices:
            low_res, targets = make_pair(targets, factor)
        elif tuple(thickness_ratios) == (1.0,):
            low_res, targets = make_thick_pair(targets, factor)
        else:
            low_res, targets = make_gapped_thick_pair(targets, factor, thickness_ratios,
                                                      tf.random.experimental.stateless_fold_in(batch_seed, 7))
        return (quantize_input(low_res) if augment else low_res), targets

    data = tf.data.Dataset.range(first_epoch, first_epoch + epochs).flat_map(batches_of_epoch)
    return without_autotune(data.map(batch_of_pairs, num_parallel_calls=parallel).prefetch(parallel), parallel)


def make_eval_dataset(images, batch_size, factor=constants.UPSCALE_FACTOR, thick_slices=False):
    """(input, target) batches of whole slices, in file order, no randomness (thick_slices: as above)."""
    pair = make_thick_pair if thick_slices else make_pair
    data = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    data = data.map(lambda batch: pair(to_unit_float(batch), factor))
    return without_autotune(data.prefetch(constants.PIPELINE_PARALLEL_BATCHES))


# --- Embedded sample ---------------------------------------------------------

def template_volume():
    """The MNI152 T1 template (1 mm) shipped inside nilearn, as float [0, 1]."""
    from nilearn.datasets import load_mni152_template

    volume = load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    return np.clip(volume / volume.max(), 0.0, 1.0)


def sample_slab_ranges(depth, test_fraction=constants.SAMPLE_TEST_FRACTION,
                       validation_fraction=constants.SAMPLE_VALIDATION_FRACTION, gap=constants.SAMPLE_GAP_SLICES):
    """Axial index ranges (start, stop) of the sample's splits: {"train": [...], "validation": [...], "test": [...]}.

    From the bottom: training, gap, validation, gap, test, gap, validation,
    gap, training.  The test slab is the central `test_fraction` of the
    height (where it always was, so held-out figures stay comparable); a
    validation slab of `validation_fraction` of the height lies on either
    side of it.  The gaps keep every slice of a split away from the others.
    """
    n_test = max(1, int(round(depth * test_fraction)))
    n_val = max(1, int(round(depth * validation_fraction)))
    start = (depth - n_test) // 2
    stop = start + n_test
    below_val = (start - gap - n_val, start - gap)
    above_val = (stop + gap, stop + gap + n_val)
    return {"train": [(0, below_val[0] - gap), (above_val[1] + gap, depth)],
            "validation": [below_val, above_val], "test": [(start, stop)]}


def slice_to_image(plane, size=constants.SAMPLE_SIZE):
    """A 2D slice (rows=anterior..posterior etc.) centred on a black W x H canvas, 8-bit."""
    width, height = size
    plane = np.rot90(plane)  # radiological display: superior/anterior at the top
    canvas = np.zeros((height, width), dtype=np.uint8)
    h, w = min(plane.shape[0], height), min(plane.shape[1], width)
    top, left = (height - h) // 2, (width - w) // 2
    src_top, src_left = (plane.shape[0] - h) // 2, (plane.shape[1] - w) // 2
    pixels = np.round(plane[src_top:src_top + h, src_left:src_left + w] * 255.0)
    canvas[top:top + h, left:left + w] = pixels.astype(np.uint8)
    return canvas


def sample_slices(volume, min_tissue=0.02):
    """(split, orientation, key, image) for every informative slice.

    Test and validation: the axial slices of their slabs.  Train: axial,
    coronal and sagittal slices of the two blocks at the bottom and top (gaps
    between), so no training pixel comes from, or neighbours, a voxel of the
    other splits.
    """
    for split, ranges in sample_slab_ranges(volume.shape[2]).items():
        orientations = {"axial": 2, "coronal": 1, "sagittal": 0} if split == "train" else {"axial": 2}
        for part_no, (low, high) in enumerate(ranges):
            part = volume[:, :, low:high]
            for name, axis in orientations.items():
                for index in range(part.shape[axis]):
                    plane = np.take(part, index, axis=axis)
                    if (plane > 0.05).mean() >= min_tissue:
                        yield split, name, f"{part_no}{index:03d}", slice_to_image(plane)


# Version of the sample's layout, written to <data-dir>/SAMPLE_VERSION.  1 (no
# marker) split validation from train/ by file, so validation slices were
# neighbours of training slices; 2 has validation slabs of its own.
SAMPLE_VERSION = 2
SAMPLE_MARKER = "SAMPLE_VERSION"


def build_sample_dataset(data_dir, replace=False):
    """Writes the embedded MNI152 sample in AD_NC layout (plus validation/); returns counts.

    It is built in a private temporary folder and renamed into place, so it
    appears whole or not at all, even with several processes building at once.
    With replace=True an existing data_dir (an outdated sample) is moved aside
    first and deleted after.
    """
    counts = {"train": 0, "validation": 0, "test": 0}

    def write(folder):
        for split, orientation, key, image in sample_slices(template_volume()):
            os.makedirs(os.path.join(folder, split, orientation), exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, split, orientation, f"mni152_{orientation}_{key}.png"))
            counts[split] += 1
        with open(os.path.join(folder, SAMPLE_MARKER), "w") as marker:
            marker.write(f"{SAMPLE_VERSION}\n")

    write_folder_atomically(data_dir, write, replace=replace)
    return counts


def sample_version(data_dir):
    """The embedded sample's layout version in data_dir: its marker, 1 for an unmarked
    tree of the sample's files only, None for anything else (a user's data is never rebuilt)."""
    try:
        with open(os.path.join(data_dir, SAMPLE_MARKER)) as marker:
            return int(marker.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    names = [os.path.basename(path) for path in list_images(data_dir)]
    return 1 if names and all(name.startswith("mni152_") for name in names) else None


def ensure_default_data(data_dir):
    """Builds the embedded sample at the default data dir when it is absent, or rebuilds an outdated one."""
    if os.path.isdir(data_dir):
        version = sample_version(data_dir)
        if version is None or version >= SAMPLE_VERSION:
            return
        print(f"{data_dir} holds the embedded sample of an older layout (version {version}, whose validation "
              f"slices neighboured training slices): rebuilding it ...")
    else:
        print(f"{data_dir} not found: building the embedded sample from nilearn's MNI152 T1 template ...")
    counts = build_sample_dataset(data_dir, replace=os.path.isdir(data_dir))
    print(f"built {counts['train']} training, {counts['validation']} validation and {counts['test']} test slices "
          f"(256x240 PNG, AD_NC layout plus validation/) in {data_dir}")
