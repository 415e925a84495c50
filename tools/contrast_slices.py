"""Clinical contrasts as 2D slices: FLAIR, T2 and EPI scans split by subject, for training and for scoring.

usage:
  python tools/contrast_slices.py --ms GITDIR --dcm-qa GITDIR --functional GITDIR [--philips-dwi GITDIR]
      [--output-dir data/contrasts]

The sources (allowed for the clinical-contrast networks; the project itself downloads nothing), each a bare
git directory (the `fetch` snapshot) read at HEAD:
  --ms          github.com/muschellij2/open_ms_data (CC-BY): longitudinal/raw/patientNN/studyK_{FLAIR,T2W}.nii.gz,
                clinical 2D multi-slice MS scans (only longitudinal/; files of 4 MiB or more are absent)
  --dcm-qa      github.com/neurolabusc/dcm_qa (BSD-2): the human BOLD EPI series under Ref/ (ax_, cor_, sag_,
                fMRI_MB_); the spherical-phantom series (names with PEres, PFOV or BW) are left out
  --functional  github.com/datalad/example-dicom-functional (PDDL): BOLD EPI of one subject, DICOM, read with
                the project's own reader (scans/dicom_series.py); its first --functional-volumes volumes
  --philips-dwi github.com/neurolabusc/dcm_qa_philips_dwi (BSD-2; optional): diffusion EPI of one human head,
                2 mm, 5 volumes of b = 0 and 12 of b = 1000, classic gzip-compressed DICOM; each volume is the
                slices of one (b-value number, gradient number) pair of Philips' private tags (2005,1412) and
                (2005,1413), as the dataset's README describes; training only (no second subject)
Each scan's slices in its acquisition plane (the plane of its two finest axes: fine in 2D clinical scans) are
written as 8-bit greyscale PNG on the scan's own 0.5-99.5 percentile range (volumes.robust_range, as
predict.py scales a volume), every --step-th slice holding at least --min-tissue of tissue:
  <output-dir>/train/<contrast>/<subject>_<scan>_<index>.png   training subjects (train.py --extra-train-dir)
  <output-dir>/test/<contrast>/<subject>_<scan>_<index>.png    held-out subjects: the MS patients of --test-ms
                                                               and the functional subject (EPI), three slices
                                                               a scan near its middle
  <output-dir>/test_volumes/<subject>_<scan>.nii.gz  the held-out MS scans themselves (tools/contrast_through_check.py)
and <output-dir>/split.json.  Scored by tools/contrast_check.py.  The data is not committed (data/ is git-ignored).
"""
import argparse
import gzip
import io
import json
import os
import re
import sys
import tempfile

import numpy as np
import pydicom
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_volumes import Source, load_bytes  # noqa: E402  (this folder is on the path when run as a script)
from scans import dicom_series, volumes  # noqa: E402

MS_SCAN = re.compile(r"^longitudinal/raw/(patient\d+)/(study\d)_(FLAIR|T2W)\.nii\.gz$")
EPI_HUMAN = re.compile(r"^Ref/((?:ax|cor|sag)_\w+|fMRI_MB_\w+)\.nii$")
PHANTOM = ("PEres", "PFOV", "BW")


def acquisition_planes(data, zooms):
    """(n, h, w) slices across the axis of the largest voxel (the slice axis of a 2D acquisition)."""
    axis = int(np.argmax(zooms[:3]))
    return np.moveaxis(data, axis, 0)


def to_uint8(plane, low, high):
    return np.clip(np.round((plane - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def slices_of(data, zooms, step, min_tissue, middle=None):
    """[(index, 8-bit slice)] of one 3D scan: every `step`-th slice with enough tissue, or with `middle`
    that many slices around its centre."""
    data = np.nan_to_num(np.asarray(data, np.float32))
    low, high = volumes.robust_range(data)
    planes = acquisition_planes(data, zooms)
    tissue = [k for k in range(len(planes)) if np.mean(planes[k] > low + 0.1 * (high - low)) >= min_tissue]
    if middle:
        centre = tissue[len(tissue) // 2] if tissue else len(planes) // 2
        picks = [k for k in (centre - 3, centre, centre + 3) if 0 <= k < len(planes)][:middle]
    else:
        picks = tissue[::step]
    return [(k, to_uint8(planes[k], low, high)) for k in picks]


def write_scan(out_dir, split, contrast, name, data, zooms, args):
    folder = os.path.join(out_dir, split, contrast)
    os.makedirs(folder, exist_ok=True)
    picked = slices_of(data, zooms, args.step, args.min_tissue, 3 if split == "test" else None)
    for k, plane in picked:
        Image.fromarray(plane).save(os.path.join(folder, f"{name}_{k:03d}.png"))
    return len(picked)


def ms_scans(source):
    for path in source.names():
        match = MS_SCAN.match(path)
        if match:
            yield path, match.group(1), match.group(2), {"FLAIR": "flair", "T2W": "t2"}[match.group(3)]


def epi_frames(image, count):
    """The first `count` 3D frames of a (3D or 4D) image, with its voxel sizes."""
    data = np.asanyarray(image.dataobj)
    frames = [data] if data.ndim == 3 else [data[..., t] for t in range(min(count, data.shape[3]))]
    return frames, [float(z) for z in image.header.get_zooms()[:3]]


def functional_volumes(source, count):
    """The functional subject's first `count` volumes, each read by the project's DICOM reader from the files of
    one time point (TemporalPositionIdentifier: the series holds all 156 time points at each slice position)."""
    names = sorted(name for name in source.names() if name.startswith("dicoms/"))
    found = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names[:count * 60]:  # the files are stored time point by time point, 35 slices each
            data = source.read(name)
            if data is None:
                continue
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            time_point = int(header.get("TemporalPositionIdentifier", 1))
            if time_point <= count:
                os.makedirs(os.path.join(folder, str(time_point)), exist_ok=True)
                with open(os.path.join(folder, str(time_point), os.path.basename(name)), "wb") as f:
                    f.write(data)
        for time_point in sorted(os.listdir(folder), key=int):
            files = sorted(os.path.join(folder, time_point, n) for n in os.listdir(os.path.join(folder, time_point)))
            series, _ = dicom_series.find_series(files)
            for item in series:
                image = dicom_series.load_series(item)
                found.append((image, np.asarray(image.dataobj, np.float32)))
    return found


def philips_dwi_volumes(source):
    """[(name, (n, h, w) volume)] of the Philips DWI series: its classic slices grouped into volumes by the
    private b-value and gradient numbers (2005,1412) and (2005,1413), each volume's slices in order along the
    slice normal."""
    groups = {}
    for name in source.names():
        if not (name.startswith("In/cl/DICOM/") and name.endswith(".gz")):
            continue
        data = source.read(name)
        if data is None:
            continue
        header = pydicom.dcmread(io.BytesIO(gzip.decompress(data)), force=True)
        if "PixelData" not in header or (0x2005, 0x1412) not in header:
            continue  # the presentation state and the DICOMDIR-like files hold no slice
        normal = dicom_series.normal_of(np.asarray(header.ImageOrientationPatient, float))
        position = float(np.dot(np.asarray(header.ImagePositionPatient, float), normal))
        pixels = header.pixel_array.astype(np.float32) * float(header.get("RescaleSlope", 1) or 1) \
            + float(header.get("RescaleIntercept", 0) or 0)  # float32 math: the slices the shipped model saw
        key = (int(header[0x2005, 0x1412].value), int(header[0x2005, 0x1413].value))
        groups.setdefault(key, []).append((position, pixels))
    return [(f"philipsdwi_b{b}_g{g}", np.stack([p for _, p in sorted(slices, key=lambda s: s[0])]))
            for (b, g), slices in sorted(groups.items())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ms", required=True, help="muschellij2/open_ms_data's bare git directory")
    parser.add_argument("--dcm-qa", required=True, help="neurolabusc/dcm_qa's bare git directory")
    parser.add_argument("--functional", required=True, help="datalad/example-dicom-functional's bare git directory")
    parser.add_argument("--philips-dwi", default=None, help="neurolabusc/dcm_qa_philips_dwi's bare git directory")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "data", "contrasts"))
    parser.add_argument("--test-ms", nargs="+", default=["patient04", "patient19"],
                        help="MS patients held out for scoring (by subject)")
    parser.add_argument("--step", type=int, default=1, help="every STEP-th slice of a training scan")
    parser.add_argument("--min-tissue", type=float, default=0.05, help="share of a slice above 10%% of its range")
    parser.add_argument("--epi-frames", type=int, default=4, help="frames of each dcm_qa EPI series for training")
    parser.add_argument("--functional-volumes", type=int, default=2, help="volumes of the functional subject")
    args = parser.parse_args(argv)
    counts = {}

    def add(split, contrast, n):
        counts.setdefault(split, {}).setdefault(contrast, 0)
        counts[split][contrast] += n

    ms = Source(args.ms, mirror=True)
    for path, patient, study, contrast in ms_scans(ms):
        data = ms.read(path)
        if data is None:
            continue
        image = load_bytes(data, ".nii.gz")
        split = "test" if patient in args.test_ms else "train"
        if split == "test":
            os.makedirs(os.path.join(args.output_dir, "test_volumes"), exist_ok=True)
            with open(os.path.join(args.output_dir, "test_volumes", os.path.basename(path).replace(
                    "study", f"{patient}_study")), "wb") as f:
                f.write(data)
        add(split, contrast, write_scan(args.output_dir, split, contrast, f"{patient}_{study}",
                                        np.asanyarray(image.dataobj), image.header.get_zooms(), args))
    qa = Source(args.dcm_qa, mirror=True)
    for path in qa.names():
        match = EPI_HUMAN.match(path)
        if not match or any(word in path for word in PHANTOM):
            continue
        data = qa.read(path)
        if data is None:
            continue
        frames, zooms = epi_frames(load_bytes(data, ".nii"), args.epi_frames)
        for t, frame in enumerate(frames):
            add("train", "epi", write_scan(args.output_dir, "train", "epi", f"dcmqa_{match.group(1)}_t{t}", frame,
                                           zooms, args))
    for v, (image, data) in enumerate(functional_volumes(Source(args.functional, mirror=True),
                                                         args.functional_volumes)):
        frames = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        for t, frame in enumerate(frames):
            add("test", "epi", write_scan(args.output_dir, "test", "epi", f"functional_v{v}_t{t}", frame, zooms, args))
    if args.philips_dwi:
        for name, volume in philips_dwi_volumes(Source(args.philips_dwi, mirror=True)):
            add("train", "dwi", write_scan(args.output_dir, "train", "dwi", name, volume, (2.0, 2.0, 2.0), args))
    record = {"sources": {"ms": "muschellij2/open_ms_data (CC-BY)", "dcm_qa": "neurolabusc/dcm_qa (BSD-2)",
                          "functional": "datalad/example-dicom-functional (PDDL)",
                          **({"philips_dwi": "neurolabusc/dcm_qa_philips_dwi (BSD-2)"} if args.philips_dwi else {})},
              "test_subjects": {"ms": args.test_ms, "epi": "the functional subject"}, "slices": counts}
    with open(os.path.join(args.output_dir, "split.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
