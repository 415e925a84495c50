"""Super-resolve brain-MRI slices x4 with a trained network: the quality network, or the seed's ESPCN.

usage:
  python predict.py [--data-dir DIR] [--output-dir DIR] [--model PATH]
      Evaluates the model against bicubic on the whole test split and writes
      <output-dir>/evaluation.json and the comparison figure multi_comp_5.png.
  python predict.py --input PATH [PATH ...] --output-dir DIR [--model PATH]
      Super-resolves the user's own low-resolution images (PNG, JPEG, BMP,
      TIFF) and NIfTI volumes (.nii, .nii.gz) as they are: <stem>_<network>_x4.png /
      <stem>_<network>_x4.nii.gz.  With --compare, each input is treated as a
      high-resolution original instead: downsampled x4, then bicubic vs model
      vs original in a figure <stem>_<network>_compare.png.
  python predict.py --input VOLUME [...] --through-plane --output-dir DIR
      Refines thick-slice volumes between their slices (through_plane/refine.py):
      <stem>_<network>_through_x<F>.nii.gz; with --compare, thick slices are made from
      each (fine) volume and the model is scored against cubic B-spline.
  python predict.py --input SERIES_DIR [...] --output-dir DIR [--output-format nifti|dicom|both]
      DICOM series (folders of files of any names; dicom_series.py), in-plane
      or --through-plane, written as NIfTI, as a new DICOM series, or both.
      FreeSurfer .mgz/.mgh volumes are taken like NIfTI and written as .mgz.

Without --model, an in-plane model train.py wrote into --output-dir is used if
there is one (a trained through-plane model is given with --model), else the shipped quality network for the user's scans (--input, --bids:
sharper than the ESPCN on average on every set of real scans measured; --model espcn for the
faster seed's network) and the shipped ESPCN for the seed's evaluation of the
test split (model_files.py).  Beside each volume output goes a PNG of its three
central planes, input above output (--no-figures skips it).
"""
import argparse
import errno
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from common.atomic_files import remove_dead_partials, write_atomically
from common import model_files
from common.cli import (OneLineErrorParser, check_output_dir, per_network, positive_float, positive_int,
                        target_size, unit_share, upscale_factor)
from common.tensorflow_env import deterministic_ops
import constants
import dataset
import evaluation
import inference
import modules
from scans import bids_derivatives
from scans import dicom_series
from scans import image_files
from scans import provenance
from scans import volume_figures
from scans import volumes
from through_plane import model_source, refine, scoring, slice_geometry


# --- Command line ------------------------------------------------------------

def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_input_output_flags(parser.add_argument_group("inputs and outputs"))
    add_in_plane_flags(parser.add_argument_group("in-plane super-resolution (the default)"))
    add_through_plane_flags(parser.add_argument_group("through-plane super-resolution (--through-plane)"))
    add_dicom_flags(parser.add_argument_group("DICOM series"))
    add_bids_flags(parser.add_argument_group("BIDS datasets (--bids)"))
    add_evaluation_flags(parser.add_argument_group("evaluation (--compare, or the test split without --input)"))
    args = parser.parse_args(argv)
    if args.bids and args.input:
        parser.error("argument --bids: takes the place of --input (the dataset's anatomical volumes are the inputs)")
    if (args.participant_label or args.bids_suffix) and not args.bids:
        parser.error("argument --participant-label/--bids-suffix: needs --bids BIDS_DIR")
    if args.bids and args.compare:
        parser.error("argument --compare: not with --bids (a derivatives dataset holds outputs, not comparisons)")
    if args.through_plane and not (args.input or args.bids):
        parser.error("argument --through-plane: needs --input (the NIfTI volumes to refine)")
    if args.compare and not args.input:
        parser.error("argument --compare: needs --input (the files to compare on)")
    if args.through_plane and args.ensemble == 8:
        parser.error("argument --ensemble: at most 4 with --through-plane (the flips that keep the slice axis)")
    return args


@dataclass(frozen=True)
class Options:
    """One run's command line, resolved once (argparse holds every default) and never changed afterwards.

    Every job of the run reads it: in-plane, through-plane (refine.Settings.from_options) and the test
    split's evaluation (evaluation.run_evaluation).  `inputs` are --input's paths, or --bids' anatomical
    volumes; `axis` is --axis, 2 in-plane when not given (through-plane: None, the largest voxel size);
    `policy` is --precision resolved by modules.choose_precision, the one place it is worked out.
    """
    inputs: tuple
    output_dir: str
    gzip_level: int
    model: str | None
    policy: str
    batch_size: int | None
    ensemble: int | None
    figures: bool
    edges: str
    axis: int | None
    through_plane: bool
    through_plane_factor: int | None
    slice_thickness: float | None
    target_spacing: float | None
    through_plane_seconds: float
    adapt: bool
    adapt_learning_rate: float
    adapt_steps: int | None
    adapt_keep: float | None
    slice_profile: str
    output_format: str
    uid_root: str | None
    bids: str | None
    participant_label: tuple | None
    bids_suffix: tuple | None
    compare: bool
    data_dir: str
    target_size: int
    figure_images: int

    @classmethod
    def from_args(cls, args, inputs=None):
        """The options of parse_args' namespace; `inputs` replaces --input (--bids' volumes)."""
        fields = {key: value for key, value in vars(args).items() if key not in ("input", "precision")}
        fields["axis"] = 2 if args.axis is None and not args.through_plane else args.axis
        for key in ("participant_label", "bids_suffix"):
            fields[key] = tuple(fields[key]) if fields[key] is not None else None
        return cls(inputs=tuple(inputs if inputs is not None else args.input or ()),
                   policy=modules.choose_precision(args.precision), **fields)

    def views(self, kind):
        """--ensemble, else the default for this kind of input ("nifti" or an image): constants.ENSEMBLE_*."""
        return self.ensemble or (constants.ENSEMBLE_VOLUMES if kind == "nifti" else constants.ENSEMBLE_IMAGES)


def add_input_output_flags(group):
    group.add_argument("--input", nargs="+", metavar="PATH",
                       help="low-resolution images / NIfTI volumes / folders of them to super-resolve")
    group.add_argument("--output-dir", default=constants.OUTPUT_DIR, help="where results are written")
    group.add_argument("--gzip-level", type=int, choices=(0, 1, 2, 3), default=constants.GZIP_LEVEL,
                       help="compression of .nii.gz and .mgz outputs (ISA-L's levels: 3 is smallest and slowest)")
    group.add_argument("--model", default=None,
                       help="quality: the shipped quality network, the default for your scans, as it is the "
                            "sharper (+2.43 dB over bicubic on 12 real slices against the ESPCN's +1.70; +2.99 dB "
                            "over cubic B-spline through-plane on held-out heads against +2.13); espcn: the seed's "
                            "ESPCN, faster (a 256x256x180 volume in 7 s against 49 s on a 2-core AVX2 CPU); or a "
                            f".keras file.  Default: a model train.py wrote into --output-dir "
                            f"({model_files.trained_name('<network>')}), else the shipped "
                            f"{constants.DEFAULT_NETWORK} network for --input and --bids, the shipped "
                            f"{constants.SEED_NETWORK} for the test split")
    group.add_argument("--precision", choices=constants.PRECISIONS,
                       default=constants.PREDICT_PRECISION,
                       help="auto: mixed_bfloat16 where it is faster (AMX; AMD's AVX-512 BF16), mixed_float16 on GPUs, "
                            "else float32")
    group.add_argument("--batch-size", type=positive_int, default=None,
                       help="model inputs per inference batch (planes or tiles; each view of --ensemble counts) and, "
                            "with --through-plane, crops per adaptation step; default: as many inputs as hold "
                            f"{constants.PREDICT_BATCH_PIXELS} input pixels (constants.PREDICT_BATCH_PIXELS), "
                            f"{constants.ADAPT_BATCH_SIZE} crops")
    group.add_argument("--ensemble", type=int, choices=(1, 2, 4, 8), default=None,
                       help="average the model over this many flips/quarter turns of each input (self-ensemble); "
                            f"default: {constants.ENSEMBLE_IMAGES} for images and the test split, "
                            f"{constants.ENSEMBLE_VOLUMES} for NIfTI volumes; with --through-plane (at most 4 "
                            f"flips) {per_network('flips')}")
    group.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                       help="beside each volume output, a PNG of its three central planes, input above output "
                            "(in a BIDS derivatives dataset under sub-*/figures/)")
    group.add_argument("--edges", choices=("auto", "trained", "mirror"), default=constants.EDGES,
                       help="planes fed as the network was trained (zero-padded convolutions) or with a mirror "
                            "margin; auto: mirror only for small planes and flat borders (inference.py)")


def add_in_plane_flags(group):
    group.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                       help="NIfTI: the slice axis (in-plane: default 2; --through-plane: the largest voxel size)")


def add_dicom_flags(group):
    group.add_argument("--output-format", choices=("nifti", "dicom", "both"), default=constants.OUTPUT_FORMAT,
                       help="DICOM series in: written as NIfTI, as a new DICOM series beside the original, or both "
                            "(other inputs are written in their own format)")
    group.add_argument("--uid-root", type=uid_root, default=None, metavar="ROOT",
                       help="DICOM output: new UIDs under this organisation's root (default: pydicom's)")


def add_bids_flags(group):
    group.add_argument("--bids", metavar="BIDS_DIR", default=None,
                       help="a BIDS dataset: every anatomical NIfTI (anat/, sessions included) of the chosen "
                            "participants becomes an output in --output-dir, a BIDS derivatives dataset "
                            "(bids_derivatives.py)")
    group.add_argument("--participant-label", nargs="+", metavar="LABEL", default=None,
                       help="participants to process, with or without sub-, all when not given; one job each "
                            "scales out, as BIDS Apps do")
    group.add_argument("--bids-suffix", nargs="+", metavar="SUFFIX", default=None,
                       help="only these suffixes (e.g. T1w FLAIR), every anatomical one when not given")


def add_evaluation_flags(group):
    group.add_argument("--compare", action="store_true",
                       help="with --input: downsample each (high-resolution) input and compare bicubic vs model")
    group.add_argument("--data-dir", default=constants.DATA_DIR, help="AD_NC-style tree; its test/ split is evaluated")
    group.add_argument("--target-size", type=target_size, default=constants.TARGET_SIZE,
                       help="test slices are padded/cropped to this square size (pixels)")
    group.add_argument("--figure-images", type=positive_int, default=constants.FIGURE_IMAGES,
                       help="test images in the comparison figure")


def add_through_plane_flags(group):
    group.add_argument("--through-plane", action="store_true",
                       help="NIfTI: refine thick slices into fine ones (between the slices) instead of in-plane")
    group.add_argument("--through-plane-factor", type=upscale_factor, default=None,
                       help="the model's factor: it refines slices this many times on an in-plane grid of "
                            "spacing / factor mm; by default slice spacing / in-plane voxel size taken to the "
                            "nearest factor the network ships: "
                            f"{', '.join(map(str, constants.QUALITY_THROUGH_PLANE_FACTORS))} for the quality "
                            "network (the default), rounded into "
                            f"{constants.THROUGH_PLANE_FACTORS[0]}..{constants.THROUGH_PLANE_FACTORS[1]} with "
                            "--model espcn, a --model file's own; with --compare "
                            f"{constants.THROUGH_PLANE_COMPARE_FACTOR} or the nearest of those")
    group.add_argument("--slice-thickness", type=positive_float, default=None, metavar="MM",
                       help="the slices' thickness; by default the DICOM header's SliceThickness, or SliceThickness "
                            "of the BIDS sidecar <stem>.json beside a NIfTI, else the slice spacing")
    group.add_argument("--target-spacing", type=positive_float, default=None, metavar="MM",
                       help="the output's slice spacing, by default slice spacing / the model's factor (the "
                            "network's own grid); the output keeps the input's extent, so the spacing is "
                            "rounded to a whole number of slices")
    group.add_argument("--through-plane-seconds", type=positive_float, default=constants.THROUGH_PLANE_SECONDS,
                       help="a cap on the time one volume may take (TensorFlow start-up, reading and writing come "
                            "on top): adaptation is cut short, with a warning, only past it")
    group.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=True,
                       help="fine-tune the pretrained through-plane model on each volume's own fine planes")
    group.add_argument("--adapt-learning-rate", type=positive_float, default=constants.ADAPT_LEARNING_RATE,
                       help="Adam's rate for per-volume adaptation from a pretrained model (cosine-decayed over "
                            "its steps)")
    group.add_argument("--adapt-steps", "--adapt-max-steps", type=positive_int, default=None,
                       help=f"adaptation steps ({per_network('adapt_steps')}) for a volume of up to "
                            f"{constants.ADAPT_FULL_VOXELS // 1_000_000}M working voxels, proportionally fewer "
                            "for larger ones (it stops earlier when the volume's own validation crops stop "
                            "improving; the time budget only caps it, with a warning)")
    group.add_argument("--adapt-keep", type=unit_share, default=None, metavar="SHARE",
                       help=f"the share of adaptation's change to a pretrained model's weights that is kept, 0 to 1 "
                            f"({per_network('adapt_keep')}; on slices {constants.WIDE_RATIO:g}+ pixels apart "
                            f"{per_network('adapt_keep_wide')}): the model used lies between the pretrained and "
                            "the adapted one")
    group.add_argument("--slice-profile", choices=("box", "gaussian"), default=constants.SLICE_PROFILE,
                       help="the slices' profile across their thickness: box (an ideal slab) or gaussian "
                            "(FWHM = the thickness)")


def uid_root(text):
    try:
        return dicom_series.check_uid_root(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --- Model -------------------------------------------------------------------

def network_name(model):
    """"ESPCN" or "Quality network": what outputs call the network of `model`."""
    return model_files.label(modules.network_of(model))


# --- The user's own files ----------------------------------------------------------

def kind_of(path):
    """'nifti' (NIfTI or MGH), 'image', 'dicom' (by content) or None (unsupported)."""
    if volumes.is_nifti(path):
        return "nifti"
    if path.lower().endswith(constants.IMAGE_SUFFIXES):
        return "image"
    return "dicom" if os.path.isfile(path) and dicom_series.is_dicom(path) else None


def stem_of(path):
    return volumes.nifti_stem(path) if volumes.is_nifti(path) else os.path.splitext(os.path.basename(path))[0]


def expand_inputs(paths):
    """(inputs to process, notes on DICOM files left out).

    Inputs are file paths (each given file, and the supported files inside each
    given folder) and dicom_series.Series: the DICOM files among them grouped
    into their image series.
    """
    files, dicom_files = [], []
    for path in paths:
        inside = sorted(os.path.join(path, name) for name in os.listdir(path)) if os.path.isdir(path) else [path]
        for file in inside:
            kind = kind_of(file) if os.path.isfile(file) else None
            if kind == "dicom":
                dicom_files.append(file)
            elif kind or not os.path.isdir(path):  # a given file is reported even when unsupported
                files.append(file)
    series, notes = dicom_series.find_series(dicom_files)
    return files + series, notes


def label_of(item):
    """How an input is named in messages: its path, or a DICOM series' folder and description (no patient data)."""
    if isinstance(item, dicom_series.Series):
        return f"{os.path.dirname(item.files[0]) or '.'}: {item.description}"
    return item


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
        if any(path.startswith(real + os.sep) for path in self.inputs):  # a DICOM output folder
            raise ValueError(f"its output folder {out_path} holds inputs; not replacing it")
        other = self.claimed.setdefault(real, source)
        if other != source:
            raise ValueError(f"its output {out_path} would overwrite the output of {other} (same name)")
        return out_path


@dataclass
class Result:
    """What one input gave: where it was written, a note for the user's terminal, and a warning line."""
    output: str
    note: str = ""
    warning: str | None = None


def super_resolve_image(model, path, options, guard):
    """Writes <stem>_<network>_x<f>.png|tif."""
    with dataset.open_image(path) as image:
        result, suffix, warning = image_files.super_resolve(model, image, options.batch_size,
                                                            options.views("image"), options.edges)
    factor = modules.model_upscale_factor(model)
    name = f"{stem_of(path)}_{modules.network_of(model)}_x{factor}{suffix}"
    out_path = guard.claim(path, os.path.join(options.output_dir, name))
    write_atomically(out_path, lambda tmp: result.save(tmp, format="TIFF" if suffix == ".tif" else "PNG"))
    return Result(out_path, warning=warning)


def read_volume(item, notes):
    """(nibabel image, float32 data in real units) of a volume file or a DICOM series; ValueError on a bad one."""
    if isinstance(item, dicom_series.Series):
        dicom_series.check_modality(item)
        image = dicom_series.load_series(item)
        volumes.check_header(image)
        return image, np.asarray(image.dataobj, np.float32)
    return volumes.load_volume(item, notes)


def claim_outputs(item, tag, options, guard):
    """{format: output path} for a volume's result named <stem>_<tag>, each claimed from `guard`.

    A file is written in its own format (.nii.gz, or .mgz for MGH); a DICOM
    series as --output-format says: NIfTI, a new series folder, or both.  With
    --figures, "figure": the PNG beside them (volume_figures.py).
    """
    source = label_of(item) if isinstance(item, dicom_series.Series) else item
    if options.bids:
        path = bids_derivatives.output_path(options.bids, item, options.output_dir, bids_derivatives.method_label(tag))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        outputs = {"nifti": path}
    elif not isinstance(item, dicom_series.Series):
        outputs = {"nifti": os.path.join(options.output_dir, f"{stem_of(item)}_{tag}{volumes.output_suffix(item)}")}
    else:
        formats = ("nifti", "dicom") if options.output_format == "both" else (options.output_format,)
        names = {"nifti": f"{item.stem}_{tag}.nii.gz", "dicom": f"{item.stem}_{tag}"}
        outputs = {kind: os.path.join(options.output_dir, names[kind]) for kind in formats}
    if options.figures:
        outputs["figure"] = figure_path(item, next(iter(outputs.values())), options)
    outputs = {kind: guard.claim(source, path) for kind, path in outputs.items()}
    if "dicom" in outputs:
        dicom_series.check_replaceable(outputs["dicom"])  # refused before the work, not after it
    return outputs


def figure_path(item, output, options):
    """The figure of an output: <output>_planes.png beside it, or in a BIDS dataset sub-<label>/figures/<name>.png
    (where BIDS Apps keep their figures)."""
    stem = volumes.nifti_stem(output) if volumes.is_nifti(output) else os.path.basename(output)
    if not options.bids:
        return os.path.join(os.path.dirname(output), f"{stem}_planes.png")
    subject = os.path.relpath(item, options.bids).split(os.sep)[0]
    return os.path.join(options.output_dir, subject, "figures", f"{stem}.png")  # the folder is made when written


def write_volume(item, image, data, out, factors, outputs, label, derivation, made_by, options, began, method):
    """Writes the output `out` (stored values on the grid `factors` times finer) to each of `outputs`.

    A DICOM series is written with `derivation` (dicom_series.Derivation: what made it, its SliceThickness),
    its SeriesDescription the source's with `label` (the network and the output's tag, e.g. "ESPCN x4") after it;
    a NIfTI or MGH file with a JSON sidecar of provenance.record(**made_by) beside it; the figure of the
    input `data` (real units) beside its output, titled with `label` and the seconds since `began`.  In a
    BIDS dataset, its dataset_description names `method` (the network that ran, e.g. "ESPCN through-plane").
    """
    result = volumes.resampled_image(image, out, factors)
    if options.bids:
        bids_derivatives.write_description(options.bids, options.output_dir, method)
    for kind, path in outputs.items():
        if kind == "dicom":
            dicom_series.write_series(item, result, path, f" {label}", derivation)
        elif kind == "nifti":
            volumes.save_image(result, path, options.gzip_level)
            source = os.path.dirname(item.files[0]) if isinstance(item, dicom_series.Series) else item
            fields = provenance.record(source, factors=factors, input_image=image, output_image=result, **made_by)
            if options.bids:  # the source sidecar's fields that still hold, and Sources as a BIDS URI
                fields = {**bids_derivatives.carried_sidecar(item), **fields,
                          "Sources": [bids_derivatives.bids_uri(options.bids, item)]}
            provenance.write_sidecar(path, fields)
    if "figure" in outputs:
        factors_text = " x ".join(f"{f:.3g}" for f in factors)
        title = (f"{label} ({factors_text}) of {os.path.basename(label_of(item))}, "
                 f"{time.monotonic() - began:.0f} s")
        first = (slice(None),) * 3 + ((0,) if data.ndim == 4 else ())
        os.makedirs(os.path.dirname(outputs["figure"]) or ".", exist_ok=True)
        volume_figures.save_planes_figure(data[first], out[first], result.affine, result.header.get_zooms()[:3],
                                          title, outputs["figure"], volumes.scaling_of(image))


def super_resolve_volume(model, model_path, item, options, guard):
    """A volume file or DICOM series super-resolved in-plane, across --axis: <stem>_<network>_x<f>."""
    began = time.monotonic()
    factor = modules.model_upscale_factor(model)
    outputs = claim_outputs(item, f"{modules.network_of(model)}_x{factor}", options, guard)
    notes = []
    image, data = read_volume(item, notes)
    planes = data.shape[options.axis] * (data.shape[3] if data.ndim == 4 else 1)
    with tqdm(total=planes, desc=os.path.basename(outputs[next(iter(outputs))]), unit="slice", leave=False,
              disable=None) as progress:  # no bar when stderr is not a terminal
        out, n_nan, n_inf = volumes.super_resolve_in_plane(model, image, data, options.axis, options.batch_size, progress,
                                                           options.views("nifti"), options.edges)
    # in-plane, the slices are the source's: its SliceThickness holds (through-plane writes the new spacing)
    label = f"{network_name(model)} x{factor}"
    derivation = dicom_series.Derivation(
        f"{label} in-plane super-resolution ({constants.PROJECT_NAME} "
        f"{constants.VERSION}, model {os.path.basename(model_path)})", os.path.basename(model_path),
        dicom_series.slice_thickness(item) if isinstance(item, dicom_series.Series) else None, options.uid_root,
        network_name(model))
    made_by = {"model_path": model_path, "network": f"{modules.network_description(model)} x{factor} in-plane",
               "settings": {"Precision": options.policy,
                            "Ensemble": options.views("nifti"), "Edges": options.edges, "SliceAxis": options.axis},
               "slice_thickness": [derivation.slice_thickness or float(image.header.get_zooms()[options.axis])] * 2}
    write_volume(item, image, data, out, volumes.in_plane_factors(options.axis, factor), outputs, label, derivation,
                 made_by, options, began, f"{network_name(model)} in-plane")
    non_finite = inference.non_finite_warning(n_nan, n_inf, nan_kept=out.dtype.kind == "f")
    return Result(", ".join(path for kind, path in outputs.items() if kind != "figure"),
                  warning=inference.join_warnings(*notes, non_finite))


def refine_through_plane(source, item, options, guard):
    """--through-plane on a volume file or DICOM series: <stem>_<network>_through_x<F>, or with --compare figure
    and scores."""
    began = time.monotonic()
    if not isinstance(item, dicom_series.Series) and not volumes.is_nifti(item):
        raise ValueError("a 2D image: --through-plane refines volumes (NIfTI, MGH, DICOM series) between their "
                         "slices")
    settings = refine.Settings.from_options(options)
    bar = tqdm(total=int(settings.seconds), desc=os.path.basename(label_of(item)), leave=False, disable=None,
               bar_format="{desc}: {bar} {n}/{total} s of its time")  # no bar when stderr is not a terminal
    with bar as progress:
        if options.compare:
            if isinstance(item, dicom_series.Series):
                raise ValueError("--compare --through-plane takes NIfTI or MGH volumes")
            factor = options.through_plane_factor or compare_factor(source.factors())
            name = f"{stem_of(item)}_{source.network_for(factor)}_through_compare.png"
            out_path = guard.claim(item, os.path.join(options.output_dir, name))
            r = scoring.compare_on_volume(source, item, out_path, options.axis, factor, settings, progress)
            return Result(out_path, f"model PSNR {r['model_psnr']:.2f} dB SSIM {r['model_ssim']:.4f} | cubic "
                                    f"spline PSNR {r['cubic_spline_psnr']:.2f} dB SSIM {r['cubic_spline_ssim']:.4f}")
        notes = []
        image, data = read_volume(item, notes)
        refine.check_volume_shape(data.shape)
        geometry = slice_geometry_of(item, image, data, options,
                                     None if options.through_plane_factor else source.factors())
        tag = through_plane_tag(geometry)
        outputs = claim_outputs(item, f"{source.network_for(geometry.factor)}_{tag}", options, guard)
        out, prepared, n_nan, n_inf = refine.super_resolve_through_plane(source, image, data, geometry,
                                                                                settings, progress)
    model_path = source.path_for(geometry.factor)
    model_file = os.path.basename(model_path)
    network = network_name(prepared.model)
    derivation = dicom_series.Derivation(
        f"{network} through-plane super-resolution: slices {geometry.spacing:.4g} mm apart "
        f"and {geometry.thickness:.4g} mm thick refined to {geometry.output_spacing():.4g} mm "
        f"({constants.PROJECT_NAME} {constants.VERSION}, model {model_file}"
        f"{', adapted to this volume' if prepared.steps else ''})", model_file,
        geometry.output_spacing(), options.uid_root, network)  # each new slice stands for its own spacing (docs/dicom.md)
    made_by = {"model_path": model_path,
               "network": f"{modules.network_description(prepared.model)} x{geometry.factor} through-plane",
               "settings": {"Precision": options.policy, "Ensemble": prepared.settings.flips,
                            "Edges": options.edges, "SliceAxis": geometry.axis, "SliceProfile": settings.profile,
                            "ThicknessSource": geometry.thickness_source,
                            "WorkingVoxelSize": [round(z, 6) for z in geometry.working_zooms()],
                            "AdaptationSteps": prepared.steps, "AdaptationSeed": settings.seed,
                            "AdaptationKept": prepared.kept},
               "slice_thickness": (geometry.thickness, geometry.output_spacing())}
    write_volume(item, image, data, out, geometry.output_factors(), outputs, f"{network} {tag.replace('_', ' ')}",
                 derivation, made_by, options, began, f"{network} through-plane")
    non_finite = inference.non_finite_warning(n_nan, n_inf, nan_kept=out.dtype.kind == "f")
    return Result(", ".join(path for kind, path in outputs.items() if kind != "figure"),
                  f"{geometry.describe()}; {prepared.note}",
                  inference.join_warnings(*notes, prepared.warning, non_finite))


def compare_factor(factors):
    """--compare's factor without --through-plane-factor: constants.THROUGH_PLANE_COMPARE_FACTOR, or the
    nearest of the model source's factors when it refines only some."""
    if factors is None:
        return constants.THROUGH_PLANE_COMPARE_FACTOR
    return slice_geometry.nearest_factor(constants.THROUGH_PLANE_COMPARE_FACTOR, factors)


def slice_geometry_of(item, image, data, options, shipped=None):
    """The slice geometry of a volume: thickness from --slice-thickness, the DICOM header or a BIDS sidecar.

    `shipped`: the factors the model source refines (ModelSource.factors: with
    --model quality the nearest of constants.QUALITY_THROUGH_PLANE_FACTORS, with
    a --model file its own factor) when no --through-plane-factor is given.
    """
    thickness, source, sidecar = options.slice_thickness, "--slice-thickness", None
    if thickness is None and isinstance(item, dicom_series.Series):
        thickness, source = dicom_series.slice_thickness(item), "DICOM SliceThickness"
    elif thickness is None:
        sidecar = slice_geometry.sidecar_path(item)
    return slice_geometry.read_geometry(image.header.get_zooms(), data.shape, axis=options.axis,
                                        factor=options.through_plane_factor, thickness=thickness,
                                        thickness_source=source if thickness is not None else None,
                                        sidecar=sidecar, target=options.target_spacing, shipped=shipped)


def through_plane_tag(geometry):
    """through_x<F> when the output is the network's own grid, else through_<spacing>mm."""
    if geometry.output_slices() == geometry.shape[geometry.axis] * geometry.factor:
        return f"through_x{geometry.factor}"
    return f"through_{geometry.output_spacing():.3g}mm"


def compare(model, path, options, guard):
    name = f"{stem_of(path)}_{modules.network_of(model)}_compare.png"
    out_path = guard.claim(path, os.path.join(options.output_dir, name))
    ensemble = options.views(kind_of(path))
    return Result(out_path, evaluation.compare_on_input(model, path, out_path, options.axis, ensemble, options.edges))


def in_plane_handler(model, model_path, options):
    """The function that super-resolves one input in-plane with `model` (or compares, with --compare)."""
    def handle(item, guard):
        if isinstance(item, dicom_series.Series) or kind_of(item) == "nifti":
            if options.compare:
                if isinstance(item, dicom_series.Series):
                    raise ValueError("--compare takes images and NIfTI or MGH volumes")
                return compare(model, item, options, guard)
            return super_resolve_volume(model, model_path, item, options, guard)
        if options.compare:
            return compare(model, item, options, guard)
        return super_resolve_image(model, item, options, guard)

    return handle


def through_plane_handler(source, options):
    """The function that refines one input between its slices, with models from `source` (one per factor)."""
    return lambda item, guard: refine_through_plane(source, item, options, guard)


def process_input(handle, item, guard):
    """One input (a file, or a DICOM series) through `handle`; returns its Result. ValueError on a bad file."""
    if not isinstance(item, dicom_series.Series):
        check_readable(item)
        if kind_of(item) is None:
            raise ValueError("unsupported kind of file (expected PNG, JPEG, BMP, TIFF, NIfTI (.nii, .nii.gz), "
                             "MGH (.mgh, .mgz) or DICOM)")
    return handle(item, guard)


def run_on_inputs(handle, options):
    """Super-resolves every input; a bad file or series is reported and skipped. Returns the exit code."""
    items, notes = expand_inputs(options.inputs)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if not items:
        raise ValueError(f"--input {' '.join(options.inputs)}: no supported files found")
    failures = 0
    inputs = [file for item in items for file in (item.files if isinstance(item, dicom_series.Series) else [item])]
    guard = OutputGuard(path for path in inputs if os.path.exists(path))
    for item in tqdm(items, desc="super-resolving", unit="input", disable=True if len(items) < 2 else None):
        label = label_of(item)
        try:
            result = process_input(handle, item, guard)
            if result.warning:
                tqdm.write(f"warning: {label}: {result.warning}", file=sys.stderr)
            tqdm.write(f"{label} -> {result.output}" + (f"  ({result.note})" if result.note else ""))
        except Exception as error:  # one bad input must not stop the others
            failures += 1
            tqdm.write(f"error: {label}: {describe(error)}", file=sys.stderr)
    if failures:
        print(f"{failures} of {len(items)} inputs failed", file=sys.stderr)
    return 1 if failures else 0


def bids_inputs(args):
    """The anatomical volumes of --bids for --participant-label / --bids-suffix.  ValueError in words for a
    dataset or label that is not there."""
    labels = bids_derivatives.participant_labels(args.participant_label)
    found = bids_derivatives.find_anatomical(args.bids, labels, args.bids_suffix or ())
    if not found:
        raise ValueError(f"--bids {args.bids}: no anatomical NIfTI for the chosen participants and suffixes")
    return found


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
        remove_dead_partials(args.output_dir)  # what a killed run left (a DICOM series: patient data)
        options = Options.from_args(args, bids_inputs(args) if args.bids else None)
        if options.through_plane:  # its models depend on each volume's factor: model_source.ModelSource
            deterministic_ops()  # adaptation gives the same voxels on every run
            source = model_source.ModelSource(options.model, options.policy)
            print(f"model: {source.describe()}, precision: {options.policy}")
            return run_on_inputs(through_plane_handler(source, options), options)
        default = constants.DEFAULT_NETWORK if options.inputs else constants.SEED_NETWORK
        model_path, origin = model_files.in_plane_model(options.model, options.output_dir, default)
        model = inference.load_model(model_path, options.policy)
        print(f"model: {network_name(model)}, {model_path} ({origin}), precision: {options.policy}")
        if options.inputs:
            return run_on_inputs(in_plane_handler(model, model_path, options), options)
        dataset.prepare_data_dir(options.data_dir)
        evaluation.run_evaluation(model, options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
