"""Running a trained ESPCN on the user's data: loading it, and feeding it planes of any size.

Every prediction predict.py makes (images, volumes, --compare, the test split)
goes through `upscale_planes`, and benchmark.py times that same function.

Edges: the network pads each convolution with zeros, so a small image fed as
it is comes out darker along its border (a flat 1x1 image of 77 came out at
27-51).  Each plane is therefore first extended by the network's receptive
radius with its own mirror image, edge pixels repeated (numpy's "symmetric"),
and the matching border of the output is cropped away: a flat image stays
flat (77 -> 76.7-77.3 before rounding).  Measured with the model shipped when
this was chosen: the held-out split's mean PSNR is unchanged (33.5653 dB with zero, "edge" or
"symmetric" padding, its slices have black borders); on 128x128 centre crops
of those slices, where tissue touches the border, zero padding gives 29.38 dB,
"symmetric" 29.17, "edge" 28.58 and "reflect" 27.49: the model has learnt the
zero-padded borders of its training crops, and "symmetric" is the padding
closest to that which keeps flat images flat.

Speed: load_model rebuilds the network with "valid" padding, so it computes
only the pixels that are kept (each convolution trims its radius from the
margin) instead of convolving the whole padded plane and cropping: the same
output bit for bit, and a 64x64 plane costs 1.10x its own pixels' work
instead of 1.34x (74x74).  Any "same"-padded ESPCN (a model being trained)
is also accepted, and its output is cropped.

Size: a plane larger than TILE_SIZE is cut into overlapping tiles; each tile
carries a margin of the receptive radius from its neighbours (or the mirror
padding at the plane's border), and only its centre is kept, so the result is
the same as feeding the whole plane at once, with memory bounded by one batch
of tiles.  Outputs are handed block by block to a `write` callback, so the
caller can store them straight into an array of the output's own data type.
"""
import os
import zipfile

import numpy as np

import constants
import modules
from tensorflow_env import keras, tf


# --- Loading -----------------------------------------------------------------

def load_model(path, precision=constants.PREDICT_PRECISION):
    """Loads a one-channel .keras ESPCN with safe_mode on; ValueError naming the file if it cannot.

    The model is returned rebuilt as upscale_planes runs it: computing under
    `precision`, with "valid" padding (see modules.inference_model), so its
    input must carry a margin of receptive_radius pixels on every side.
    """
    model = read_model_file(path)
    check_is_espcn(model, path)
    return modules.inference_model(model, precision, padding="valid")


def read_model_file(path):
    """Any .keras model, loaded with safe_mode on; ValueError naming the file if it cannot."""
    if not os.path.isfile(path):
        raise ValueError(f"--model {path}: no such file")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(f"--model {path}: not a .keras model file")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # corrupt archives fail in many ways inside Keras
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--model {path}: cannot be loaded ({reason[:200]})") from None
    return model


def check_is_espcn(model, path):
    """ValueError unless `model` maps one channel to one channel through a DepthToSpace layer."""
    try:
        modules.model_upscale_factor(model)
    except ValueError:
        raise ValueError(f"--model {path}: not an ESPCN model (it has no DepthToSpace layer)") from None
    inputs, outputs = model.input_shape, model.output_shape
    if not (isinstance(inputs, tuple) and len(inputs) == 4 and inputs[-1] == 1 and outputs[-1] == 1):
        raise ValueError(f"--model {path}: not a one-channel ESPCN (input {inputs}, output {outputs}); "
                         "this tool super-resolves the Y (luma) channel only")


def receptive_radius(model):
    """Input pixels on each side that one output pixel depends on (5 for the seed's 5-3-3-3 convolutions)."""
    return sum((layer.kernel_size[0] - 1) // 2 for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D))


def trims_margin(model):
    """True for a "valid"-padded model, whose output already lacks the margin of its input."""
    return model.get_layer("conv1").padding == "valid"


# --- Feeding planes ----------------------------------------------------------

def tile_grid(length, tile):
    """(start offsets, side) of the fewest tiles of at most `tile` pixels covering `length`, of nearly equal sides.

    Balanced, so that a plane just over a tile is not cut into one full tile
    and one sliver grown to a full tile (300 pixels: 2 tiles of 150, not 256 + 256).
    """
    count = -(-length // tile)
    side = -(-length // count)
    return list(range(0, length, side)), side


# The flips and quarter turns of the self-ensemble, as (quarter turns, mirrored): the first
# two and four keep a tile's shape; the last four turn it.
DIHEDRAL_VIEWS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))


def viewed(image, view):
    """`image` mirrored left-right (if view[1]), then turned view[0] quarter turns."""
    turns, mirrored = view
    return np.rot90(image[:, ::-1] if mirrored else image, turns)


def unviewed(image, view):
    """The inverse of `viewed`."""
    turns, mirrored = view
    image = np.rot90(image, -turns)
    return image[:, ::-1] if mirrored else image


def mean_of_views(outputs, views):
    """The mean of a tile's outputs for each of `views`, each turned back first."""
    if len(views) == 1:
        return outputs[0]
    return np.mean([unviewed(output, view) for output, view in zip(outputs, views)], axis=0)


def upscale_planes(model, planes, write, batch_size=None, tile=constants.TILE_SIZE, progress=None,
                   ensemble=1):
    """Super-resolves (n, h, w) float planes in [0, 1], batch of tiles by batch of tiles.

    Args:
        model: an ESPCN (any upscale factor).
        planes: array-like of n (h, w) planes in [0, 1], all finite; read one at a time.
        write: called as write(index, top, left, block) for every output block, where `block` is a float32
            (rows, cols) array in [0, 1] and top/left are its position in the output plane `index`.
        batch_size: model inputs per call (each view of the self-ensemble counts as one); None: as many as
            hold constants.PREDICT_BATCH_PIXELS input pixels.
        tile: the largest tile side in input pixels; larger planes are cut into overlapping tiles.
        progress: a tqdm bar advanced by one per finished plane, or None.
        ensemble: 1 (the model once), or 2, 4 or 8: the mean of the model's outputs over that many of
            DIHEDRAL_VIEWS of each tile (self-ensemble, as EDSR's "+" models), at that many times the work.
    """
    if ensemble not in (1, 2, 4, 8):
        raise ValueError(f"--ensemble must be 1, 2, 4 or 8, got {ensemble}")
    factor = modules.model_upscale_factor(model)
    margin = receptive_radius(model)
    skip = 0 if trims_margin(model) else margin * factor  # output pixels of the margin to crop
    views = DIHEDRAL_VIEWS[:ensemble]
    batch, places = [], []

    def flush():
        outputs = predict_pieces(model, batch)
        for number, (index, top, left, rows, cols, last) in enumerate(places):
            output = mean_of_views(outputs[number * ensemble:(number + 1) * ensemble], views)
            write(index, top * factor, left * factor, output[skip:skip + rows * factor, skip:skip + cols * factor])
            if last and progress is not None:
                progress.update(1)
        batch.clear()
        places.clear()

    for index in range(len(planes)):
        plane = np.asarray(planes[index], np.float32)
        height, width = plane.shape
        (tops, side_y), (lefts, side_x) = tile_grid(height, tile), tile_grid(width, tile)
        padded = np.pad(plane, margin, mode="symmetric")
        corners = [(top, left) for top in tops for left in lefts]
        for number, (top, left) in enumerate(corners):
            rows, cols = min(side_y, height - top), min(side_x, width - left)
            piece = padded[top:top + rows + 2 * margin, left:left + cols + 2 * margin]
            # Edge tiles are extended to the common tile shape so that they batch; what is added lies
            # beyond the margin and never reaches the kept centre.
            if (rows, cols) != (side_y, side_x):
                piece = np.pad(piece, ((0, side_y - rows), (0, side_x - cols)), mode="edge")
            batch.extend(viewed(piece, view) for view in views)
            places.append((index, top, left, rows, cols, number == len(corners) - 1))
            if len(batch) >= (batch_size or max(1, constants.PREDICT_BATCH_PIXELS // piece.size)):
                flush()
    if batch:
        flush()


def predict_pieces(model, pieces):
    """Clipped float32 outputs for a list of 2D inputs, one model call per input shape (turned views differ)."""
    by_shape = {}
    for number, piece in enumerate(pieces):
        by_shape.setdefault(piece.shape, []).append(number)
    outputs = [None] * len(pieces)
    for numbers in by_shape.values():
        results = predict_clipped(model, np.stack([pieces[n] for n in numbers])[..., None])[..., 0]
        for number, result in zip(numbers, results):
            outputs[number] = result
    return outputs


def predict_clipped(model, batch):
    """Model output for a float32 (N, h, w, 1) batch, as a float32 array clipped to [0, 1]."""
    return clipped_output(model, batch).numpy()


@tf.function(reduce_retracing=True)
def clipped_output(model, batch):
    # Clipped inside the graph: one pass fewer over the output than np.clip after
    # Keras' predict_on_batch, whose own per-call overhead is also avoided.
    return tf.clip_by_value(model(batch, training=False), 0.0, 1.0)


def upscale_plane(model, plane, batch_size=None, tile=constants.TILE_SIZE, ensemble=1):
    """The float32 [0, 1] output for one (h, w) plane in [0, 1] (whole, in memory)."""
    return upscale_stack(model, plane[None], batch_size, tile, ensemble)[0]


def upscale_stack(model, planes, batch_size=None, tile=constants.TILE_SIZE, ensemble=1):
    """The float32 [0, 1] outputs for (n, h, w) planes in [0, 1], in memory."""
    factor = modules.model_upscale_factor(model)
    n, height, width = np.shape(planes)
    out = np.empty((n, height * factor, width * factor), np.float32)

    def write(index, top, left, block):
        out[index, top:top + block.shape[0], left:left + block.shape[1]] = block

    upscale_planes(model, planes, write, batch_size, tile, ensemble=ensemble)
    return out


def bicubic_upscale(low_res, factor):
    """The bicubic baseline for (N, h, w, 1) [0, 1] images, clipped to [0, 1]."""
    size = (low_res.shape[1] * factor, low_res.shape[2] * factor)
    return np.clip(tf.image.resize(low_res, size, method="bicubic").numpy(), 0.0, 1.0)


# --- What the input may hold ---------------------------------------------------

def finite_copy(values):
    """(values with NaN/Inf replaced, mask of NaN, count of NaN, count of +-Inf).

    The rule (README, "Non-finite values"): NaN is read as the lowest finite
    value (the background, in MRI), +Inf as the highest and -Inf as the lowest.
    ValueError if no value is finite.
    """
    values = np.asarray(values)
    if values.dtype.kind != "f":
        return values, None, 0, 0
    finite = np.isfinite(values)
    if finite.all():
        return values, None, 0, 0
    if not finite.any():
        raise ValueError("no finite value in the data (all NaN or infinite)")
    low, high = float(values[finite].min()), float(values[finite].max())
    nan = np.isnan(values)
    n_nan, n_inf = int(nan.sum()), int((~finite).sum() - nan.sum())
    clean = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    return clean, (nan if n_nan else None), n_nan, n_inf


def put_back_nan(block, nan_mask, top, left, factor):
    """Sets NaN in an output `block` (at top, left of the output plane) wherever its input pixel was NaN.

    `nan_mask` is the input plane's mask (finite_copy's); each input pixel
    covers factor x factor output pixels.
    """
    rows = np.arange(top, top + block.shape[0]) // factor
    cols = np.arange(left, left + block.shape[1]) // factor
    block[nan_mask[np.ix_(rows, cols)]] = np.nan


def non_finite_warning(n_nan, n_inf, nan_kept):
    """The one-line warning for a file with NaN/Inf values, or None."""
    if not (n_nan or n_inf):
        return None
    parts = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else ""]
    where = "NaN again where the input was NaN" if nan_kept else "the format cannot hold NaN"
    return (f"{' and '.join(p for p in parts if p)} value(s) read as the lowest/highest finite value; "
            f"output finite elsewhere ({where})")


def join_warnings(*warnings):
    """The warnings that are not None or empty, as one line; None if there are none."""
    present = [text for text in warnings if text]
    return "; ".join(present) if present else None


def available_memory_bytes():
    """MemAvailable from /proc/meminfo, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_output_fits(n_bytes, what="the output"):
    """ValueError, saying how large it would be, if `n_bytes` would not fit in this machine's free memory."""
    available = available_memory_bytes()
    if available is not None and n_bytes * constants.OUTPUT_MEMORY_FACTOR > available:
        raise ValueError(f"{what} would take {n_bytes / 2 ** 30:.1f} GiB, more than this machine's free memory "
                         f"({available / 2 ** 30:.1f} GiB) allows")
