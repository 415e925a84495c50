"""How far a prior of one kind of scan carries: a model fine-tuned briefly on given slices, for proxy_check.py.

usage:
  python tools/prior_probe.py slices --volume FILE.nii.gz --held-out K [--gap G] --output M.keras
  python tools/prior_probe.py heads [--tree data/real_volumes] [--average 1 ...] [--kspace MM ...]
      [--invert P] [--peak-low L] [--noise N] --output M.keras
  then: python tools/proxy_check.py --model M.keras --extra-real ...

A diagnostic, not a training recipe (train.py trains): the model (default the shipped quality network) is
fine-tuned for --steps batches of 16 crops of 64x64 (flips and quarter turns; the input area-averaged 4x and
rounded to 8 bits, as the proxy makes its inputs) with Adam and MSE, and saved.

- slices: the axial slices of one volume, each scaled by its maximum into 8 bits as proxy_check.py's
  --extra-real scales them, leaving out slice K and the --gap slices on either side of it: what a prior of
  that very scan would give slice K (docs/training-recipe.md, *What the b0 slices lack*).
- heads: every --every-th training head of tools/real_volumes.py's tree (slices across the three axes at 12
  depths each), made to look like another kind of scan: averaged over --average voxels a side, or cropped in
  k-space to --kspace times the voxel size (ringing kept); inverted inside the tissue with probability
  --invert (T2-like contrast); each slice's peak drawn between --peak-low and 1; then Rician-like noise on
  the tissue, of a standard deviation drawn up to --noise (on the 0-1 scale, not of the drawn peak).
"""
import argparse
import glob
import os
import sys

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common.tensorflow_env import keras  # noqa: E402
import inference  # noqa: E402
import proxy_check  # noqa: E402
import real_slices  # noqa: E402
from common.cli import OneLineErrorParser, a_number, positive_float, positive_int, unit_share  # noqa: E402

CROP = 64          # high-resolution crop side (16x16 inputs)
BATCH = 16
DEPTHS = 12        # slices a head and axis, between 20% and 80% of its extent
TISSUE = 0.02      # of a slice's maximum: what counts as tissue for --invert and --noise


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def kspace_times(text):
    """A k-space crop: at least 1 (the slice's own matrix)."""
    value = a_number(text)
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value:g}")
    return value


def volume_slices(path, held_out, gap):
    """The volume's axial slices as proxy_check.py scales them, without held_out and its gap neighbours."""
    volume = np.asanyarray(nib.load(path).dataobj).astype(np.float64)
    volume = volume.reshape(volume.shape[:3])
    if not 0 <= held_out < volume.shape[2]:
        raise SystemExit(f"error: --held-out {held_out}: {path} has {volume.shape[2]} axial slices")
    kept = [proxy_check.to_uint8(np.rot90(volume[:, :, k])) / 255.0 for k in range(volume.shape[2])
            if abs(k - held_out) > gap]
    if not kept:
        raise SystemExit(f"error: --gap {gap} leaves no slice of {path} to train on")
    return kept


def head_slices(tree, every, averages):
    """(average, slice) of every `every`-th training head, across its three axes, for each averaging."""
    files = sorted(glob.glob(os.path.join(tree, "train", "*.nii*")))[::every]
    if not files:
        raise SystemExit(f"error: --tree {tree}: no train/*.nii.gz (tools/real_volumes.py writes it)")
    bank = []
    for path in files:
        head = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
        head = head.reshape(head.shape[:3])
        for k in averages:
            volume = np.ascontiguousarray(real_slices.coarsened(head, k))
            for axis in range(3):
                for depth in np.linspace(0.2, 0.8, DEPTHS) * volume.shape[axis]:
                    plane = np.ascontiguousarray(np.take(volume, int(depth), axis=axis))
                    if (plane > 0).mean() > 0.1:
                        bank.append(plane / plane.max())
    if not bank:
        raise SystemExit(f"error: --tree {tree}: no slice of its training heads holds 10% tissue")
    return bank


def kspace_cropped(plane, times):
    """The plane as a scanner acquiring `times` coarser pixels would reconstruct it: central k-space only."""
    rows, cols = (max(2, int(side / times) // 2 * 2) for side in plane.shape)
    spectrum = np.fft.fftshift(np.fft.fft2(plane))
    top, left = plane.shape[0] // 2 - rows // 2, plane.shape[1] // 2 - cols // 2
    coarse = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum[top:top + rows, left:left + cols])))
    return coarse / coarse.max()


def looks_like(plane, args, rng):
    """A head's slice made to look like the other kind of scan (heads' options)."""
    if args.kspace:
        plane = kspace_cropped(plane, args.kspace[rng.integers(len(args.kspace))])
    tissue = plane > TISSUE
    if rng.random() < args.invert:
        plane = np.where(tissue, 1.05 - plane, 0.0)
        plane = plane / plane.max()
    plane = plane * (args.peak_low + (1.0 - args.peak_low) * rng.random())
    if args.noise:
        plane = np.abs(plane + rng.normal(0.0, args.noise * rng.random(), plane.shape) * tissue)
    return np.clip(np.round(plane * 255.0), 0, 255) / 255.0


def random_crop(plane, rng):
    """A CROP x CROP crop (zero-padded where the plane is smaller), flipped and turned at random."""
    plane = np.pad(plane, [(0, max(0, CROP - d)) for d in plane.shape])
    top, left = rng.integers(0, plane.shape[0] - CROP + 1), rng.integers(0, plane.shape[1] - CROP + 1)
    crop = np.rot90(plane[top:top + CROP, left:left + CROP], rng.integers(4))
    return crop[:, ::-1] if rng.integers(2) else crop


def training_pair(planes, rng, prepare=lambda plane: plane):
    """(8-bit 4x area-averaged inputs, targets) of a batch, float32 NHWC."""
    targets = np.stack([random_crop(prepare(planes[rng.integers(len(planes))]), rng) for _ in range(BATCH)])
    targets = targets[..., None].astype(np.float32)
    inputs = np.stack([proxy_check.area_downsample(target[..., 0] * 255.0) for target in targets])
    return (inputs[..., None] / 255.0).astype(np.float32), targets


def main(argv=None):
    common = OneLineErrorParser(add_help=False)
    common.add_argument("--model", default=os.path.join(ROOT, "pretrained", "quality_x4.keras"))
    common.add_argument("--output", required=True, help="the fine-tuned .keras file")
    common.add_argument("--steps", type=positive_int, default=None, help="default: 300 (slices), 600 (heads)")
    common.add_argument("--learning-rate", type=positive_float, default=1e-4)
    common.add_argument("--seed", type=int, default=0)
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    slices = kinds.add_parser("slices", parents=[common], help="the other slices of one volume")
    slices.add_argument("--volume", required=True)
    slices.add_argument("--held-out", type=non_negative_int, required=True)
    slices.add_argument("--gap", type=non_negative_int, default=0, help="neighbours on either side left out too")
    heads = kinds.add_parser("heads", parents=[common], help="training heads made to look like another kind of scan")
    heads.add_argument("--tree", default=os.path.join(ROOT, "data", "real_volumes"))
    heads.add_argument("--every", type=positive_int, default=3)
    heads.add_argument("--average", type=positive_int, nargs="+", default=[1])
    heads.add_argument("--kspace", type=kspace_times, nargs="+", default=[])
    heads.add_argument("--invert", type=unit_share, default=0.2)
    heads.add_argument("--peak-low", type=unit_share, default=0.35)
    heads.add_argument("--noise", type=unit_share, default=0.0)
    args = parser.parse_args(argv)
    if not args.output.endswith(".keras"):
        raise SystemExit(f"error: --output {args.output}: must end in .keras (what proxy_check.py --model reads)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise SystemExit(f"error: --output {args.output}: no such folder")
    try:
        model = inference.read_model_file(args.model)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    rng = np.random.default_rng(args.seed)
    keras.utils.set_random_seed(args.seed)
    if args.kind == "slices":
        if not os.path.isfile(args.volume):
            raise SystemExit(f"error: --volume {args.volume}: no such file")
        planes, steps = volume_slices(args.volume, args.held_out, args.gap), args.steps or 300
        prepare = None
    else:
        planes, steps = head_slices(args.tree, args.every, args.average), args.steps or 600
        prepare = lambda plane: looks_like(plane, args, rng)  # noqa: E731
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="mse")
    for step in range(steps):
        loss = model.train_on_batch(*training_pair(planes, rng, prepare or (lambda plane: plane)))
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps}: loss {float(loss):.5f}", flush=True)
    model.save(args.output)
    print(f"wrote {args.output} ({len(planes)} training slices)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
