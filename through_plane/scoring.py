"""--compare --through-plane: thick slices made from a fine volume, refined, and scored against it.

The model's output and cubic B-spline's are scored as tools/through_plane_check.py scores predict.py's
(PSNR over the whole volume in real units, SSIM over planes), with a figure of one plane across the slices.
"""
import os
import time

import numpy as np
from matplotlib.figure import Figure

import inference
import modules
from common import measures, slice_profiles
from common.atomic_files import write_atomically, write_json
from common.tensorflow_env import tf
from scans import volumes
from through_plane import slice_geometry
from through_plane.refine import check_volume_shape, cubic_spline, prepare_model, refine


def scores(estimate, truth, axis):
    """PSNR (dB, over the whole volume, peak = the truth's max - min) and mean SSIM (over the planes across the
    first other axis, both scaled by the truth's range) of volumes in real units."""
    low, span = float(truth.min()), float(truth.max() - truth.min()) or 1.0
    psnr = measures.psnr(estimate, truth, span)
    other = min(k for k in range(3) if k != axis)
    planes = [np.moveaxis((v - low) / span, (other, axis), (0, 1))[..., None].astype(np.float32)
              for v in (estimate, truth)]
    ssim = float(np.mean(modules.ssim(tf.constant(planes[0]), tf.constant(planes[1])).numpy()))
    return {"psnr": round(psnr, 4), "ssim": round(ssim, 4)}


def compare_on_volume(source, path, out_path, axis, factor, settings, progress=None):
    """Thick slices from the fine volume in `path`, refined by the model and by cubic spline, scored against it.

    Thick slice j is the mean of fine slices jF .. jF+F-1 (the slice profile
    of settings, no gap); outputs are scored as tools/through_plane_check.py
    scores predict.py's (real units, peak = the reference's max - min, both
    clipped to the thick volume's range as predict.py clips its output).
    Writes the figure `out_path` (one plane across the slices: thick input,
    cubic spline, model, original) and the scores beside it as .json; returns
    the scores.
    """
    image, data = volumes.load_volume(path)
    check_volume_shape(data.shape)
    truth = inference.finite_copy(data if data.ndim == 3 else data[..., 0])[0]
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    axis = slice_geometry.slice_axis(zooms, axis)
    thick, fine = slice_profiles.make_thick(truth, axis, factor, profile=settings.profile)
    geometry = slice_geometry.Geometry(axis, thick.shape, tuple(z * (factor if k == axis else 1)
                                                                for k, z in enumerate(zooms)),
                                       zooms[axis] * factor, f"{factor} fine slices averaged", factor, zooms[axis])
    low, high = volumes.robust_range(thick)
    scaled = (thick - low) / (high - low)
    began = time.monotonic()
    working = slice_geometry.resample(scaled, geometry.working_shape())
    prepared = prepare_model(source, working, geometry, settings, began, progress)
    model = refine(prepared.model, scaled, geometry, prepared.settings, progress, began, working) * (high - low) + low
    outputs = {name: np.clip(output, thick.min(), thick.max()) for name, output in
               (("cubic spline", cubic_spline(thick, axis, fine.shape[axis])), ("model", model))}
    results = {"file": os.path.basename(path), "slice_axis": axis, "factor": factor, "model_note": prepared.note,
               **{f"{name.replace(' ', '_')}_{key}": value for name, output in outputs.items()
                  for key, value in scores(output, fine, axis).items()}}
    save_reformat_figure(thick, outputs, fine, axis, factor, results, out_path)
    write_json(os.path.splitext(out_path)[0] + ".json", results)
    return results


def save_reformat_figure(thick, outputs, fine, axis, factor, results, path):
    """One plane across the slices (the middle one across the first other axis), side by side, in the truth's range."""
    other = min(k for k in range(3) if k != axis)
    index = fine.shape[other] // 2
    plane_axis = axis - 1 if other < axis else axis  # the slice axis inside the plane
    low, high = volumes.robust_range(fine)
    panels = [(f"thick input (x{factor}, nearest)", np.repeat(np.take(thick, index, other), factor, plane_axis))]
    for name, output in outputs.items():
        key = name.replace(" ", "_")
        panels.append((f"{name}\nPSNR {results[key + '_psnr']:.2f} dB  SSIM {results[key + '_ssim']:.3f}",
                       np.take(output, index, other)))
    panels.append(("original", np.take(fine, index, other)))
    fig = Figure(figsize=(3.2 * len(panels), 3.6))
    for ax, (title, plane) in zip(fig.subplots(1, len(panels)), panels):
        ax.imshow(np.rot90(plane), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
