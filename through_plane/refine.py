"""Through-plane super-resolution: thick-slice volumes to fine slices, with a 1-D network (ESPCN or quality).

Most clinical MRI is 2D multi-slice: fine pixels in the slice plane, thick
slices.  The method is SMORE's idea with the seed's small ESPCN:

- the degradation: a thick slice is the fine signal weighted by its slice
  profile (common/slice_profiles.py: a box or Gaussian of the slice thickness, at
  centres one spacing apart, gaps included);
- the geometry (slice_geometry.py): the network refines by a whole factor F
  on a working grid whose in-plane voxels are spacing / F (an axis within
  1.2x of that keeps its own); its estimate is resampled onto the output grid;
- the model upsamples rows only (modules.get_model_1d); a pretrained one per
  factor ships in pretrained/, trained by `train.py --through-plane-factor F`
  and served by model_source.py;
- per-volume adaptation (adaptation.py): the volume's own fine in-plane planes,
  made thick along one in-plane direction by the acquisition's own profile,
  fine-tune the pretrained model for a number of steps fixed by the volume
  (or until its check crops stop improving); the time budget only caps it;
- inference (`estimate`): every plane that contains the slice axis, in both
  such orientations, with flips, averaged;
- data consistency (`make_consistent`): the estimate is projected onto the
  volumes whose thick slices are exactly the input's, which can only bring it
  closer to the truth when the degradation is the right one;
- the output keeps the input's world extent: along the slice axis, of n input
  and m output slices, output voxel i is centred at input coordinate
  (i + 0.5) n / m - 0.5 (volumes.resampled_affine).

The baseline is cubic B-spline interpolation along the slice axis
(`cubic_spline`), what viewers and scanner consoles do; scoring.py scores
against it (--compare --through-plane).
"""
import copy
import time

import numpy as np

import constants
import inference
import modules
from common import slice_profiles
from scans import volumes
from through_plane import slice_geometry
from through_plane.adaptation import adapt, adaptation_steps, advance_to


# --- Shape, degradation, baseline ----------------------------------------------------

def check_volume_shape(shape):
    """ValueError for a volume with a single voxel along any spatial axis: a 2D image, nothing between slices."""
    if min(shape[:3]) < 2:
        raise ValueError(f"a 2D image (shape {tuple(shape)}): through-plane super-resolution needs a 3D volume "
                         "of several slices")


def make_consistent(estimate, thick, axis, weights):
    """The estimate projected onto the fine volumes whose thick slices (`weights` @ fine) equal `thick` exactly.

    x + W^T (W W^T)^-1 (y - W x) with W the thick-slice matrix: the nearest
    such volume.  The true fine volume is one of them, so the projection never
    moves the estimate away from it (for box slices with no gap: each slice's
    residual added to the fine slices it covers).
    """
    residual = thick - slice_profiles.along_axis(weights, estimate, axis)
    return estimate + slice_profiles.along_axis(slice_profiles.consistency_matrix(weights), residual, axis)


def cubic_spline(volume, axis, n_out):
    """Cubic B-spline interpolation along `axis` onto `n_out` voxels over the same world extent (float64 math).

    What viewers and scanner consoles do; scipy's grid_mode maps voxel edges
    onto voxel edges (slice_geometry.resampling_matrix), the grid the model
    writes; beyond the end voxels the volume is mirrored.
    """
    matrix = slice_geometry.resampling_matrix(volume.shape[axis], n_out)
    return volume.astype(np.float32) if matrix is None else \
        slice_profiles.along_axis(matrix, volume.astype(np.float64), axis)


# --- Inference ---------------------------------------------------------------------------

def estimate(model, volume, axis, settings, after_pass=None):
    """The model's fine volume for a [0, 1] thick volume: every plane containing `axis`, both orientations.

    For each of the two other axes, the planes across it have the slice axis
    as rows; each is refined by in-plane inference's own path
    (inference.upscale_stack: its edges, tiles, batching and self-ensemble of
    settings.flips flips), and the estimates of both orientations averaged.
    `after_pass` (if given) is called after each orientation.
    """
    total = None
    for other in [k for k in range(3) if k != axis]:
        planes = np.moveaxis(volume, (other, axis), (0, 1))  # (n, thick rows, fine cols)
        out = inference.upscale_stack(model, planes, settings.batch_size, ensemble=settings.flips,
                                      edges=settings.edges, clip=False)
        out = np.moveaxis(out, (0, 1), (other, axis))
        total = out if total is None else total + out
        if after_pass is not None:
            after_pass()
    return total / 2


def inference_seconds(model, volume, axis, settings, sample=4):
    """The time `estimate` will take on `volume`, from timing `sample` of its own planes in each orientation.

    Each orientation's planes are timed on the real plane shape (after a
    warm-up call on the same shape, which builds its graph), so the estimate
    holds for thin or wide planes alike.  Only the time cap uses it.
    """
    total = 0.0
    for other in [k for k in range(3) if k != axis]:
        planes = np.moveaxis(volume, (other, axis), (0, 1))
        picked = np.ascontiguousarray(planes[np.linspace(0, len(planes) - 1, min(sample, len(planes))).astype(int)])
        inference.upscale_stack(model, picked, settings.batch_size, ensemble=settings.flips, edges=settings.edges)
        began = time.monotonic()
        inference.upscale_stack(model, picked, settings.batch_size, ensemble=settings.flips, edges=settings.edges)
        total += (time.monotonic() - began) * len(planes) / len(picked)
    return total


# --- One volume ------------------------------------------------------------------------------

class Settings:
    """How one run refines volumes: the flags of predict.py --through-plane, in one place."""

    def __init__(self, adapt=True, seconds=constants.THROUGH_PLANE_SECONDS, profile=constants.SLICE_PROFILE,
                 flips=None, seed=constants.ADAPT_SEED, edges=constants.EDGES, steps=None,
                 learning_rate=constants.ADAPT_LEARNING_RATE, patience=constants.ADAPT_PATIENCE, batch_size=None,
                 keep=None):
        self.adapt, self.seconds, self.profile, self.flips, self.seed = adapt, seconds, profile, flips, seed
        self.edges = edges  # inference.upscale_planes' edges
        self.steps, self.learning_rate = steps, learning_rate  # flips and steps: None = the network's default
        self.patience = patience  # adaptation's early stop, in checks (tools/adaptation_steps.py turns it off)
        self.batch_size = batch_size  # --batch-size: inference inputs per batch and crops per adaptation step
        self.keep = keep  # the share of adaptation's weight change kept; None = the network's default

    @classmethod
    def from_options(cls, options):
        """The settings of predict.py's Options: its --through-plane flags (None: the network's preset)."""
        return cls(adapt=options.adapt, seconds=options.through_plane_seconds, profile=options.slice_profile,
                   flips=options.ensemble, edges=options.edges, steps=options.adapt_steps,
                   learning_rate=options.adapt_learning_rate, batch_size=options.batch_size,
                   keep=options.adapt_keep)

    def for_network(self, network, ratio=None):
        """These settings with the network's own flips, adaptation steps and kept share where no flag set them.

        From constants.NETWORK_PRESETS: the quality network costs several times
        the ESPCN a pass and a step, so it has defaults of its own that keep a
        head inside the clinical time budget, and keeps part of its adaptation,
        its "adapt_keep_wide" share on widely spaced slices (a spacing / pixel
        `ratio` of at least constants.WIDE_RATIO).
        """
        presets = constants.NETWORK_PRESETS[network]
        wide = ratio is not None and ratio >= constants.WIDE_RATIO
        resolved = copy.copy(self)
        resolved.flips = presets["flips"] if self.flips is None else self.flips
        resolved.steps = presets["adapt_steps"] if self.steps is None else self.steps
        resolved.keep = presets["adapt_keep_wide" if wide else "adapt_keep"] if self.keep is None else self.keep
        return resolved


class Prepared:
    """The model a volume is refined with, the settings for its network, and what a user is told about it."""

    def __init__(self, model, settings, note, warning=None, steps=0, kept=None):
        self.model, self.settings, self.note, self.warning, self.steps = model, settings, note, warning, steps
        self.kept = kept  # the share of adaptation's weight change kept (None: not adapted from a pretrained model)


def prepare_model(source, working, geometry, settings, began, progress=None):
    """The model for a [0, 1] volume on its working grid: the starting one, adapted to the volume.

    Adaptation takes adaptation_steps(...) steps; the time budget
    (settings.seconds from `began`, less the measured cost of inference and a
    margin for writing) only caps it, with a warning.
    """
    factor = geometry.factor
    start, origin = source.starting_model(factor)
    settings = settings.for_network(modules.network_of(start) if start is not None else "espcn", geometry.ratio)
    fallback = None
    if start is None:
        fallback = (f"no shipped model refines x{factor} (shipped: x{constants.THROUGH_PLANE_FACTORS[0]} to "
                    f"x{constants.THROUGH_PLANE_FACTORS[1]}); a x{factor} model is trained from scratch on this "
                    "volume alone, which gains far less")
    if not settings.adapt:
        if start is None:
            raise ValueError(f"{fallback.split(';')[0]}: drop --no-adapt to train one on this volume, or give "
                             "--model")
        return Prepared(start, settings, origin)
    reference = start if start is not None else modules.get_model_1d(factor)
    deadline = began + settings.seconds - 1.2 * inference_seconds(reference, working, geometry.axis, settings) - 2.0
    steps = adaptation_steps(int(np.prod(working.shape)) * factor, settings)
    planes = np.ascontiguousarray(np.moveaxis(working, geometry.axis, 0))
    began_adapting = time.monotonic()
    model, done, stop = adapt(start, planes, factor, geometry.thickness / geometry.spacing, steps=steps,
                              deadline=deadline, settings=settings, precision=source.precision,
                              progress=progress, began=began)
    spent = time.monotonic() - began_adapting
    why = {"validation": "its own validation crops stopped improving", "time": "the time budget",
           "steps": f"its {steps} steps"}[stop]
    warning = fallback
    if stop == "time":
        warning = inference.join_warnings(fallback, f"adaptation cut short at {done} of {steps} steps by "
                                                    f"--through-plane-seconds {settings.seconds:g}: the output "
                                                    "depends on this machine's speed and load")
    kept = f", {settings.keep:g} of the change kept" if start is not None and settings.keep != 1.0 else ""
    note = f"{origin}, adapted to this volume for {spent:.0f} s ({done} steps; stopped by {why}{kept})"
    return Prepared(model, settings, note, warning, done, settings.keep if start is not None else None)


def refine(model, volume, geometry, settings, progress=None, began=None, working=None):
    """The output-grid volume for a [0, 1] thick volume (input grid), made consistent with the input.

    The volume goes onto the working grid (geometry.working_zooms: in-plane
    axes more than 1.2x from geometry.working_pixel resampled to it), the model refines its slices there, the estimate
    goes onto the output grid (the input's in-plane voxels, the output's
    slices) with the in-plane detail the working grid could not hold
    (detail_finer_than_working), and there it is projected onto the volumes
    whose thick slices are exactly the input's (make_consistent).  `working`:
    the volume already on the working grid, when the caller has it.
    """
    if working is None:
        working = slice_geometry.resample(volume, geometry.working_shape())
    fine = estimate(model, working, geometry.axis, settings,
                    None if progress is None else (lambda: advance_to(progress, began)))
    fine = slice_geometry.resample(fine, geometry.output_shape()) + detail_finer_than_working(volume, working, geometry)
    return make_consistent(fine, volume, geometry.axis, geometry.output_weights(settings.profile))


def detail_finer_than_working(volume, working, geometry):
    """What the input loses on its way to the working grid and back, on the output grid (0 on the same grid).

    A working grid coarser in-plane than the input (0.43 mm zero-filled
    pixels under 6 mm slices refined x4 on a 1.5 mm grid) loses the finest
    in-plane detail on the way there and back; a finer one (2 mm pixels
    under 5 mm slices at x4) changes a little on the way (B-spline up, box
    mean down).  Axes within 1.2x of the working voxel keep their own and
    lose nothing.  What the thick slices lose that
    way is known; spread along the slices by cubic B-spline, as the baseline
    spreads whole slices, it comes back smooth across the slices.  Data
    consistency alone would put it back too, but as a staircase: each thick
    slice's share on each of its fine slices.
    """
    if working.shape == volume.shape:
        return 0.0
    lost = volume - slice_geometry.resample(working, volume.shape)
    return slice_geometry.resample(lost, geometry.output_shape())  # along the slices: cubic_spline's B-spline


def scaled_and_working(volume, geometry):
    """(volume scaled by its robust range into [0, 1], that on the working grid, the range (low, high))."""
    low, high = volumes.robust_range(volume)
    scaled = (volume - low) / (high - low)
    return scaled, slice_geometry.resample(scaled, geometry.working_shape()), (low, high)


def super_resolve_through_plane(source, image, data, geometry, settings, progress=None):
    """Every 3D frame of `data` refined along geometry.axis onto the output grid, as stored values.

    NaN/Inf voxels are handled as in-plane (inference.finite_copy); a 4D series
    is done volume by volume with the model adapted on its first volume (one
    acquisition, one contrast).  `progress` is a bar counting seconds of
    settings.seconds.  Returns (output array, Prepared, NaN count, Inf count).
    """
    began = time.monotonic()
    series = data if data.ndim == 4 else data[..., None]
    out = volumes.output_array(image, list(geometry.output_shape()) + list(data.shape[3:]))
    out_series = out if data.ndim == 4 else out[..., None]
    counts, prepared = [0, 0], None
    for t in range(series.shape[3]):
        volume, nan_mask, n_nan, n_inf = inference.finite_copy(series[..., t])
        counts[0], counts[1] = counts[0] + n_nan, counts[1] + n_inf
        scaled, working, (low, high) = scaled_and_working(volume, geometry)
        if prepared is None:
            prepared = prepare_model(source, working, geometry, settings, began, progress)
        refined = refine(prepared.model, scaled, geometry, prepared.settings, progress, began, working)
        del working
        values = np.clip(refined * (high - low) + low, float(volume.min()), float(volume.max()))
        if nan_mask is not None and out.dtype.kind == "f":
            values[nearest_mask(nan_mask, geometry)] = np.nan
        out_series[..., t] = volumes.to_stored(values, image, out.dtype)
    return out, prepared, counts[0], counts[1]


def nearest_mask(mask, geometry):
    """A mask of the input grid carried onto the output grid: each output slice takes its nearest input slice's."""
    n, m = geometry.shape[geometry.axis], geometry.output_slices()
    return np.take(mask, volumes.nearest_indices(n, m), axis=geometry.axis)
