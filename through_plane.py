"""Through-plane super-resolution: thick-slice volumes to fine slices, with a 1-D ESPCN.

Most clinical MRI is 2D multi-slice: fine pixels in the slice plane, thick
slices.  The method is SMORE's idea with the seed's small ESPCN:

- the degradation: a thick slice is a weighted mean of the fine slices it
  covers (`thick_slice_weights`: a box, i.e. the plain mean of F slices with
  no gap, or a Gaussian slice profile);
- the model upsamples rows only (modules.get_model_1d); a pretrained one per
  factor ships in pretrained/, trained by `train.py --through-plane-factor F`;
- per-volume adaptation (`adapt`): the volume's own fine in-plane planes,
  made thick along one in-plane direction, fine-tune the pretrained model for
  the time the volume may take, or until its check crops stop improving;
- inference (`estimate`): every plane that contains the slice axis, in both
  such orientations, with flips, averaged;
- data consistency (`make_consistent`): the estimate is projected onto the
  volumes whose thick slices are exactly the input's, which can only bring it
  closer to the truth when the degradation is the right one;
- the output lies on the exact fine grid: along the slice axis output voxel i
  is centred at input coordinate (i + 0.5) / F - 0.5 (volumes.resampled_affine).

The baseline is cubic B-spline interpolation along the slice axis
(`cubic_spline`), what viewers and scanner consoles do.
"""
import os
import time

import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage

import constants
import inference
import modules
import volumes
from atomic_files import write_atomically, write_json
from tensorflow_env import tf


# --- Slice axis and factor -------------------------------------------------------

def slice_axis_and_factor(zooms, axis=None, factor=None):
    """(slice axis, factor F) of a volume with voxel sizes `zooms`; ValueError in words when there is none.

    The slice axis is the one with the largest voxel size unless given; F is
    round(slice thickness / finest other voxel size) unless given.
    """
    zooms = [float(z) for z in zooms[:3]]
    if axis is None:
        axis = int(np.argmax(zooms)) if max(zooms) > min(zooms) * 1.001 else 2
    if factor is None:
        finest = min(z for k, z in enumerate(zooms) if k != axis)
        factor = int(round(zooms[axis] / finest))
        sizes = " x ".join(f"{z:g}" for z in zooms)
        if factor < 2:
            raise ValueError(f"nearly isotropic (voxel sizes {sizes} mm, slice axis {axis}): no thick slices to "
                             "refine; give --through-plane-factor N to refine it anyway")
        if factor > 8:
            raise ValueError(f"slices {factor}x thicker than the in-plane voxels (voxel sizes {sizes} mm); "
                             "the model refines 2x to 8x: give --through-plane-factor N")
    return axis, int(factor)


def check_volume_shape(shape):
    """ValueError for a volume with a single voxel along any spatial axis: a 2D image, nothing between slices."""
    if min(shape[:3]) < 2:
        raise ValueError(f"a 2D image (shape {tuple(shape)}): through-plane super-resolution needs a 3D volume "
                         "of several slices")


# --- Degradation -------------------------------------------------------------------

def thick_slice_weights(n_thick, factor, profile=constants.SLICE_PROFILE):
    """The (n_thick, n_thick * factor) matrix that makes thick slices from fine ones.

    "box": thick slice j is the mean of fine slices jF .. jF+F-1 (no gap).
    "gaussian": a Gaussian of FWHM F fine slices centred on the same place,
    cut at 1.5 F and renormalised (at the volume's ends too).
    """
    n_fine = n_thick * factor
    fine = np.arange(n_fine)
    centres = np.arange(n_thick) * factor + (factor - 1) / 2.0
    distance = fine[None, :] - centres[:, None]
    if profile == "box":
        weights = (np.abs(distance) < factor / 2.0).astype(np.float64)
    elif profile == "gaussian":
        sigma = factor / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        weights = np.exp(-0.5 * (distance / sigma) ** 2) * (np.abs(distance) <= 1.5 * factor)
    else:
        raise ValueError(f"unknown slice profile {profile!r} (box or gaussian)")
    return weights / weights.sum(axis=1, keepdims=True)


def along_axis(weights, volume, axis):
    """`weights` (m, n) applied along `axis` (length n) of `volume`: that axis becomes length m."""
    moved = np.tensordot(weights, np.moveaxis(volume, axis, 0), axes=(1, 0))
    return np.moveaxis(moved, 0, axis).astype(np.float32)


def make_thick(volume, axis, factor, profile=constants.SLICE_PROFILE):
    """(thick volume, the fine volume cut to a multiple of `factor` slices along `axis`)."""
    n_thick = volume.shape[axis] // factor
    if n_thick < 2:
        raise ValueError(f"{volume.shape[axis]} slices along axis {axis}: too few to make thick slices of {factor}")
    fine = np.take(volume, np.arange(n_thick * factor), axis=axis)
    return along_axis(thick_slice_weights(n_thick, factor, profile), fine, axis), fine


def make_consistent(estimate, thick, axis, factor, profile=constants.SLICE_PROFILE):
    """The estimate projected onto the fine volumes whose thick slices equal `thick` exactly.

    x + W^T (W W^T)^-1 (y - W x) with W the thick-slice matrix: the nearest
    such volume.  The true fine volume is one of them, so the projection never
    moves the estimate away from it (for box slices: each slice's residual
    added to the F fine slices it covers).
    """
    weights = thick_slice_weights(thick.shape[axis], factor, profile)
    correction = np.linalg.solve(weights @ weights.T, weights).T  # W^T (W W^T)^-1, (n_fine, n_thick)
    residual = thick - along_axis(weights, estimate, axis)
    return estimate + along_axis(correction, residual, axis)


# --- Baseline ------------------------------------------------------------------------

def cubic_spline(volume, axis, factor):
    """Cubic B-spline interpolation along `axis` onto the grid `factor` times finer (same world extent).

    scipy's grid_mode maps voxel edges onto voxel edges, so output voxel i is
    centred at input coordinate (i + 0.5) / factor - 0.5, the grid the model
    writes; beyond the end voxels the volume is mirrored.  Interpolation is
    linear in the data, so it is applied as the matrix whose columns are the
    interpolated unit impulses: along the slice axis only, in float64.
    """
    n = volume.shape[axis]
    impulses = np.eye(n)
    columns = [ndimage.zoom(impulses[j], factor, order=3, mode="reflect", grid_mode=True) for j in range(n)]
    return along_axis(np.stack(columns, axis=1), volume.astype(np.float64), axis)


# --- Models ----------------------------------------------------------------------------

def pretrained_path(factor):
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, constants.PRETRAINED_THROUGH_PLANE.format(factor=factor))


def load_model_1d(path, factor=None, precision="float32"):
    """A through-plane ESPCN from a .keras file (safe mode), served in `precision`; ValueError naming the file."""
    model = inference.read_model_file(path)
    found = modules.through_plane_factor(model)
    if found is None:
        raise ValueError(f"--model {path}: not a through-plane model (no DepthToSpace1D layer); "
                         "train one with train.py --through-plane-factor F")
    if factor is not None and found != factor:
        raise ValueError(f"--model {path} refines x{found}, but this volume needs x{factor}")
    return modules.inference_model(model, precision)


class ModelSource:
    """The starting model for a factor: --model if given, else the shipped pretrained one (or none).

    Models are served in `precision` (predict.py's --precision; auto is
    bfloat16 on CPUs with AVX-512 BF16 or AMX).  On the template's --compare
    without adaptation (2-core AMD EPYC with AVX-512 BF16): x4 34.7926 dB in
    bfloat16 against 34.7954 in float32, x3 36.7712 against 36.7684, in
    4.4 / 5.4 s against 8.0 / 9.2 s.
    """

    def __init__(self, model_path=None, precision=constants.PREDICT_PRECISION):
        self.model_path, self.precision = model_path, precision
        self.cache = {}

    def starting_model(self, factor):
        """(model or None when no pretrained model covers `factor`, a word on where it came from)."""
        if factor not in self.cache:
            if self.model_path:
                self.cache[factor] = (load_model_1d(self.model_path, factor, self.precision),
                                      f"--model {self.model_path}")
            elif os.path.isfile(pretrained_path(factor)):
                self.cache[factor] = (load_model_1d(pretrained_path(factor), factor, self.precision),
                                      f"pretrained {constants.PRETRAINED_THROUGH_PLANE.format(factor=factor)}")
            else:
                self.cache[factor] = (None, "no pretrained model for this factor")
        return self.cache[factor]


# --- Per-volume adaptation ----------------------------------------------------------------

class PlaneCrops:
    """Random (thick, fine) training crops from the fine in-plane planes of a [0, 1] volume.

    Each crop is square (a multiple of the factor a side), centred on a tissue
    voxel, turned by one of the 8 flips/90-degree turns, and made thick along
    its rows: the same kind of pair as the planes across the slices will be.
    """

    def __init__(self, planes, factor, patch=constants.ADAPT_PATCH, profile=constants.SLICE_PROFILE, seed=0):
        self.planes, self.factor = planes, factor
        self.size = max(factor, min(patch, *planes.shape[1:]) // factor * factor)
        self.weights = thick_slice_weights(self.size // factor, factor, profile).astype(np.float32)
        tissue = np.argwhere(planes > 0.1)
        self.centres = tissue if len(tissue) else np.argwhere(np.ones(planes.shape, bool))
        self.rng = np.random.default_rng(seed)

    def batch(self, count, rng=None):
        """(thick (count, size/F, size, 1), fine (count, size, size, 1)) float32 arrays, drawn with `rng`
        (default: the crops' own random stream)."""
        rng = self.rng if rng is None else rng
        fine = np.empty((count, self.size, self.size), np.float32)
        for i, (index, row, col) in enumerate(self.centres[rng.integers(len(self.centres), size=count)]):
            top = int(np.clip(row - self.size // 2, 0, self.planes.shape[1] - self.size))
            left = int(np.clip(col - self.size // 2, 0, self.planes.shape[2] - self.size))
            crop = self.planes[index, top:top + self.size, left:left + self.size]
            turn = rng.integers(8)
            crop = np.rot90(crop, turn % 4)
            fine[i] = crop[::-1] if turn >= 4 else crop
        thick = np.einsum("tr,nrc->ntc", self.weights, fine)
        return thick[..., None], fine[..., None]


def adapt(start, planes, factor, *, seconds, settings, precision, progress=None, began=None):
    """The through-plane model fine-tuned for `seconds` on the fine in-plane planes of a [0, 1] volume.

    It trains with train.py's own step (modules.make_train_step) in the CPU's
    best precision (modules.choose_precision("auto"): bfloat16 on CPUs with
    AVX-512 BF16 or AMX, where a step on 16 crops of 64x64 took 26 ms against
    29-50 ms in float32 on the 2-core AMD EPYC).

    Args:
        start: the model to start from (its weights), or None to train from scratch.
        planes: (n, h, w) float32 planes across the slice axis (each fine in both directions).
        factor: the thick-slice factor F.
        seconds: wall time for training; the learning rate decays by a cosine over it (or over
            settings.max_steps, whichever comes first).
        settings: the run's Settings (slice profile and seed of the training crops).
        precision: what the returned model computes in (a --precision value).
        progress: a tqdm bar counting seconds since `began`, or None.
    Training stops early when the model's loss on a fixed set of the volume's
    own crops (drawn with a random stream of their own from the same planes, so
    a check of fit to this volume rather than held-out data) has not
    improved by ADAPT_MIN_GAIN for settings.patience checks of ADAPT_CHECK_STEPS
    steps each; the weights of the best check are kept.

    Returns:
        (model, number of training steps, why it stopped: "validation", "time" or "steps").
    """
    policy = modules.choose_precision("auto")
    model = modules.get_model_1d(factor, dtype=policy)
    if start is not None:
        model.set_weights(start.get_weights())
    base_rate = settings.learning_rate if start is not None else constants.ADAPT_SCRATCH_LEARNING_RATE
    optimizer = modules.adam(base_rate, policy)
    step = modules.make_train_step(model, optimizer, tf.distribute.get_strategy(), jit=False)
    crops = PlaneCrops(planes, factor, profile=settings.profile, seed=settings.seed)
    validation = tuple(tf.constant(array) for array in crops.batch(constants.ADAPT_VALIDATION_CROPS,
                                                                   np.random.default_rng(settings.seed + 1)))
    best, best_weights, stale = float(crop_loss(model, *validation)), model.get_weights(), 0
    began = time.monotonic() if began is None else began
    started, steps = time.monotonic(), 0
    while (elapsed := time.monotonic() - started) < seconds and stale < settings.patience \
            and steps < settings.max_steps:
        done = max(elapsed / seconds, steps / settings.max_steps)  # of whichever bound comes first
        optimizer.learning_rate.assign(base_rate * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * done))))
        step(tuple(tf.constant(array) for array in crops.batch(constants.ADAPT_BATCH_SIZE)))
        steps += 1
        if steps % constants.ADAPT_CHECK_STEPS == 0:
            loss = float(crop_loss(model, *validation))
            if loss < best * (1.0 - constants.ADAPT_MIN_GAIN):
                best, best_weights, stale = loss, model.get_weights(), 0
            else:
                stale += 1
        advance_to(progress, began)
    if steps % constants.ADAPT_CHECK_STEPS and float(crop_loss(model, *validation)) < best:
        best_weights = model.get_weights()  # the steps since the last check (all of them, on a short budget)
    model.set_weights(best_weights)
    why = "validation" if stale >= settings.patience else "steps" if steps >= settings.max_steps else "time"
    return modules.inference_model(model, precision), steps, why


@tf.function(reduce_retracing=True)
def crop_loss(model, thick, fine):
    """Mean squared error of the model on (thick, fine) crops."""
    return tf.reduce_mean(tf.square(tf.cast(model(thick, training=False), tf.float32) - fine))


# --- Inference ---------------------------------------------------------------------------

def estimate(model, volume, axis, factor, flips=constants.THROUGH_PLANE_FLIPS, after_pass=None, edges="auto"):
    """The model's fine volume for a [0, 1] thick volume: every plane containing `axis`, both orientations.

    For each of the two other axes, the planes across it have the slice axis
    as rows; each is refined by in-plane inference's own path
    (inference.upscale_stack: its edges, tiles, batching and self-ensemble of
    `flips` flips), and the estimates of both orientations averaged.
    `after_pass` (if given) is called after each orientation.
    """
    total = None
    for other in [k for k in range(3) if k != axis]:
        planes = np.moveaxis(volume, (other, axis), (0, 1))  # (n, thick rows, fine cols)
        out = inference.upscale_stack(model, planes, ensemble=flips, edges=edges, clip=False)
        out = np.moveaxis(out, (0, 1), (other, axis))
        total = out if total is None else total + out
        if after_pass is not None:
            after_pass()
    return total / 2


def inference_seconds(model, volume, axis, flips, edges="auto", sample=4):
    """The time `estimate` will take on `volume`, from timing `sample` of its own planes in each orientation.

    Each orientation's planes are timed on the real plane shape (after a
    warm-up call on the same shape, which builds its graph), so the estimate
    holds for thin or wide planes alike; a fixed small sample overestimated
    real heads' inference about threefold.
    """
    total = 0.0
    for other in [k for k in range(3) if k != axis]:
        planes = np.moveaxis(volume, (other, axis), (0, 1))
        picked = np.ascontiguousarray(planes[np.linspace(0, len(planes) - 1, min(sample, len(planes))).astype(int)])
        inference.upscale_stack(model, picked, ensemble=flips, edges=edges)
        began = time.monotonic()
        inference.upscale_stack(model, picked, ensemble=flips, edges=edges)
        total += (time.monotonic() - began) * len(planes) / len(picked)
    return total


# --- One volume ------------------------------------------------------------------------------

class Settings:
    """How one run refines volumes: the flags of predict.py --through-plane, in one place."""

    def __init__(self, adapt=True, seconds=constants.THROUGH_PLANE_SECONDS, profile=constants.SLICE_PROFILE,
                 flips=constants.THROUGH_PLANE_FLIPS, seed=0, edges=constants.EDGES,
                 max_steps=constants.ADAPT_MAX_STEPS, learning_rate=constants.ADAPT_LEARNING_RATE,
                 patience=constants.ADAPT_PATIENCE):
        self.adapt, self.seconds, self.profile, self.flips, self.seed = adapt, seconds, profile, flips, seed
        self.edges = edges  # inference.upscale_planes' edges
        self.max_steps, self.learning_rate = max_steps, learning_rate
        self.patience = patience  # adaptation's early stop, in checks (tools/adaptation_steps.py turns it off)


def advance_to(progress, began):
    """Moves a bar counting seconds up to the time elapsed since `began` (never past its end)."""
    if progress is not None:
        progress.update(max(0, min(progress.total, int(time.monotonic() - began)) - progress.n))


def prepare_model(source, volume, axis, factor, settings, began, progress=None):
    """(model in the source's precision, a note on how it was made) for a [0, 1] thick volume.

    Adaptation gets the time left of `settings.seconds` (counted from `began`)
    after the measured cost of inference and a margin for writing.
    """
    start, origin = source.starting_model(factor)
    if not settings.adapt:
        if start is None:
            raise ValueError(f"no pretrained model refines x{factor} (shipped: x2 to x6); drop --no-adapt to "
                             "train one on this volume, or give --model")
        return start, origin
    reference = start if start is not None else modules.get_model_1d(factor)
    expected = inference_seconds(reference, volume, axis, settings.flips, settings.edges)
    budget = settings.seconds - (time.monotonic() - began) - 1.2 * expected - 2.0
    if budget < 1.0:
        if start is None:
            raise ValueError(f"no time left to train a x{factor} model within --through-plane-seconds "
                             f"{settings.seconds:g}")
        return start, f"{origin}, not adapted: no time left within --through-plane-seconds {settings.seconds:g}"
    planes = np.ascontiguousarray(np.moveaxis(volume, axis, 0))
    began_adapting = time.monotonic()
    model, steps, stop = adapt(start, planes, factor, seconds=budget, settings=settings,
                               precision=source.precision, progress=progress, began=began)
    spent = time.monotonic() - began_adapting
    why = {"validation": "its own validation crops stopped improving", "time": f"the {budget:.0f} s left",
           "steps": f"--adapt-max-steps {settings.max_steps}"}[stop]
    return model, f"{origin}, adapted to this volume for {spent:.0f} s ({steps} steps; stopped by {why})"


def refine(model, volume, axis, factor, settings, progress=None, began=None):
    """The fine volume for a [0, 1] thick volume: the model's estimate made consistent with the input."""
    fine = estimate(model, volume, axis, factor, settings.flips,
                    None if progress is None else (lambda: advance_to(progress, began)), settings.edges)
    return make_consistent(fine, volume, axis, factor, settings.profile)


def super_resolve_through_plane(source, image, data, axis, factor, settings, progress=None):
    """Every 3D frame of `data` refined along `axis`, as stored values in the input's data type.

    NaN/Inf voxels are handled as in-plane (inference.finite_copy); a 4D series
    is done volume by volume with the model adapted on its first volume (one
    acquisition, one contrast).  `progress` is a bar counting seconds of
    settings.seconds.  Returns (output array, note, NaN count, Inf count).
    """
    began = time.monotonic()
    series = data if data.ndim == 4 else data[..., None]
    shape = [size * (factor if k == axis else 1) for k, size in enumerate(data.shape[:3])] + list(data.shape[3:])
    out = volumes.output_array(image, shape)
    out_series = out if data.ndim == 4 else out[..., None]
    counts, model, note = [0, 0], None, ""
    for t in range(series.shape[3]):
        volume, nan_mask, n_nan, n_inf = inference.finite_copy(series[..., t])
        counts[0], counts[1] = counts[0] + n_nan, counts[1] + n_inf
        low, high = volumes.robust_range(volume)
        scaled = (volume - low) / (high - low)
        if model is None:
            model, note = prepare_model(source, scaled, axis, factor, settings, began, progress)
        refined = refine(model, scaled, axis, factor, settings, progress, began)
        values = np.clip(refined * (high - low) + low, float(volume.min()), float(volume.max()))
        if nan_mask is not None and out.dtype.kind == "f":
            values[np.repeat(nan_mask, factor, axis=axis)] = np.nan
        out_series[..., t] = volumes.to_stored(values, image, out.dtype)
    return out, note, counts[0], counts[1]


# --- --compare --through-plane: thick slices made from a fine volume ----------------------------

def scores(estimate, truth, axis):
    """PSNR (dB, over the whole volume) and mean SSIM (over the planes across the first other axis) of [0, 1] volumes."""
    estimate = np.clip(estimate, 0.0, 1.0)
    mse = float(np.mean((estimate - truth) ** 2))
    psnr = min(constants.PSNR_CAP_DB, 10.0 * np.log10(1.0 / mse)) if mse > 0 else constants.PSNR_CAP_DB
    other = min(k for k in range(3) if k != axis)
    planes = [np.moveaxis(v, (other, axis), (0, 1))[..., None].astype(np.float32) for v in (estimate, truth)]
    ssim = float(np.mean(modules.ssim(tf.constant(planes[0]), tf.constant(planes[1])).numpy()))
    return {"psnr": round(psnr, 4), "ssim": round(ssim, 4)}


def compare_on_volume(source, path, out_path, axis, factor, settings, progress=None):
    """Thick slices from the fine volume in `path`, refined by the model and by cubic spline, scored against it.

    Writes the figure `out_path` (one plane across the slices: thick input,
    cubic spline, model, original) and the scores beside it as .json; returns
    the scores.
    """
    image, data = volumes.load_volume(path)
    check_volume_shape(data.shape)
    volume = inference.finite_copy(data if data.ndim == 3 else data[..., 0])[0]
    zooms = image.header.get_zooms()[:3]
    axis = slice_axis_and_factor(zooms, axis, 1)[0]
    low, high = volumes.robust_range(volume)
    thick, fine = make_thick(np.clip((volume - low) / (high - low), 0.0, 1.0), axis, factor, settings.profile)
    began = time.monotonic()
    model, note = prepare_model(source, thick, axis, factor, settings, began, progress)
    outputs = {"cubic spline": cubic_spline(thick, axis, factor),
               "model": refine(model, thick, axis, factor, settings, progress, began)}
    results = {"file": os.path.basename(path), "slice_axis": axis, "factor": factor, "model_note": note,
               **{f"{name.replace(' ', '_')}_{key}": value for name, output in outputs.items()
                  for key, value in scores(output, fine, axis).items()}}
    save_reformat_figure(thick, outputs, fine, axis, factor, results, out_path)
    write_json(os.path.splitext(out_path)[0] + ".json", results)
    return results


def save_reformat_figure(thick, outputs, fine, axis, factor, results, path):
    """One plane across the slices (the middle one across the first other axis), side by side."""
    other = min(k for k in range(3) if k != axis)
    index = fine.shape[other] // 2
    plane_axis = axis - 1 if other < axis else axis  # the slice axis inside the plane
    panels = [(f"thick input (x{factor}, nearest)", np.repeat(np.take(thick, index, other), factor, plane_axis))]
    for name, output in outputs.items():
        key = name.replace(" ", "_")
        panels.append((f"{name}\nPSNR {results[key + '_psnr']:.2f} dB  SSIM {results[key + '_ssim']:.3f}",
                       np.take(output, index, other)))
    panels.append(("original", np.take(fine, index, other)))
    fig = Figure(figsize=(3.2 * len(panels), 3.6))
    for ax, (title, plane) in zip(fig.subplots(1, len(panels)), panels):
        ax.imshow(np.rot90(np.clip(plane, 0, 1)), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
