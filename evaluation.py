"""Model versus bicubic: scores over the test split, the comparison figure, and --compare on the user's files."""
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm import tqdm

from common.atomic_files import write_atomically, write_json
import constants
import dataset
import inference
import modules
from scans import volumes


def scores(prediction, target):
    """Per-image PSNR and SSIM as numpy arrays."""
    psnr, ssim = modules.psnr_ssim(prediction, target)
    return psnr.numpy(), ssim.numpy()


# --- The test split ----------------------------------------------------------------

def evaluate_test_split(model, data_dir, batch_size, size, ensemble=1, edges="auto"):
    """Model and bicubic outputs with per-image scores over the whole test split."""
    factor = modules.model_upscale_factor(model)
    if size % factor:
        raise ValueError(f"--target-size {size} is not divisible by the model's upscale factor {factor}")
    test = dataset.load_slices(dataset.list_images(os.path.join(data_dir, "test")), size)
    if len(test.paths) == 0:
        raise ValueError(f"--data-dir {data_dir}: no usable image in test/")
    results = {"paths": test.paths, "model_psnr": [], "bicubic_psnr": [], "model_ssim": [], "bicubic_ssim": []}
    group = batch_size or constants.BATCH_SIZE  # slices read at a time; upscale_stack batches its own way
    batches = dataset.make_eval_dataset(test.images, group, factor)
    total = -(-len(test.paths) // group)
    for low_res, target in tqdm(batches, total=total, desc="evaluating", unit="batch"):
        low_res, target = low_res.numpy(), target.numpy()
        outputs = {"model": inference.upscale_stack(model, low_res[..., 0], batch_size,
                                                           ensemble=ensemble, edges=edges)[..., None],
                   "bicubic": inference.bicubic_upscale(low_res, factor)}
        for name, output in outputs.items():
            psnr, ssim = scores(output, target)
            results[f"{name}_psnr"] += psnr.tolist()
            results[f"{name}_ssim"] += ssim.tolist()
    return test, results


def summarise(results):
    summary = {"n_images": len(results["paths"])}
    for key in ("model_psnr", "bicubic_psnr", "model_ssim", "bicubic_ssim"):
        summary[key] = round(float(np.mean(results[key])), 4)
    return summary


def run_evaluation(model, options):
    """Writes <output_dir>/evaluation.json and multi_comp_<n>.png; returns the summary.

    `options`: predict.py's Options (data_dir, output_dir, batch_size, target_size, figure_images, edges and
    the views of an image's self-ensemble).
    """
    data_dir, output_dir, figure_images = options.data_dir, options.output_dir, options.figure_images
    ensemble, edges = options.views("image"), options.edges
    test, results = evaluate_test_split(model, data_dir, options.batch_size, options.target_size, ensemble, edges)
    summary = summarise(results)
    json_path = os.path.join(output_dir, "evaluation.json")
    write_json(json_path, summary)
    count = min(figure_images, len(test.paths))
    picks = np.linspace(0, len(test.paths) - 1, count).round().astype(int)
    rows = comparison_rows(model, dataset.to_unit_float(test.images[picks]).numpy(),
                           modules.model_upscale_factor(model), ensemble, edges)
    figure_path = os.path.join(output_dir, f"multi_comp_{count}.png")
    save_comparison_figure(rows, figure_path, [os.path.basename(test.paths[i]) for i in picks])
    print(f"{summary['n_images']} test images: model PSNR {summary['model_psnr']:.2f} dB "
          f"(bicubic {summary['bicubic_psnr']:.2f}), SSIM {summary['model_ssim']:.4f} "
          f"(bicubic {summary['bicubic_ssim']:.4f})")
    print(f"wrote {json_path} and {figure_path}")
    return summary


# --- Figures ---------------------------------------------------------------------------

def comparison_rows(model, target, factor, ensemble=1, edges="auto"):
    """(original, bicubic, model) images and their scores for (N, H, W, 1) [0,1] originals."""
    low_res = dataset.downsample(target, factor).numpy()
    outputs = {"bicubic": inference.bicubic_upscale(low_res, factor),
               "model": inference.upscale_stack(model, low_res[..., 0], ensemble=ensemble, edges=edges)[..., None]}
    rows = []
    for i in range(len(target)):
        row = [("original", target[i], None)]
        for name, output in outputs.items():
            psnr, ssim = scores(output[i:i + 1], target[i:i + 1])
            row.append((name, output[i], (float(psnr[0]), float(ssim[0]))))
        rows.append(row)
    return rows


def save_comparison_figure(rows, path, row_labels=None):
    """The seed's figure: one row per image, original / bicubic / model, with PSNR and SSIM.

    Whole slices hide the difference between bicubic and the model, so each
    row also shows one region (the most detailed of the original) enlarged in
    an inset in the panel's corner farthest from it, and marked on the whole slice.
    """
    fig = Figure(figsize=(9, 3.1 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, row in enumerate(rows):
        top, left, side = detailed_region(row[0][1][..., 0])
        for c, (name, image, score) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="yellow", lw=1))
            inset = ax.inset_axes(inset_corner(top, left, side, image.shape))
            inset.imshow(image[top:top + side, left:left + side, 0], cmap="gray", vmin=0.0, vmax=1.0,
                         interpolation="nearest")
            inset.set_xticks([])
            inset.set_yticks([])
            for spine in inset.spines.values():
                spine.set_edgecolor("yellow")
            title = name if score is None else f"{name}\nPSNR {score[0]:.2f} dB  SSIM {score[1]:.3f}"
            if c == 0 and row_labels:
                title = f"{row_labels[r]}\n{title}"
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))


def inset_corner(top, left, side, shape):
    """Inset bounds (axes fraction) in the corner diagonally opposite the region's centre."""
    size = 0.42
    x = 0.0 if left + side / 2 > shape[1] / 2 else 1.0 - size
    y = 1.0 - size if top + side / 2 > shape[0] / 2 else 0.0  # axes y grows upwards, image rows downwards
    return [x, y, size, size]


def detailed_region(image, fraction=constants.INSET_FRACTION):
    """(top, left, side) of the square, `fraction` of the image's shorter side, holding the most gradient energy."""
    side = max(1, int(min(image.shape) * fraction))
    gy, gx = np.gradient(image.astype(np.float64))
    energy = np.pad(np.cumsum(np.cumsum(gx ** 2 + gy ** 2, 0), 1), ((1, 0), (1, 0)))
    sums = energy[side:, side:] - energy[:-side, side:] - energy[side:, :-side] + energy[:-side, :-side]
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return int(top), int(left), side


# --- --compare on the user's high-resolution files ---------------------------------------

def high_res_plane(path, axis):
    """A [0,1] 2D plane from an image (its Y) or a NIfTI volume (middle slice across `axis`)."""
    if volumes.is_nifti(path):
        _, data = volumes.load_volume(path)
        return volumes.middle_plane(data, axis)
    with dataset.open_image(path) as image:
        return dataset.luma_uint8(image).astype(np.float32) / 255.0


def compare_on_input(model, path, out_path, axis, ensemble=1, edges="auto"):
    """Downsamples the file's plane, super-resolves it both ways, writes the figure; returns a score line."""
    factor = modules.model_upscale_factor(model)
    plane = high_res_plane(path, axis)
    height, width = (plane.shape[0] // factor) * factor, (plane.shape[1] // factor) * factor
    minimum = max(11, factor)  # the SSIM window is 11x11
    if min(height, width) < minimum:
        raise ValueError(f"too small to compare ({plane.shape[1]}x{plane.shape[0]}); needs {minimum} pixels a side")
    row = comparison_rows(model, plane[None, :height, :width, None], factor, ensemble, edges)[0]
    save_comparison_figure([row], out_path, [os.path.basename(path)])
    (_, _, (mp, ms)), (_, _, (bp, bs)) = row[2], row[1]
    return f"model PSNR {mp:.2f} dB SSIM {ms:.4f} | bicubic PSNR {bp:.2f} dB SSIM {bs:.4f}"
