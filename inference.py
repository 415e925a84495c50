"""Running a trained ESPCN on the user's data: loading it, and feeding it planes of any size.

Every prediction (images, volumes, --compare, the test split, through-plane)
goes through `upscale_planes`, and benchmark.py times that same function.  It
runs both kinds of model: the in-plane ESPCN (x r along rows and columns) and
the through-plane one (x F along rows only, modules.upscale_factors).

Edges (issue 14's question, settled by measurement; pretrained x4 model,
float32, 2-core AMD EPYC with AVX-512 BF16).  The network pads every
convolution with zeros, and it was trained so: its training crops are
zero-padded by its own "same" convolutions.  So a plane is served *as
trained*, fed as it is, wherever that is not measurably worse:
- on whole held-out slices (black border) it gives what a mirror margin
  gives (33.2847 dB both, largest difference 0.0007 on [0, 1]);
- on crops where tissue touches the border it is better: 29.24 against
  28.95 dB (128x128 crops, 38 slices) and 28.53 against 28.21 (96x96);
- on small crops of tissue the mirror margin is better below about 24 input
  pixels a side (2x2: 31.1 against 27.2 dB; 12x12: 29.16 against 29.05;
  20x20 and 24x24 a tie; 28x28: 29.41 against 29.54; 200 crops a size), as
  the whole plane lies inside or near the receptive radius;
- a flat plane does not stay flat under zero padding at any size: its
  outermost output pixels come back darker by up to 2.6/255 (at 77/255) and
  7.3/255 (at 255) on planes of 6x6 to 128x128, against 0.5 and 1.4/255 with
  the mirror margin, which is the model's own flat response.
Hence the rule (`serves_as_trained`): a plane smaller than
constants.MIRROR_BELOW a side, or whose border ring (receptive radius wide) is
flat at a level above the background, is extended by the network's receptive
radius with its own mirror image (numpy's "symmetric") and that border of the
output is cropped; every other plane is fed as it is.  Serving as trained is
also the least work there is (the network computes only the plane's own
pixels) and the computation other frameworks do, so it is the fastest path on
every CPU measured, AMX included (issue 20); the mirror margin costs 1.34x for
a 64x64 plane, and is taken only by the small and flat planes above.

Size: a plane of more than TILE_SIZE x TILE_SIZE pixels is cut into
overlapping tiles of at most TILE_SIZE a side (tile_grids); each tile
carries a margin of the receptive radius from its neighbours (at the plane's
border: the mirror margin, or nothing when served as trained, exactly as the
whole plane is fed), and only its centre is kept, so the result is the same as
feeding the whole plane at once, with memory bounded by one batch of tiles.
All tiles of a plane have one shape (those at the far border take more of
their neighbour instead of less), so they batch.  Outputs are handed block by
block to a `write` callback, so the caller can store them straight into an
array of the output's own data type.
"""
import os
import zipfile

import numpy as np

from common.tensorflow_env import keras, tf
import constants
import modules


# --- Loading -----------------------------------------------------------------

def load_model(path, precision=constants.PREDICT_PRECISION):
    """Loads a one-channel .keras ESPCN (in-plane) with safe_mode on; ValueError naming the file if it cannot.

    The model is returned rebuilt to compute under `precision`
    (modules.inference_model), as upscale_planes runs it.
    """
    model = read_model_file(path)
    check_is_espcn(model, path)
    return modules.inference_model(model, precision)


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


# --- Feeding planes ----------------------------------------------------------

def tile_grid(length, tile):
    """(start offsets, side) of the fewest tiles of at most `tile` pixels covering `length`, of nearly equal sides.

    Balanced, so that a plane just over a tile is not cut into one full tile
    and one sliver grown to a full tile (300 pixels: 2 tiles of 150, not 256 + 256).
    """
    count = -(-length // tile)
    side = -(-length // count)
    return list(range(0, length, side)), side


def tile_grids(shape, tile):
    """tile_grid for both sides of an (h, w) plane: whole when it holds at most tile x tile pixels.

    Tiles bound memory, so a long thin plane (a through-plane plane of 45 x 288,
    say) goes whole: cut into two 154-wide tiles it ran 27% slower on the 2-core
    EPYC (avx512_bf16), from the margins and the narrower shape.
    """
    if shape[0] * shape[1] <= tile * tile:
        return ([0], shape[0]), ([0], shape[1])
    return tile_grid(shape[0], tile), tile_grid(shape[1], tile)


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


def views_for(model, ensemble):
    """The first `ensemble` of DIHEDRAL_VIEWS; ValueError where the model cannot take that many.

    A through-plane model refines rows only, so only the four views that keep
    rows as rows (the flips) apply to it.
    """
    if ensemble not in (1, 2, 4, 8):
        raise ValueError(f"--ensemble must be 1, 2, 4 or 8, got {ensemble}")
    rows, cols = modules.upscale_factors(model)
    if rows != cols and ensemble > 4:
        raise ValueError(f"a through-plane model averages at most 4 flips, got --ensemble {ensemble}")
    return DIHEDRAL_VIEWS[:ensemble]


def border_ring(plane, width):
    """The values within `width` pixels of the border of an (h, w) plane, flattened."""
    height, columns = plane.shape
    if min(height, columns) <= 2 * width:
        return plane.ravel()
    return np.concatenate([plane[:width].ravel(), plane[-width:].ravel(),
                           plane[width:-width, :width].ravel(), plane[width:-width, -width:].ravel()])


def serves_as_trained(plane, margin):
    """True where `plane` is fed to the network as it is; False where it takes the mirror margin.

    See the module docstring for the measurements: small planes and planes
    whose border ring is flat above the background take the mirror margin.
    """
    if min(plane.shape) < constants.MIRROR_BELOW:
        return False
    ring = border_ring(plane, margin)
    low, high = float(ring.min()), float(ring.max())
    return high - low > constants.FLAT_BORDER_SPAN or high <= constants.BACKGROUND_LEVEL


def tile_window(start, side, margin, extent):
    """(first, size) of the input window of a tile at `start`, inside [0, extent).

    The window reaches `margin` pixels beyond the tile on both sides and has
    side + 2 margin pixels (or all of `extent`, if smaller) for every tile, so
    tiles batch: at the far border it takes more of its neighbour.
    """
    size = min(extent, side + 2 * margin)
    return int(np.clip(start - margin, 0, extent - size)), size


def upscale_planes(model, planes, write, batch_size=None, tile=constants.TILE_SIZE, progress=None,
                   ensemble=1, edges="auto", clip=True):
    """Super-resolves (n, h, w) float planes in [0, 1], batch of tiles by batch of tiles.

    Args:
        model: an ESPCN: in-plane (any upscale factor) or through-plane (rows only).
        planes: array-like of n (h, w) planes in [0, 1], all finite; read one at a time.
        write: called as write(index, top, left, block) for every output block, where `block` is a float32
            (rows, cols) array in [0, 1] (the callback's own: it may change it in place) and top/left are its
            position in the output plane `index`.
        batch_size: model inputs per call (each view of the self-ensemble counts as one); None: as many as
            hold constants.PREDICT_BATCH_PIXELS input pixels.
        tile: planes of more than tile x tile pixels are cut into overlapping tiles of at most this side.
        progress: a tqdm bar advanced by one per finished plane, or None.
        ensemble: 1 (the model once), or 2, 4 or 8: the mean of the model's outputs over that many of
            DIHEDRAL_VIEWS of each tile (self-ensemble, as EDSR's "+" models), at that many times the work;
            at most 4 (the flips) for a through-plane model.
        edges: "auto" (serves_as_trained decides for each plane), "trained" or "mirror" (for every plane:
            a caller that cuts one image into several planes decides once for the whole image).
        clip: outputs clipped to [0, 1] (False: as the network gives them, for a caller that corrects them
            further, as through-plane's data consistency does).
    """
    if edges not in ("auto", "trained", "mirror"):
        raise ValueError(f"--edges must be auto, trained or mirror, got {edges!r}")
    views = views_for(model, ensemble)
    factors = modules.upscale_factors(model)
    margin = receptive_radius(model)
    batch, places = [], []

    def flush():
        outputs = predict_pieces(model, batch, clip)
        for number, (index, top, left, crop, last) in enumerate(places):
            output = mean_of_views(outputs[number * len(views):(number + 1) * len(views)], views)
            write(index, top * factors[0], left * factors[1], output[crop])
            if last and progress is not None:
                progress.update(1)
        batch.clear()
        places.clear()

    for index in range(len(planes)):
        plane = np.asarray(planes[index], np.float32)
        as_trained = serves_as_trained(plane, margin) if edges == "auto" else edges == "trained"
        offset = 0 if as_trained else margin
        source = plane if as_trained else np.pad(plane, margin, mode="symmetric")
        (tops, side_y), (lefts, side_x) = tile_grids(plane.shape, tile)
        corners = [(top, left) for top in tops for left in lefts]
        for number, (top, left) in enumerate(corners):
            rows, cols = min(side_y, plane.shape[0] - top), min(side_x, plane.shape[1] - left)
            first_y, size_y = tile_window(top + offset, side_y, margin, source.shape[0])
            first_x, size_x = tile_window(left + offset, side_x, margin, source.shape[1])
            piece = source[first_y:first_y + size_y, first_x:first_x + size_x]
            skip_y, skip_x = (top + offset - first_y) * factors[0], (left + offset - first_x) * factors[1]
            crop = (slice(skip_y, skip_y + rows * factors[0]), slice(skip_x, skip_x + cols * factors[1]))
            batch.extend(viewed(piece, view) for view in views)
            places.append((index, top, left, crop, number == len(corners) - 1))
            if len(batch) >= (batch_size or max(1, constants.PREDICT_BATCH_PIXELS // piece.size)):
                flush()
    if batch:
        flush()


def predict_pieces(model, pieces, clip=True):
    """Float32 outputs (clipped to [0, 1] if `clip`) for a list of 2D inputs, one model call per input shape."""
    by_shape = {}
    for number, piece in enumerate(pieces):
        by_shape.setdefault(piece.shape, []).append(number)
    outputs = [None] * len(pieces)
    for numbers in by_shape.values():
        batch = np.stack([pieces[n] for n in numbers])[..., None]
        results = (predict_clipped(model, batch) if clip else model_output(model, batch).numpy())[..., 0]
        for number, result in zip(numbers, results):
            outputs[number] = result
    return outputs


def predict_clipped(model, batch):
    """Model output for a float32 (N, h, w, 1) batch, as a float32 array clipped to [0, 1]."""
    return clipped_output(model, batch).numpy()


@tf.function(reduce_retracing=True)
def model_output(model, batch):
    return model(batch, training=False)


@tf.function(reduce_retracing=True)
def clipped_output(model, batch):
    # Clipped inside the graph: one pass fewer over the output than np.clip after
    # Keras' predict_on_batch, whose own per-call overhead is also avoided.
    return tf.clip_by_value(model(batch, training=False), 0.0, 1.0)


def upscale_plane(model, plane, batch_size=None, tile=constants.TILE_SIZE, ensemble=1, edges="auto"):
    """The float32 [0, 1] output for one (h, w) plane in [0, 1] (whole, in memory)."""
    return upscale_stack(model, plane[None], batch_size, tile, ensemble, edges)[0]


def upscale_stack(model, planes, batch_size=None, tile=constants.TILE_SIZE, ensemble=1, edges="auto", clip=True):
    """The float32 outputs for (n, h, w) planes in [0, 1], in memory (upscale_planes' arguments)."""
    rows, cols = modules.upscale_factors(model)
    n, height, width = np.shape(planes)
    out = np.empty((n, height * rows, width * cols), np.float32)

    def write(index, top, left, block):
        out[index, top:top + block.shape[0], left:left + block.shape[1]] = block

    upscale_planes(model, planes, write, batch_size, tile, ensemble=ensemble, edges=edges, clip=clip)
    return out


def bicubic_upscale(low_res, factor):
    """The bicubic baseline for (N, h, w, 1) [0, 1] images, clipped to [0, 1]."""
    size = (low_res.shape[1] * factor, low_res.shape[2] * factor)
    return np.clip(tf.image.resize(low_res, size, method="bicubic").numpy(), 0.0, 1.0)


# --- What the input may hold ---------------------------------------------------

def finite_copy(values):
    """(values with NaN/Inf replaced, mask of NaN, count of NaN, count of +-Inf).

    The rule (docs/reliability.md, "Non-finite values"): NaN is read as the lowest finite
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
