"""Super-resolve brain-MRI slices x4 with a trained ESPCN.

usage:
  python predict.py [--data-dir DIR] [--output-dir DIR] [--model PATH]
      Evaluates the model against bicubic on the whole test split and writes
      <output-dir>/evaluation.json and the comparison figure multi_comp_5.png.
  python predict.py --input PATH [PATH ...] --output-dir DIR [--model PATH]
      Super-resolves the user's own low-resolution images (PNG, JPEG, BMP,
      TIFF) and NIfTI volumes (.nii, .nii.gz) as they are: <stem>_x4.png /
      <stem>_x4.nii.gz.  With --compare, each input is treated as a
      high-resolution original instead: downsampled x4, then bicubic vs model
      vs original in a figure <stem>_compare.png.

Without --model, the freshly trained <output-dir>/espcn.keras is used if it
exists, else the pretrained model shipped with the project.
"""
import argparse
import json
import os
import sys
import zipfile

import nibabel as nib
import numpy as np
from PIL import Image
from tqdm import tqdm

import constants
import dataset
import modules
from cli import OneLineErrorParser, check_output_dir, positive_int, target_size, write_atomically
from tensorflow_env import keras, tf


# --- Command line ------------------------------------------------------------

def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=constants.DATA_DIR, help="AD_NC-style tree; its test/ split is evaluated")
    parser.add_argument("--output-dir", default=constants.OUTPUT_DIR, help="where results are written")
    parser.add_argument("--model", default=None,
                        help=f"a .keras model (default: <output-dir>/{constants.MODEL_FILENAME}, "
                             f"else {constants.PRETRAINED_MODEL})")
    parser.add_argument("--batch-size", type=positive_int, default=constants.PREDICT_BATCH_SIZE,
                        help="slices per inference batch")
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="low-resolution images / NIfTI volumes / folders of them to super-resolve")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                        help="NIfTI: slices are taken across this axis and upscaled in-plane")
    parser.add_argument("--compare", action="store_true",
                        help="with --input: downsample each (high-resolution) input and compare bicubic vs model")
    parser.add_argument("--target-size", type=target_size, default=constants.TARGET_SIZE,
                        help="test slices are padded/cropped to this square size (pixels)")
    parser.add_argument("--figure-images", type=positive_int, default=constants.FIGURE_IMAGES,
                        help="test images in the comparison figure")
    args = parser.parse_args(argv)
    if args.compare and not args.input:
        parser.error("argument --compare: needs --input (the files to compare on)")
    return args


# --- Model -------------------------------------------------------------------

def resolve_model_path(model_arg, output_dir):
    """The model file to load, and a word on where it came from."""
    if model_arg:
        return model_arg, "given by --model"
    trained = os.path.join(output_dir, constants.MODEL_FILENAME)
    if os.path.exists(trained):
        return trained, "freshly trained"
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, constants.PRETRAINED_MODEL), "pretrained, shipped with the project"


def load_model(path):
    """Loads a .keras ESPCN with safe_mode on; ValueError naming the file if it cannot."""


    if not os.path.isfile(path):
        raise ValueError(f"--model {path}: no such file")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(f"--model {path}: not a .keras model file")
    try:
        model = modules.as_float32(keras.models.load_model(path, safe_mode=True, compile=False))
    except Exception as error:  # corrupt archives fail in many ways inside Keras
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--model {path}: cannot be loaded ({reason[:200]})") from None
    return model


def upscale_batch(model, low_res):
    """Model output for a float32 (N, h, w, 1) batch in [0,1], clipped to [0,1]."""
    return np.clip(np.asarray(model.predict_on_batch(low_res), dtype=np.float32), 0.0, 1.0)


def bicubic_upscale(low_res, factor):

    size = (low_res.shape[1] * factor, low_res.shape[2] * factor)
    return np.clip(tf.image.resize(low_res, size, method="bicubic").numpy(), 0.0, 1.0)


def scores(prediction, target):
    """Per-image PSNR and SSIM as numpy arrays."""
    psnr, ssim = modules.psnr_ssim(prediction, target)
    return psnr.numpy(), ssim.numpy()


# --- Evaluation on the test split -------------------------------------------

def evaluate_test_split(model, data_dir, batch_size, size=constants.TARGET_SIZE):
    """Model and bicubic outputs with per-image scores over the whole test split."""


    factor = modules.model_upscale_factor(model)
    if size % factor:
        raise ValueError(f"--target-size {size} is not divisible by the model's upscale factor {factor}")
    test = dataset.load_slices(dataset.list_images(os.path.join(data_dir, "test")), size)
    if len(test.paths) == 0:
        raise ValueError(f"--data-dir {data_dir}: no usable image in test/")
    results = {"paths": test.paths, "model_psnr": [], "bicubic_psnr": [], "model_ssim": [], "bicubic_ssim": []}
    batches = dataset.make_eval_dataset(test.images, batch_size, factor)
    total = -(-len(test.paths) // batch_size)
    for low_res, target in tqdm(batches, total=total, desc="evaluating", unit="batch"):
        low_res, target = low_res.numpy(), target.numpy()
        for name, output in (("model", upscale_batch(model, low_res)), ("bicubic", bicubic_upscale(low_res, factor))):
            psnr, ssim = scores(output, target)
            results[f"{name}_psnr"] += psnr.tolist()
            results[f"{name}_ssim"] += ssim.tolist()
    return test, results


def summarise(results):
    summary = {"n_images": len(results["paths"])}
    for key in ("model_psnr", "bicubic_psnr", "model_ssim", "bicubic_ssim"):
        summary[key] = round(float(np.mean(results[key])), 4)
    return summary


def comparison_rows(model, target, factor):
    """(original, bicubic, model) images and their scores for (N, H, W, 1) [0,1] originals."""
    low_res = dataset.downsample(target, factor).numpy()
    outputs = {"bicubic": bicubic_upscale(low_res, factor), "model": upscale_batch(model, low_res)}
    rows = []
    for i in range(len(target)):
        row = [("original", target[i], None)]
        for name, output in outputs.items():
            psnr, ssim = scores(output[i:i + 1], target[i:i + 1])
            row.append((name, output[i], (float(psnr[0]), float(ssim[0]))))
        rows.append(row)
    return rows


def save_comparison_figure(rows, path, row_labels=None):
    """The seed's figure: one row per image, original / bicubic / model, with PSNR and SSIM."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, (name, image, score) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            title = name if score is None else f"{name}\nPSNR {score[0]:.2f} dB  SSIM {score[1]:.3f}"
            if c == 0 and row_labels:
                title = f"{row_labels[r]}\n{title}"
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def run_evaluation(model, args):

    test, results = evaluate_test_split(model, args.data_dir, args.batch_size, args.target_size)
    summary = summarise(results)
    json_path = os.path.join(args.output_dir, "evaluation.json")
    def write_json(tmp_path):
        with open(tmp_path, "w") as out:
            json.dump(summary, out, indent=2)

    write_atomically(json_path, write_json)
    count = min(args.figure_images, len(test.paths))
    picks = np.linspace(0, len(test.paths) - 1, count).round().astype(int)
    rows = comparison_rows(model, dataset.to_unit_float(test.images[picks]).numpy(),
                           modules.model_upscale_factor(model))
    figure_path = os.path.join(args.output_dir, f"multi_comp_{count}.png")
    save_comparison_figure(rows, figure_path, [os.path.basename(test.paths[i]) for i in picks])
    print(f"{summary['n_images']} test images: model PSNR {summary['model_psnr']:.2f} dB "
          f"(bicubic {summary['bicubic_psnr']:.2f}), SSIM {summary['model_ssim']:.4f} "
          f"(bicubic {summary['bicubic_ssim']:.4f})")
    print(f"wrote {json_path} and {figure_path}")
    return summary


# --- The user's own scans ----------------------------------------------------

NIFTI_SUFFIXES = (".nii.gz", ".nii")
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L")


def kind_of(path):
    """'nifti', 'image' or None (unsupported) from the file name."""
    name = path.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    return "image" if name.endswith(constants.IMAGE_SUFFIXES) else None


def stem_of(path):
    name = os.path.basename(path)
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return os.path.splitext(name)[0]


def expand_inputs(paths):
    """Files to process: each given file, and the supported files inside each given folder."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(os.path.join(path, name) for name in os.listdir(path))
            files += [p for p in inside if os.path.isfile(p) and kind_of(p)]
        else:
            files.append(path)
    return files


def upscale_plane(model, plane, batch_size=constants.PREDICT_BATCH_SIZE):
    """Model output for one float (h, w) plane in [0, 1]."""
    return upscale_planes(model, plane[None], batch_size)[0]


def upscale_planes(model, planes, batch_size, progress=None):
    """Model output for (n, h, w) float planes, batch by batch (bounded memory)."""
    factor = modules.model_upscale_factor(model)
    n, height, width = planes.shape
    out = np.empty((n, height * factor, width * factor), np.float32)
    for start in range(0, n, batch_size):
        batch = planes[start:start + batch_size, ..., None].astype(np.float32)
        out[start:start + batch_size] = np.asarray(model.predict_on_batch(batch), np.float32)[..., 0]
        if progress is not None:
            progress.update(len(batch))
    return out


def upscale_grey_values(model, values, bits):
    """Upscales a greyscale array in its own intensity range; returns float output."""
    values = values.astype(np.float32)
    if bits == 8:
        low, high = 0.0, 255.0
    else:  # 16-bit, 32-bit and float files: the file's own range, min to max
        low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    out = upscale_plane(model, (values - low) / span)
    return np.clip(out, 0.0, 1.0) * span + low


def upscale_image(model, image):
    """The x4 PIL image for a PIL image of any mode, and the file suffix to save it with."""


    factor = modules.model_upscale_factor(model)
    size = (image.width * factor, image.height * factor)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("L" if image.mode == "1" else "RGB")
    alpha = image.getchannel("A").resize(size, Image.BICUBIC) if image.mode in ("RGBA", "LA", "PA") else None
    if image.mode == "F":
        out = upscale_grey_values(model, np.asarray(image), 32)
        return Image.fromarray(out.astype(np.float32), mode="F"), ".tif"
    if image.mode == "I":  # 32-bit integers: PNG holds 16 bits at most, TIFF holds them all
        out = np.round(upscale_grey_values(model, np.asarray(image), 32))
        return Image.fromarray(np.clip(out, -2 ** 31, 2 ** 31 - 1).astype(np.int32)), ".tif"
    if image.mode in HIGH_DEPTH_MODES:
        values = np.asarray(image)
        out = np.round(upscale_grey_values(model, values, 16))
        out = np.clip(out, 0, 65535).astype(np.uint16)
        return Image.fromarray(out), ".png"
    if image.mode in ("L", "LA"):
        out = upscale_grey_values(model, np.asarray(image.getchannel("L")), 8)
        result = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
        if alpha is not None:
            result = Image.merge("LA", (result, alpha))
        return result, ".png"
    # Colour: the model upscales Y, chroma is upscaled bicubically (as the Keras ESPCN example does).
    y, cb, cr = image.convert("RGB").convert("YCbCr").split()
    out_y = upscale_grey_values(model, np.asarray(y), 8)
    out_y = Image.fromarray(np.clip(np.round(out_y), 0, 255).astype(np.uint8))
    result = Image.merge("YCbCr", (out_y, cb.resize(size, Image.BICUBIC), cr.resize(size, Image.BICUBIC)))
    result = result.convert("RGB")
    if alpha is not None:
        result.putalpha(alpha)
    return result, ".png"


def super_resolve_image(model, path, output_dir, guard):

    with dataset.open_image(path) as image:
        result, suffix = upscale_image(model, image)
    factor = modules.model_upscale_factor(model)
    out_path = guard.claim(path, os.path.join(output_dir, f"{stem_of(path)}_x{factor}{suffix}"))
    write_atomically(out_path, lambda tmp: result.save(tmp, format="TIFF" if suffix == ".tif" else "PNG"))
    return out_path


class OutputGuard:
    """Refuses an output that is one of the inputs, or that another input already wrote."""
    def __init__(self, inputs):
        self.inputs = {os.path.realpath(path) for path in inputs}
        self.claimed = {}

    def claim(self, source, out_path):
        real = os.path.realpath(out_path)
        if real in self.inputs:
            raise ValueError(f"its output {out_path} is one of the inputs; not overwriting it")
        stem = os.path.splitext(real[:-3] if real.endswith(".gz") else real)[0]
        other = self.claimed.setdefault(stem, source)
        if other != source:
            raise ValueError(f"its output {out_path} would overwrite the output of {other} (same name)")
        return out_path


# --- NIfTI volumes -------------------------------------------------------------

def load_nifti(path):

    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    try:
        image = nib.load(path)
        data = image.get_fdata(dtype=np.float32)
    except Exception as error:  # nibabel, gzip and zlib each raise their own kinds
        raise ValueError(f"not a readable NIfTI volume ({type(error).__name__}: {error})") from None
    if data.ndim not in (3, 4):
        raise ValueError(f"a {data.ndim}D volume; only 3D volumes (or 4D series of them) are supported")
    return image, data


def upscaled_affine(affine, axis, factor):
    """The affine of the x`factor` in-plane grid covering exactly the same world extent.

    Output voxel i along an in-plane axis has its centre at input voxel
    coordinate (i + 0.5) / factor - 0.5, e.g. -0.375 for i = 0 at x4.
    """
    step = np.eye(4)
    for k in range(3):
        if k != axis:
            step[k, k] = 1.0 / factor
            step[k, 3] = 0.5 / factor - 0.5
    return affine @ step


def robust_range(data):
    low, high = np.percentile(data, [0.5, 99.5])
    if high <= low:
        low, high = float(data.min()), float(data.max())
    return float(low), float(high) if high > low else float(low) + 1.0


def upscale_volume(model, volume, axis, batch_size, progress=None):
    """Every slice across `axis` of a 3D volume, upscaled in-plane, in the volume's units."""
    low, high = robust_range(volume)
    planes = np.moveaxis(volume, axis, 0)
    scaled = (planes - low) / (high - low)
    out = upscale_planes(model, scaled, batch_size, progress) * (high - low) + low
    out = np.clip(out, float(volume.min()), float(volume.max()))
    return np.moveaxis(out, 0, axis)


def super_resolve_nifti(model, path, output_dir, axis, batch_size, guard):


    image, data = load_nifti(path)
    factor = modules.model_upscale_factor(model)
    series = data if data.ndim == 4 else data[..., None]
    shape = [size * factor if k != axis else size for k, size in enumerate(data.shape[:3])]
    out = np.empty(shape + list(series.shape[3:]), np.float32)  # filled volume by volume
    with tqdm(total=series.shape[axis] * series.shape[3], desc=os.path.basename(path), unit="slice",
              leave=False) as progress:
        for t in range(series.shape[3]):
            out[..., t] = upscale_volume(model, series[..., t], axis, batch_size, progress)
    header = image.header.copy()
    zooms = list(header.get_zooms())
    for k in range(3):
        if k != axis:
            zooms[k] /= factor
    result = type(image)(out if data.ndim == 4 else out[..., 0], upscaled_affine(image.affine, axis, factor),
                         header=header)
    result.header.set_zooms(zooms)
    # qform (scanner) and sform (e.g. registered) may differ: each is upscaled on its own.
    result.set_qform(upscaled_affine(header.get_qform(), axis, factor), code=int(header["qform_code"]))
    result.set_sform(upscaled_affine(header.get_sform(), axis, factor), code=int(header["sform_code"]))
    out_path = guard.claim(path, os.path.join(output_dir, f"{stem_of(path)}_x{factor}.nii.gz"))
    write_atomically(out_path, lambda tmp: nib.save(result, tmp))  # tmp ends in .nii.gz: gzipped
    return out_path


# --- --compare on high-resolution inputs --------------------------------------

def high_res_plane(path, axis):
    """A [0,1] 2D plane from an image (its Y) or a NIfTI volume (middle slice)."""
    if kind_of(path) == "nifti":
        _, data = load_nifti(path)
        volume = data if data.ndim == 3 else data[..., 0]
        low, high = robust_range(volume)
        plane = np.take(volume, volume.shape[axis] // 2, axis=axis)
        return np.clip((plane - low) / (high - low), 0.0, 1.0)
    with dataset.open_image(path) as image:
        return dataset.luma_uint8(image).astype(np.float32) / 255.0


def compare_on_input(model, path, output_dir, axis, guard):

    factor = modules.model_upscale_factor(model)
    plane = high_res_plane(path, axis)
    height, width = (plane.shape[0] // factor) * factor, (plane.shape[1] // factor) * factor
    minimum = max(11, factor)  # the SSIM window is 11x11
    if min(height, width) < minimum:
        raise ValueError(f"too small to compare ({plane.shape[1]}x{plane.shape[0]}); needs {minimum} pixels a side")
    row = comparison_rows(model, plane[None, :height, :width, None], factor)[0]
    out_path = guard.claim(path, os.path.join(output_dir, f"{stem_of(path)}_compare.png"))
    save_comparison_figure([row], out_path, [os.path.basename(path)])
    (_, _, (mp, ms)), (_, _, (bp, bs)) = row[2], row[1]
    return out_path, f"model PSNR {mp:.2f} dB SSIM {ms:.4f} | bicubic PSNR {bp:.2f} dB SSIM {bs:.4f}"


def process_input(model, path, args, guard):
    """One input file; returns (output path, note). ValueError on a bad file."""
    if not os.path.exists(path):
        raise ValueError("no such file")
    if os.path.isdir(path):
        raise ValueError("is a folder")
    kind = kind_of(path)
    if kind is None:
        raise ValueError("unsupported kind of file (expected PNG, JPEG, BMP, TIFF, .nii or .nii.gz)")
    if args.compare:
        return compare_on_input(model, path, args.output_dir, args.axis, guard)
    if kind == "nifti":
        return super_resolve_nifti(model, path, args.output_dir, args.axis, args.batch_size, guard), ""
    return super_resolve_image(model, path, args.output_dir, guard), ""


def run_on_inputs(model, args):
    """Super-resolves every input; a bad file is reported and skipped. Returns the exit code."""
    files = expand_inputs(args.input)
    if not files:
        raise ValueError(f"--input {' '.join(args.input)}: no supported files found")
    failures = 0
    guard = OutputGuard(path for path in files if os.path.exists(path))
    for path in tqdm(files, desc="super-resolving", unit="file", disable=len(files) < 2):
        try:
            out_path, note = process_input(model, path, args, guard)
            tqdm.write(f"{path} -> {out_path}" + (f"  ({note})" if note else ""))
        except Exception as error:  # one bad file must not stop the others
            failures += 1
            message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            tqdm.write(f"error: {path}: {message}", file=sys.stderr)
    if failures:
        print(f"{failures} of {len(files)} files failed", file=sys.stderr)
    return 1 if failures else 0


def main(argv=None):
    args = parse_args(argv)
    try:
        check_output_dir(args.output_dir)
        model_path, origin = resolve_model_path(args.model, args.output_dir)
        model = load_model(model_path)
        print(f"model: {model_path} ({origin})")
        if args.input:
            return run_on_inputs(model, args)

        dataset.prepare_data_dir(args.data_dir)
        run_evaluation(model, args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
