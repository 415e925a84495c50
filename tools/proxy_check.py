"""A fixed proxy for real scans, scored as a user's acceptance check does: model vs bicubic, x4.

usage: python tools/proxy_check.py [--model PATH] [--precision P] [--work-dir DIR] [--json PATH]
    [--extra-real FILE[:SLICE] ...]

Each proxy slice (8-bit, cropped to a multiple of 4) is shrunk 4x by area
averaging into an 8-bit PNG, super-resolved by `predict.py --input LR.png
--output-dir DIR` (one process for all of them), and compared with the
original on 8-bit values; bicubic is the same 8-bit input resized 4x
bicubically (inference.bicubic_upscale, as predict.py's evaluation) and
rounded to 8 bits.  None of it is training data:

- real: matplotlib's sample MRI `s1045.ima.gz` (a real sagittal T1 head with
  skull and scalp, 256x256) and two axial slices of nibabel's test EPI
  `example4d.nii.gz` (a real head, 128x96);
- synthetic: heads made by synthetic_heads.py from the TEST slab of the
  template (which no training slice touches) in four preset contrasts (T1,
  T2, PD, FLAIR) with fixed draws (seed 2026), committed as PNGs in
  tools/proxy_slices/ so the proxy does not move when the generator does;
- general: matplotlib's `grace_hopper.jpg` (luma), a natural photograph;
- with --extra-real, more real slices from files you have (scored in the real
  group): a 2D .npy array, or a NIfTI volume's axial slice (the middle one,
  or FILE:SLICE), each scaled by its maximum into 8 bits.  Such files must
  not be training data.  The README's figures used dipy's wheel's
  `t1_coronal_slice.npy` and `S0_10slices.nii.gz:3` and `:7` (dipy is not a
  dependency: `pip download --no-deps dipy` and unzip dipy/data/files).

Not a test: it runs predict.py once (about 20 s) and prints one line per
slice, the means of each group and of all, and writes them as JSON.
"""
import argparse
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

import matplotlib
import nibabel as nib
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import measures  # noqa: E402
import constants  # noqa: E402
import dataset  # noqa: E402
import inference  # noqa: E402
from training import synthetic_heads  # noqa: E402

FACTOR = 4
PROXY_SEED = 2026
# synthetic_test_slab_slices as made by synthetic_heads.py at the commit that added this tool; committed, so
# that changing the generator does not change the proxy (--remake-synthetic writes them again).
FROZEN_DIR = os.path.join(ROOT, "tools", "proxy_slices")


def to_uint8(values):
    """Scaled by the maximum into 8 bits, as a scan exported to PNG."""
    values = np.asarray(values, np.float64)
    return np.clip(np.round(values / max(values.max(), 1e-9) * 255.0), 0, 255).astype(np.uint8)


def crop_to_factor(image):
    return image[:image.shape[0] - image.shape[0] % FACTOR, :image.shape[1] - image.shape[1] % FACTOR]


def real_slices():
    """(name, uint8 slice) of the real scans that ship with matplotlib and nibabel."""
    sample = os.path.join(matplotlib.get_data_path(), "sample_data")
    with gzip.open(os.path.join(sample, "s1045.ima.gz")) as handle:
        yield "real_s1045_sagittal_t1", to_uint8(np.frombuffer(handle.read(), ">u2").reshape(256, 256))
    epi = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "example4d.nii.gz")
    volume = np.asanyarray(nib.load(epi).dataobj)[..., 0].astype(np.float64)
    for index in (10, 14):
        yield f"real_epi_axial_{index}", to_uint8(np.rot90(volume[:, :, index]))


def extra_real_slices(specs):
    """(name, uint8 slice) of --extra-real files: FILE.npy (2D) or FILE.nii[.gz][:SLICE] (axial, default middle)."""
    for spec in specs:
        path, _, index = spec.rpartition(":")
        if not index.isdigit():
            path, index = spec, ""
        if not os.path.isfile(path):
            raise SystemExit(f"error: --extra-real {spec}: no such file")
        name = os.path.basename(path).split(".")[0]
        if path.endswith(".npy"):
            yield f"real_{name}", to_uint8(np.load(path))
        else:
            volume = np.asanyarray(nib.load(path).dataobj).astype(np.float64)
            volume = volume.reshape(volume.shape[:3])  # a 4D file with one volume
            k = int(index) if index else volume.shape[2] // 2
            if k >= volume.shape[2]:
                raise SystemExit(f"error: --extra-real {spec}: slice {k} of {volume.shape[2]}")
            yield f"real_{name}_{k}", to_uint8(np.rot90(volume[:, :, k]))


def synthetic_test_slab_slices():
    """(name, uint8 slice): heads made from the template's test slab only, one per preset contrast."""
    rng = np.random.default_rng(PROXY_SEED)
    maps = synthetic_heads.tissue_maps()
    (start, stop), = dataset.sample_slab_ranges(maps["grey"].shape[2])["test"]
    slab = {name: values[:, :, start:stop] for name, values in maps.items()}
    margin = synthetic_heads.HEAD_MARGIN
    pad = ((margin, margin),) * 3
    for position, contrast in zip((0.5, 0.3, 0.7, 0.5), ("t1", "t2", "pd", "flair")):
        volume, _ = synthetic_heads.synthesize_slab(slab, rng, pad, synthetic_heads.CONTRASTS[contrast])
        index = margin + int(position * (stop - start))
        plane = synthetic_heads.degrade_plane(np.rot90(volume[:, :, index]), rng)
        yield f"synthetic_test_slab_{contrast}", np.round(plane * 255.0).astype(np.uint8)


def frozen_synthetic_slices():
    """The committed copies of synthetic_test_slab_slices: the proxy stays fixed while the generator changes."""
    for name in sorted(os.listdir(FROZEN_DIR)):
        yield name[:-len(".png")], dataset.read_slice(os.path.join(FROZEN_DIR, name))


def write_frozen_synthetic_slices():
    os.makedirs(FROZEN_DIR, exist_ok=True)
    for name, image in synthetic_test_slab_slices():
        Image.fromarray(image).save(os.path.join(FROZEN_DIR, f"{name}.png"))


def general_slices():
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    yield "general_grace_hopper", dataset.read_slice(path)


def proxy_slices(extra_real=()):
    """Every proxy slice, cropped to a multiple of 4."""
    for source in (real_slices, lambda: extra_real_slices(extra_real), frozen_synthetic_slices, general_slices):
        for name, image in source():
            yield name, crop_to_factor(image)


def area_downsample(image):
    rows, cols = image.shape[0] // FACTOR, image.shape[1] // FACTOR
    blocks = image.astype(np.float64).reshape(rows, FACTOR, cols, FACTOR).mean(axis=(1, 3))
    return np.clip(np.round(blocks), 0, 255).astype(np.uint8)


def psnr_8bit(output, original):
    return measures.psnr(output, original, 255.0)


def bicubic_8bit(low_res):
    upscaled = inference.bicubic_upscale(low_res[None, :, :, None].astype(np.float32) / 255.0, FACTOR)[0, :, :, 0]
    return np.round(upscaled * 255.0).astype(np.uint8)


def run_predict(model, inputs, output_dir, precision=None):
    command = [sys.executable, os.path.join(ROOT, "predict.py"), "--input", *inputs, "--output-dir", output_dir]
    if model:
        command += ["--model", model]
    if precision:
        command += ["--precision", precision]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def group_of(name):
    return name.split("_")[0]


def score(model, work_dir, extra_real=(), precision=None):
    """Per-slice and per-group PSNR of model and bicubic (8-bit), and the gain."""
    originals, inputs = {}, []
    for name, image in proxy_slices(extra_real):
        originals[name] = image
        path = os.path.join(work_dir, f"{name}.png")
        Image.fromarray(area_downsample(image)).save(path)
        inputs.append(path)
    out_dir = os.path.join(work_dir, "out")
    shutil.rmtree(out_dir, ignore_errors=True)  # outputs name their network: none of an earlier run may be read
    run_predict(model, inputs, out_dir, precision)
    rows = []
    for name, original in originals.items():
        low_res = np.asarray(Image.open(os.path.join(work_dir, f"{name}.png")))
        output = np.asarray(Image.open(glob.glob(os.path.join(out_dir, f"{name}_*x4.png"))[0]))  # <name>_<network>_x4
        model_psnr, bicubic_psnr = psnr_8bit(output, original), psnr_8bit(bicubic_8bit(low_res), original)
        rows.append({"name": name, "model_psnr": model_psnr, "bicubic_psnr": bicubic_psnr,
                     "gain": model_psnr - bicubic_psnr})
    groups = {}
    for group in ("real", "synthetic", "general", "all"):
        members = [row["gain"] for row in rows if group == "all" or group_of(row["name"]) == group]
        groups[group] = {"mean_gain": float(np.mean(members)), "min_gain": float(np.min(members)), "n": len(members)}
    return {"model": model or "predict.py's default", "precision": precision or "predict.py's default",
            "slices": rows, "groups": groups}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="predict.py's --model: a .keras file, espcn or quality "
                                                      "(default: predict.py's own choice)")
    parser.add_argument("--precision", default=None, choices=constants.PRECISIONS,
                        help="predict.py's --precision (default: its own, auto)")
    parser.add_argument("--work-dir", default=None, help="keep the proxy PNGs and outputs here")
    parser.add_argument("--json", default=None, help="also write the scores here")
    parser.add_argument("--remake-synthetic", action="store_true",
                        help="first rewrite tools/proxy_slices/ with the current synthetic_heads.py")
    parser.add_argument("--extra-real", nargs="+", default=(), metavar="FILE[:SLICE]",
                        help="more real slices: 2D .npy arrays or NIfTI volumes (axial slice SLICE, default middle)")
    args = parser.parse_args(argv)
    if args.remake_synthetic:
        write_frozen_synthetic_slices()
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = args.work_dir or scratch
        os.makedirs(work_dir, exist_ok=True)
        result = score(args.model, work_dir, args.extra_real, args.precision)
    for row in result["slices"]:
        print(f"{row['name']:32s} model {row['model_psnr']:6.2f} dB  bicubic {row['bicubic_psnr']:6.2f} dB  "
              f"gain {row['gain']:+.2f}")
    for group, summary in result["groups"].items():
        print(f"{group:9s} mean gain {summary['mean_gain']:+.2f} dB, weakest {summary['min_gain']:+.2f} dB "
              f"({summary['n']} slices)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
