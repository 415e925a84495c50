"""Real T1w heads for issue 21: one NIfTI per subject, split by subject, plus the thick-slice test volumes.

usage:
  python tools/real_volumes.py --ds002748 DIR --studyforrest DIR --mne DIR [--output-dir data/real_volumes]
  python tools/real_volumes.py --from-mirror --ds002748 GITDIR --studyforrest GITDIR --mne GITDIR

The sources (the only scans issue 21 allows; the project itself downloads nothing):
  --ds002748      OpenNeuro ds002748 (CC0) as copied in github.com/aaronsossin/DepressionMRI_AI:
                  sub-XX/anat/sub-XX_T1w.nii.gz, 72 skull-stripped heads, 0.87 x 0.87 x 1 mm
  --studyforrest  github.com/datalad/example-dicom-structural (PDDL): dicoms/*.dcm, one head with skull
  --mne           github.com/mne-tools/mne-misc-data (BSD-3): ecog/sample_ecog/mri/T1.mgz, 1 mm, with skull
Each is a checkout (folder), or with --from-mirror a bare git directory (read at HEAD with `git cat-file`,
the same bytes as `git --git-dir=GITDIR show HEAD:PATH > FILE`).  Files missing from a snapshot (4 MiB or
more) or left as git-annex / LFS pointers are skipped and counted.

Writes, under the output folder (default: the project's data/real_volumes/, git-ignored):
  train/ validation/ test/<name>.nii.gz   one file per subject; the split is BY SUBJECT (fixed seed), so no
                                          head gives slices to two splits
  split.json                              the split, the sources, the counts and the thick volumes
  test_thick/<name>/                      for each test head, the acceptance check's two thick volumes:
      <name>_x4_axis<K>.nii.gz            4 fine slices averaged along the superior-inferior axis K (axial
                                          slices, as a clinical 2D acquisition), and
      <name>_x3_axis<K>.nii.gz            3 along --x3-axis (coronal by default);
      ..._reference.nii.gz                the fine volume cut to a multiple of F along K: the truth.
A thick volume's affine is the fine one scaled by F along K and shifted by (F - 1) / 2 fine voxels, so it
covers the fine volume's world extent and predict.py --through-plane writes onto the reference's grid.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import slice_profiles  # noqa: E402
from scans import dicom_series  # noqa: E402
MNE_T1 = "ecog/sample_ecog/mri/T1.mgz"
POINTER_PREFIXES = (b"version https://git-lfs", b"../", b"/annex/", b".git/annex")


class Source:
    """Files of one source, from a folder or (mirror=True) a bare git directory's HEAD."""

    def __init__(self, root, mirror):
        self.root, self.mirror = root, mirror

    def names(self):
        if self.mirror:
            out = subprocess.run(["git", f"--git-dir={self.root}", "ls-tree", "-r", "--name-only", "HEAD"],
                                 check=True, capture_output=True, text=True).stdout
            return out.split("\n")[:-1]
        return sorted(os.path.relpath(os.path.join(d, f), self.root) for d, _, files in os.walk(self.root)
                      for f in files if ".git" not in d.split(os.sep))

    def read(self, name):
        """The file's bytes, or None when absent from the snapshot or only a large-file pointer."""
        try:
            if self.mirror:
                data = subprocess.run(["git", f"--git-dir={self.root}", "cat-file", "blob", f"HEAD:{name}"],
                                      check=True, capture_output=True).stdout
            else:
                with open(os.path.join(self.root, name), "rb") as f:
                    data = f.read()
        except (OSError, subprocess.CalledProcessError):
            return None
        return None if len(data) < 1024 and data.startswith(POINTER_PREFIXES) else data


def load_bytes(data, suffix):
    """A nibabel image from bytes (via a temporary file: .mgz and .nii.gz need their names)."""
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        image = nib.load(f.name)
        return nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)


def as_nifti(data, affine, dtype):
    image = nib.Nifti1Image(np.asarray(data, dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def dicom_volume(blobs):
    """The one image series among DICOM files' bytes, read by the project's own reader (dicom_series)."""
    with tempfile.TemporaryDirectory() as folder:
        for number, blob in enumerate(blobs):
            with open(os.path.join(folder, f"{number:04d}.dcm"), "wb") as f:
                f.write(blob)
        series, _ = dicom_series.find_series([os.path.join(folder, name) for name in sorted(os.listdir(folder))])
        if len(series) != 1:
            raise ValueError(f"expected one image series, found {len(series)}")
        image = dicom_series.load_series(series[0])
        return np.asarray(image.dataobj, np.float32), image.affine


def thick_pair(image, axis, factor):
    """(thick image, reference image): `factor` fine slices averaged along `axis`, no gap (a box profile)."""
    data = np.asanyarray(image.dataobj)
    thick, fine = slice_profiles.make_thick(data.astype(np.float64), axis, factor, profile="box")
    fine = fine.astype(data.dtype)
    scale = np.eye(4)
    scale[axis, axis], scale[axis, 3] = factor, (factor - 1) / 2.0
    return as_nifti(thick, image.affine @ scale, np.float32), as_nifti(fine, image.affine, fine.dtype)


def axis_of(image, codes):
    """The voxel axis whose direction (nibabel.aff2axcodes) is one of `codes`."""
    return [k for k, c in enumerate(nib.aff2axcodes(image.affine)) if c in codes][0]


def describe(image):
    data = np.asanyarray(image.dataobj)
    return {"shape": list(data.shape), "dtype": str(data.dtype), "zooms_mm": [round(float(z), 4) for z in
            image.header.get_zooms()[:3]], "orientation": "".join(nib.aff2axcodes(image.affine)),
            "min": float(data.min()), "max": float(data.max()),
            "p99.5_nonzero": float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else 0.0}


def gather(args):
    """{name: (nifti image or raw .nii.gz bytes, source key)} and counts of present/missing files per source."""
    heads, counts = {}, {}
    ds = Source(args.ds002748, args.from_mirror)
    wanted = [n for n in ds.names() if n.endswith("_T1w.nii.gz") and "/anat/" in n and n.startswith("sub-")]
    for name in wanted:
        data = ds.read(name)
        if data is not None and data[:2] == b"\x1f\x8b":  # gzip; a truncated one fails when loaded below
            heads[f"ds002748_{name.split('/')[0]}"] = (data, "ds002748")
    counts["ds002748"] = {"listed": len(wanted), "present": len(heads)}
    sf = Source(args.studyforrest, args.from_mirror)
    names = [n for n in sf.names() if n.startswith("dicoms/") and n.endswith(".dcm")]
    blobs = [blob for blob in (sf.read(n) for n in names) if blob is not None]
    counts["studyforrest"] = {"listed": len(names), "present": len(blobs)}
    if len(blobs) < len(names):
        print(f"studyforrest: {len(names) - len(blobs)} of {len(names)} slices missing; head skipped",
              file=sys.stderr)
    if blobs and len(blobs) == len(names):
        data, affine = dicom_volume(blobs)
        integral = np.all(data == np.round(data)) and data.min() >= -32768 and data.max() <= 32767
        heads["studyforrest_T1w"] = (as_nifti(data, affine, np.int16 if integral else np.float32), "studyforrest")
    mne = Source(args.mne, args.from_mirror).read(MNE_T1)
    counts["mne"] = {"listed": 1, "present": int(mne is not None)}
    if mne is not None:
        image = load_bytes(mne, ".mgz")
        heads["mne_sample_ecog_T1"] = (as_nifti(image.dataobj, image.affine, np.asanyarray(image.dataobj).dtype),
                                       "mne")
    return heads, counts


def split_subjects(names, seed, n_test, n_validation):
    """{name: split}: ds002748 subjects shuffled with `seed`; MNE (skull) in test, studyforrest (skull) in train."""
    ds = sorted(n for n in names if n.startswith("ds002748_"))
    order = [ds[i] for i in np.random.default_rng(seed).permutation(len(ds))]
    split = {n: "test" for n in order[:n_test]}
    split.update({n: "validation" for n in order[n_test:n_test + n_validation]})
    split.update({n: "train" for n in order[n_test + n_validation:]})
    split.update({n: {"mne_sample_ecog_T1": "test", "studyforrest_T1w": "train"}[n]
                  for n in names if not n.startswith("ds002748_")})
    return split


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for key in ("ds002748", "studyforrest", "mne"):
        parser.add_argument(f"--{key}", required=True, help="the source's folder (or bare git dir with --from-mirror)")
    parser.add_argument("--from-mirror", action="store_true", help="the sources are bare git directories (HEAD)")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "data", "real_volumes"))
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--test", type=int, default=6, help="ds002748 subjects in test/ (the MNE head is added)")
    parser.add_argument("--validation", type=int, default=4, help="ds002748 subjects in validation/")
    parser.add_argument("--x3-axis", choices=("coronal", "sagittal"), default="coronal",
                        help="the axis of the second (x3) thick volume; the x4 one is always axial")
    args = parser.parse_args(argv)

    heads, counts = gather(args)
    split = split_subjects(list(heads), args.seed, args.test, args.validation)
    record = {"seed": args.seed, "counts": counts, "split": {}, "volumes": {}, "thick": {}}
    for name, (content, source) in sorted(heads.items()):
        folder = os.path.join(args.output_dir, split[name])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{name}.nii.gz")
        if isinstance(content, bytes):  # ds002748: the published file itself, byte for byte
            with open(path, "wb") as f:
                f.write(content)
        else:
            nib.save(content, path)
        image = nib.load(path)
        record["split"].setdefault(split[name], []).append(name)
        record["volumes"][name] = {"source": source, "path": os.path.relpath(path, args.output_dir), **describe(image)}
        print(f"{split[name]:>10}  {name}  {record['volumes'][name]['shape']} {record['volumes'][name]['zooms_mm']} "
              f"{record['volumes'][name]['orientation']}")
        if split[name] != "test":
            continue
        thick_dir = os.path.join(args.output_dir, "test_thick", name)
        os.makedirs(thick_dir, exist_ok=True)
        other = "AP" if args.x3_axis == "coronal" else "LR"
        record["thick"][name] = []
        for factor, axis in ((4, axis_of(image, "SI")), (3, axis_of(image, other))):
            thick, reference = thick_pair(image, axis, factor)
            stem = os.path.join(thick_dir, f"{name}_x{factor}_axis{axis}")
            nib.save(thick, stem + ".nii.gz")
            nib.save(reference, stem + "_reference.nii.gz")
            record["thick"][name].append({"thick": os.path.relpath(stem + ".nii.gz", args.output_dir),
                                          "reference": os.path.relpath(stem + "_reference.nii.gz", args.output_dir),
                                          "factor": factor, "axis": axis, "thick_shape": list(thick.shape),
                                          "thick_zooms_mm": [round(float(z), 4) for z in thick.header.get_zooms()]})
    with open(os.path.join(args.output_dir, "split.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps({"counts": counts, **{k: len(v) for k, v in record["split"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
