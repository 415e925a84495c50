"""Issue 21's acceptance check on real heads: predict.py --through-plane against cubic B-spline, timed.

usage:
  python tools/through_plane_check.py [--tree data/real_volumes] [--heads NAME ...] [--model-dir DIR]
      [--work-dir DIR] [--json PATH] [--predict-args="ARGS"] [-- PREDICT.PY ARGS ...]

For each test head of the tree tools/real_volumes.py writes (its split.json lists, per head, two thick
volumes: 4 fine slices averaged along the axial axis, 3 along another, and the fine reference of each),
the thick volumes are refined by `python predict.py --input A B --through-plane --output-dir DIR` run as a
subprocess and timed (TensorFlow start-up included, as a user sees it).  Each output must have exactly its
reference's shape and affine; then PSNR over the whole volume (range = the reference's max - min) is
computed for the output and for refine.cubic_spline on the same thick volume, clipped to the thick
volume's [min, max] as predict.py clips its own output; the gain is their difference.

One call per head when it can be: predict.py infers each volume's factor as round(slice thickness / finest
other voxel size), which is wrong for a volume whose fine grid is not isotropic (ds002748's 0.87 x 0.87 x 1 mm
made 4 mm thick infers x5, not x4).  Such a volume gets its own call with --through-plane-factor F (and
--axis K if the axis is also mis-inferred); the JSON records it and the head's time sums its calls.  With
--model-dir, predict.py's --model names one model for one factor (through_plane.model_source.ModelSource), so each
factor gets its own call with --model DIR/<network>_through_x<F>.keras (or DIR/through_x<F>/ holding it,
the folder train.py --output-dir output/through_x<F> writes; espcn.keras there from older versions).

Extra predict.py flags go after `--` or in --predict-args="..." (with "=" so argparse takes a leading dash):
  python tools/through_plane_check.py --heads ds002748_sub-10 mne_sample_ecog_T1 -- --no-adapt
  python tools/through_plane_check.py --predict-args="--through-plane-seconds 60"
Not a test: with adaptation on, each volume takes up to --through-plane-seconds (65 s by default).
"""
import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name():
    """The CPU model, its native bfloat16 flags and vendor, and the precision predict.py's 'auto' takes there."""
    import modules
    model = re.search(r"^model name\s*:\s*(.*)$", modules.cpuinfo_text(), re.M)
    return {"model": model.group(1) if model else "unknown", "cores": os.cpu_count(), "vendor": modules.cpu_vendor(),
            "bf16": sorted(flag for flag in modules.BF16_CPU_FLAGS if flag in modules.cpu_flags()),
            "auto": modules.choose_precision("auto")}


def model_for(model_dir, factor):
    for path in (os.path.join(model_dir, f"espcn_through_x{factor}.keras"),
                 os.path.join(model_dir, f"quality_through_x{factor}.keras"),
                 os.path.join(model_dir, f"through_x{factor}", f"espcn_through_x{factor}.keras"),
                 os.path.join(model_dir, f"through_x{factor}", f"quality_through_x{factor}.keras"),
                 os.path.join(model_dir, f"through_x{factor}", "espcn.keras")):
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise SystemExit(f"error: --model-dir {model_dir}: no model for x{factor} (espcn_through_x{factor}.keras)")


def plan_calls(volumes, tree, model_dir):
    """[(flags, [volume entries])]: the predict.py calls one head needs (see the module docstring)."""
    from through_plane import slice_geometry
    calls = {}
    for v in volumes:
        image = nib.load(os.path.join(tree, v["thick"]))
        try:
            geometry = slice_geometry.read_geometry(image.header.get_zooms(), image.shape)
            inferred = geometry.axis, geometry.factor
        except ValueError:
            inferred = None
        v["inferred_axis_factor"] = list(inferred) if inferred else None
        flags = []
        if inferred is None or inferred[1] != v["factor"]:
            flags += ["--through-plane-factor", str(v["factor"])]
        if inferred is None or inferred[0] != v["axis"]:
            flags += ["--axis", str(v["axis"])]
        if model_dir:
            flags += ["--model", model_for(model_dir, v["factor"])]
        calls.setdefault(tuple(flags), []).append(v)
    return list(calls.items())


def run_call(paths, flags, extra, out_dir, log_path):
    """Runs predict.py once; (seconds, exit status, {input path: note}, load average before and after)."""
    command = [sys.executable, os.path.join(ROOT, "predict.py"), "--input", *paths, "--through-plane",
               "--output-dir", out_dir, *flags, *extra]
    load_before = os.getloadavg()
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - began
    with open(log_path, "w") as f:
        f.write(shlex.join(command) + "\n\n" + done.stdout + "\n--- stderr ---\n" + done.stderr)
    notes = {}
    for line in done.stdout.splitlines():
        for path in paths:
            if line.startswith(f"{path} -> "):
                found = re.search(r"  \((.*)\)$", line)
                notes[path] = found.group(1) if found else ""
    return seconds, done.returncode, notes, [load_before, os.getloadavg()], shlex.join(command)


def psnr_against_spline(output, thick, truth, axis, factor):
    """(PSNR of `output`, PSNR of cubic B-spline on `thick`) against the fine `truth`, range = its max - min.

    The spline is clipped to the thick volume's [min, max] as predict.py clips its own output.
    """
    from common import measures
    from through_plane import refine
    value_range = float(truth.max() - truth.min())
    spline = np.clip(refine.cubic_spline(thick, axis, thick.shape[axis] * factor), thick.min(), thick.max())
    return measures.psnr(output, truth, value_range), measures.psnr(spline, truth, value_range)


def score(v, tree, out_path):
    """The volume's scores; raises ValueError when the output is missing or off the reference's grid."""
    reference = nib.load(os.path.join(tree, v["reference"]))
    if not os.path.isfile(out_path):
        raise ValueError(f"no output {out_path}")
    output = nib.load(out_path)
    if output.shape != reference.shape or not np.allclose(output.affine, reference.affine, atol=1e-4):
        raise ValueError(f"output shape {output.shape} / affine off the reference's {reference.shape}")
    truth = reference.get_fdata(dtype=np.float64)
    thick = nib.load(os.path.join(tree, v["thick"])).get_fdata(dtype=np.float64)
    model_psnr, spline_psnr = psnr_against_spline(output.get_fdata(dtype=np.float64), thick, truth, v["axis"],
                                                  v["factor"])
    return {"model_psnr": round(model_psnr, 4), "spline_psnr": round(spline_psnr, 4),
            "gain_db": round(model_psnr - spline_psnr, 4), "range": float(truth.max() - truth.min())}


def check_head(name, volumes, args, extra):
    out_dir = os.path.abspath(os.path.join(args.work_dir, name))  # predict.py runs in ROOT
    os.makedirs(out_dir, exist_ok=True)
    record = {"head": name, "calls": [], "volumes": []}
    for index, (flags, group) in enumerate(plan_calls(volumes, args.tree, args.model_dir)):
        paths = [os.path.abspath(os.path.join(args.tree, v["thick"])) for v in group]
        # predict.py names the network that ran: <stem>_<network>_through_x<F>.nii.gz
        patterns = [os.path.join(out_dir, os.path.basename(p)[:-len(".nii.gz")] + f"_*through_x{v['factor']}.nii.gz")
                    for p, v in zip(paths, group)]
        for stale in (path for pattern in patterns for path in glob.glob(pattern)):
            os.remove(stale)
        seconds, status, notes, load, command = run_call(paths, list(flags), extra, out_dir,
                                                          os.path.join(out_dir, f"predict_{index}.log"))
        outputs = [(glob.glob(pattern) or [pattern])[0] for pattern in patterns]
        record["calls"].append({"command": command, "seconds": round(seconds, 1), "exit_status": status,
                                "load_average_before_after": [[round(x, 2) for x in a] for a in load]})
        for path, out_path, v in zip(paths, outputs, group):
            entry = {"thick": v["thick"], "factor": v["factor"], "axis": v["axis"], "thick_shape": v["thick_shape"],
                     "inferred_axis_factor": v["inferred_axis_factor"], "call": index, "note": notes.get(path)}
            try:
                entry.update(score(v, args.tree, out_path))
            except ValueError as error:
                entry["error"] = str(error)
            record["volumes"].append(entry)
    record["seconds"] = round(sum(c["seconds"] for c in record["calls"]), 1)
    return record


def print_table(records):
    print(f"{'volume':<44} {'thick shape':>14} {'F':>2} {'ax':>2} {'model dB':>9} {'spline dB':>9} {'gain':>7}  note")
    for r in records:
        for v in r["volumes"]:
            figures = (f"{v['model_psnr']:9.2f} {v['spline_psnr']:9.2f} {v['gain_db']:+7.2f}" if "gain_db" in v
                       else f"{'ERROR: ' + v['error']:>27}")
            shape = "x".join(str(s) for s in v["thick_shape"])
            print(f"{os.path.basename(v['thick']):<44} {shape:>14} {v['factor']:>2} {v['axis']:>2} {figures}  "
                  f"(call {v['call']}) {v['note'] or ''}")
        gains = [v["gain_db"] for v in r["volumes"] if "gain_db" in v]
        mean = f"mean gain {np.mean(gains):+.2f} dB" if gains else "no scores"
        print(f"  {r['head']}: {mean}, {r['seconds']:.0f} s in {len(r['calls'])} predict.py call(s), "
              f"load average {r['calls'][0]['load_average_before_after'][0][0]:.2f} before\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tree", default=os.path.join(ROOT, "data", "real_volumes"),
                        help="the folder tools/real_volumes.py wrote (with split.json)")
    parser.add_argument("--heads", nargs="+", default=None, help="test heads to run (default: all in split.json)")
    parser.add_argument("--model-dir", default=None, help="models to use instead of pretrained/ (one per factor)")
    parser.add_argument("--predict-args", default="", help='more predict.py flags, e.g. --predict-args="--no-adapt"')
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "output", "through_plane_check"),
                        help="predict.py outputs and logs go to WORK_DIR/<head>/")
    parser.add_argument("--json", default=None, help="results file (default: WORK_DIR/results.json)")
    args = parser.parse_args(argv)
    extra = shlex.split(args.predict_args) + extra
    with open(os.path.join(args.tree, "split.json")) as f:
        thick = json.load(f)["thick"]
    heads = args.heads or sorted(thick)
    unknown = [h for h in heads if h not in thick]
    if unknown:
        parser.error(f"--heads: not test heads of {args.tree}: {' '.join(unknown)} (known: {' '.join(sorted(thick))})")
    sys.path.insert(0, ROOT)
    records = []
    for name in heads:
        print(f"{name}: running predict.py ...", flush=True)
        records.append(check_head(name, thick[name], args, extra))
    print_table(records)
    gains = [v["gain_db"] for r in records for v in r["volumes"] if "gain_db" in v]
    summary = {"cpu": cpu_name(), "predict_args": extra, "model_dir": args.model_dir, "heads": records,
               "mean_gain_db": round(float(np.mean(gains)), 4) if gains else None,
               "failed_volumes": sum("error" in v for r in records for v in r["volumes"])}
    json_path = args.json or os.path.join(args.work_dir, "results.json")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"mean gain {summary['mean_gain_db']} dB over {len(gains)} volumes; {json_path}")
    return 1 if summary["failed_volumes"] else 0


if __name__ == "__main__":
    sys.exit(main())
