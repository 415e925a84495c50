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
  python predict.py --input VOLUME [...] --through-plane --output-dir DIR
      Refines thick-slice NIfTI volumes between their slices (through_plane.py):
      <stem>_through_x<F>.nii.gz; with --compare, thick slices are made from
      each (fine) volume and the model is scored against cubic B-spline.

Without --model, the freshly trained <output-dir>/espcn.keras is used if it
exists, else the pretrained model shipped with the project.
"""
import argparse
import errno
import os
import sys

from tqdm import tqdm

import constants
import dataset
import evaluation
import image_files
import inference
import modules
import through_plane
import volumes
from cli import (OneLineErrorParser, check_output_dir, positive_float, positive_int, target_size, upscale_factor,
                 write_atomically)


# --- Command line ------------------------------------------------------------

def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=constants.DATA_DIR, help="AD_NC-style tree; its test/ split is evaluated")
    parser.add_argument("--output-dir", default=constants.OUTPUT_DIR, help="where results are written")
    parser.add_argument("--model", default=None,
                        help=f"a .keras model (default: <output-dir>/{constants.MODEL_FILENAME}, "
                             f"else {constants.PRETRAINED_MODEL})")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="model inputs per inference batch (planes or tiles; each view of --ensemble counts); "
                             "default: as many as hold "
                             f"{constants.PREDICT_BATCH_PIXELS} input pixels (constants.PREDICT_BATCH_PIXELS)")
    parser.add_argument("--ensemble", type=int, choices=(1, 2, 4, 8), default=None,
                        help="average the model over this many flips/quarter turns of each input (self-ensemble); "
                             f"default: {constants.ENSEMBLE_IMAGES} for images and the test split, "
                             f"{constants.ENSEMBLE_VOLUMES} for NIfTI volumes")
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="low-resolution images / NIfTI volumes / folders of them to super-resolve")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                        help="NIfTI: the slice axis (in-plane: default 2; --through-plane: the largest voxel size)")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                        default=constants.PREDICT_PRECISION,
                        help="auto: mixed_bfloat16 on CPUs with AVX-512 BF16/AMX, mixed_float16 on GPUs, else float32")
    parser.add_argument("--compare", action="store_true",
                        help="with --input: downsample each (high-resolution) input and compare bicubic vs model")
    parser.add_argument("--target-size", type=target_size, default=constants.TARGET_SIZE,
                        help="test slices are padded/cropped to this square size (pixels)")
    parser.add_argument("--figure-images", type=positive_int, default=constants.FIGURE_IMAGES,
                        help="test images in the comparison figure")
    add_through_plane_flags(parser)
    args = parser.parse_args(argv)
    if args.axis is None and not args.through_plane:
        args.axis = 2
    if args.through_plane and not args.input:
        parser.error("argument --through-plane: needs --input (the NIfTI volumes to refine)")
    if args.compare and not args.input:
        parser.error("argument --compare: needs --input (the files to compare on)")
    if args.ensemble and args.through_plane:
        parser.error("argument --ensemble: not with --through-plane (its flips: constants.THROUGH_PLANE_FLIPS)")
    return args


def add_through_plane_flags(parser):
    parser.add_argument("--through-plane", action="store_true",
                        help="NIfTI: refine thick slices into fine ones (between the slices) instead of in-plane")
    parser.add_argument("--through-plane-factor", type=upscale_factor, default=None,
                        help="slices made this many times finer (default: slice thickness / in-plane voxel size; "
                             f"{constants.THROUGH_PLANE_COMPARE_FACTOR} with --compare)")
    parser.add_argument("--through-plane-seconds", type=positive_float, default=constants.THROUGH_PLANE_SECONDS,
                        help="time one volume may take; per-volume adaptation gets what inference leaves")
    parser.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=True,
                        help="fine-tune the pretrained through-plane model on each volume's own fine planes")
    parser.add_argument("--slice-profile", choices=("box", "gaussian"), default=constants.SLICE_PROFILE,
                        help="how a thick slice was made from fine ones: box (mean, no gap) or gaussian")


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


# --- The user's own files ----------------------------------------------------------

def kind_of(path):
    """'nifti', 'image' or None (unsupported) from the file name."""
    if volumes.is_nifti(path):
        return "nifti"
    return "image" if path.lower().endswith(constants.IMAGE_SUFFIXES) else None


def stem_of(path):
    return volumes.nifti_stem(path) if volumes.is_nifti(path) else os.path.splitext(os.path.basename(path))[0]


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


def check_readable(path):
    """ValueError in words for a path that is missing, a broken link, a link loop or a folder."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError("a symbolic link loop") from None
        if os.path.islink(path):
            raise ValueError("a broken symbolic link (its target does not exist)") from None
        raise ValueError("no such file" if error.errno == errno.ENOENT else error.strerror) from None
    if os.path.isdir(path):
        raise ValueError("is a folder")


class OutputGuard:
    """Refuses an output that is one of the inputs, or that another input already wrote."""

    def __init__(self, inputs):
        self.inputs = {os.path.realpath(path) for path in inputs}
        self.claimed = {}

    def claim(self, source, out_path):
        real = os.path.realpath(out_path)
        if real in self.inputs:
            raise ValueError(f"its output {out_path} is one of the inputs; not overwriting it")
        other = self.claimed.setdefault(real, source)
        if other != source:
            raise ValueError(f"its output {out_path} would overwrite the output of {other} (same name)")
        return out_path


def super_resolve_image(model, path, args, guard):
    """Writes <stem>_x<f>.png|tif; returns (output path, warning or None)."""
    with dataset.open_image(path) as image:
        result, suffix, warning = image_files.super_resolve(model, image, args.batch_size,
                                                            ensemble_for("image", args))
    factor = modules.model_upscale_factor(model)
    out_path = guard.claim(path, os.path.join(args.output_dir, f"{stem_of(path)}_x{factor}{suffix}"))
    write_atomically(out_path, lambda tmp: result.save(tmp, format="TIFF" if suffix == ".tif" else "PNG"))
    return out_path, warning


def super_resolve_nifti(model, path, args, guard):
    """Writes <stem>_x<f>.nii.gz (in-plane across --axis); returns (output path, warning or None)."""
    factor = modules.model_upscale_factor(model)
    out_path = guard.claim(path, os.path.join(args.output_dir, f"{stem_of(path)}_x{factor}.nii.gz"))
    notes = []
    image, data = volumes.load_volume(path, notes)
    frames = data.shape[3] if data.ndim == 4 else 1
    with tqdm(total=data.shape[args.axis] * frames, desc=os.path.basename(path), unit="slice",
              leave=False, disable=None) as progress:  # no bar when stderr is not a terminal
        out, n_nan, n_inf = volumes.super_resolve_in_plane(model, image, data, args.axis, args.batch_size, progress,
                                                           ensemble_for("nifti", args))
    volumes.save_resampled(image, out, volumes.in_plane_factors(args.axis, factor), out_path)
    non_finite = inference.non_finite_warning(n_nan, n_inf, nan_kept=out.dtype.kind == "f")
    return out_path, inference.join_warnings(*notes, non_finite)


def refine_through_plane(source, path, args, guard):
    """--through-plane on one file: <stem>_through_x<F>.nii.gz, or with --compare the figure and scores."""
    if not volumes.is_nifti(path):
        raise ValueError("a 2D image: --through-plane refines NIfTI volumes (.nii, .nii.gz) between their slices")
    settings = through_plane.Settings(args.adapt, args.through_plane_seconds, args.slice_profile)
    bar = tqdm(total=int(settings.seconds), desc=os.path.basename(path), leave=False, disable=None,
               bar_format="{desc}: {bar} {n}/{total} s of its time")  # no bar when stderr is not a terminal
    with bar as progress:
        if args.compare:
            out_path = guard.claim(path, os.path.join(args.output_dir, f"{stem_of(path)}_through_compare.png"))
            factor = args.through_plane_factor or constants.THROUGH_PLANE_COMPARE_FACTOR
            r = through_plane.compare_on_volume(source, path, out_path, args.axis, factor, settings, progress)
            return out_path, (f"model PSNR {r['model_psnr']:.2f} dB SSIM {r['model_ssim']:.4f} | cubic spline "
                              f"PSNR {r['cubic_spline_psnr']:.2f} dB SSIM {r['cubic_spline_ssim']:.4f}"), None
        notes = []
        image, data = volumes.load_volume(path, notes)
        through_plane.check_volume_shape(data.shape)
        axis, factor = through_plane.slice_axis_and_factor(image.header.get_zooms(), args.axis,
                                                           args.through_plane_factor)
        out_path = guard.claim(path, os.path.join(args.output_dir, f"{stem_of(path)}_through_x{factor}.nii.gz"))
        out, note, n_nan, n_inf = through_plane.super_resolve_through_plane(source, image, data, axis, factor,
                                                                            settings, progress)
    volumes.save_resampled(image, out, [factor if k == axis else 1 for k in range(3)], out_path)
    non_finite = inference.non_finite_warning(n_nan, n_inf, nan_kept=out.dtype.kind == "f")
    return out_path, note, inference.join_warnings(*notes, non_finite)


def ensemble_for(kind, args):
    """--ensemble, else the default for this kind of input ("nifti" or an image): constants.ENSEMBLE_*."""
    return args.ensemble or (constants.ENSEMBLE_VOLUMES if kind == "nifti" else constants.ENSEMBLE_IMAGES)


def compare(model, path, args, guard):
    out_path = guard.claim(path, os.path.join(args.output_dir, f"{stem_of(path)}_compare.png"))
    ensemble = ensemble_for(kind_of(path), args)
    return out_path, evaluation.compare_on_input(model, path, out_path, args.axis, ensemble)


def process_input(model, path, args, guard):
    """One input file; returns (output path, note or "", warning or None). ValueError on a bad file."""
    check_readable(path)
    kind = kind_of(path)
    if kind is None:
        raise ValueError("unsupported kind of file (expected PNG, JPEG, BMP, TIFF, .nii or .nii.gz)")
    if args.through_plane:
        return refine_through_plane(model, path, args, guard)
    if args.compare:
        out_path, note = compare(model, path, args, guard)
        return out_path, note, None
    run = super_resolve_nifti if kind == "nifti" else super_resolve_image
    out_path, warning = run(model, path, args, guard)
    return out_path, "", warning


def run_on_inputs(model, args):
    """Super-resolves every input; a bad file is reported and skipped. Returns the exit code."""
    files = expand_inputs(args.input)
    if not files:
        raise ValueError(f"--input {' '.join(args.input)}: no supported files found")
    failures = 0
    guard = OutputGuard(path for path in files if os.path.exists(path))
    for path in tqdm(files, desc="super-resolving", unit="file", disable=True if len(files) < 2 else None):
        try:
            out_path, note, warning = process_input(model, path, args, guard)
            if warning:
                tqdm.write(f"warning: {path}: {warning}", file=sys.stderr)
            tqdm.write(f"{path} -> {out_path}" + (f"  ({note})" if note else ""))
        except Exception as error:  # one bad file must not stop the others
            failures += 1
            tqdm.write(f"error: {path}: {describe(error)}", file=sys.stderr)
    if failures:
        print(f"{failures} of {len(files)} files failed", file=sys.stderr)
    return 1 if failures else 0


def describe(error):
    """An error in words, on one line."""
    if isinstance(error, MemoryError):
        return "not enough memory to super-resolve it"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}" + (f" ({error.filename})" if error.filename else "")
    text = " ".join(str(error).split())
    if isinstance(error, ValueError):
        return text or "failed"
    return f"unexpected failure ({type(error).__name__}: {text[:200]})"  # a case not yet recognised


def main(argv=None):
    args = parse_args(argv)
    try:
        check_output_dir(args.output_dir)
        if args.through_plane:  # its models depend on each volume's factor: through_plane.ModelSource
            return run_on_inputs(through_plane.ModelSource(args.model, args.precision), args)
        model_path, origin = resolve_model_path(args.model, args.output_dir)
        model = inference.load_model(model_path, args.precision)
        print(f"model: {model_path} ({origin}), precision: {modules.choose_precision(args.precision)}")
        if args.input:
            return run_on_inputs(model, args)

        dataset.prepare_data_dir(args.data_dir)
        evaluation.run_evaluation(model, args.data_dir, args.output_dir, args.batch_size, args.target_size,
                                  args.figure_images, ensemble_for("image", args))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
