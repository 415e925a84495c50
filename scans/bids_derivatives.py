"""A BIDS dataset in, a BIDS derivatives dataset out (predict.py --bids), as BIDS Apps do.

Inputs: every anatomical NIfTI (`sub-<label>[/ses-<label>]/anat/*.nii[.gz]`)
of the chosen participants, of the chosen suffixes (T1w, FLAIR, ...); other
data types (func/, dwi/, ...) are left alone.  Outputs go to the same relative
folder of the output dataset, named as the source with one entity added before
the suffix, `desc-<method>` (`desc-qualityx4` in-plane,
`desc-qualitythroughx<F>` through-plane, `espcn...` for the ESPCN; BIDS keeps `desc` for exactly this:
what processing distinguishes a derivative), e.g.
`sub-01/ses-1/anat/sub-01_ses-1_desc-qualityx4_T1w.nii.gz`.  Beside each, the
JSON sidecar carries the source sidecar's fields that still hold, our
provenance (provenance.py) and `Sources` as a BIDS URI into the raw dataset.

`dataset_description.json` is written atomically, its GeneratedBy naming the
network that ran: jobs for different participants may run into one output
dataset at once (a cluster's job array); each of one command writes the same
description under a temporary name and renames it, so none sees a
half-written file, and none touches another's outputs.  A later command with
the other network adds its own GeneratedBy entry.
"""
import json
import os
import re

from common.atomic_files import write_json
import constants
from scans import provenance

BIDS_VERSION = "1.9.0"
ENTITY = "desc"  # the entity that marks a super-resolved output
# Source sidecar fields that no longer describe a super-resolved volume: its grid changed.
GRID_FIELDS = ("SliceThickness", "SpacingBetweenSlices", "ReconMatrixPE", "ImageType", "RawImage",
               "ImageOrientationPatientDICOM", "ImageOrientationText", "ConversionSoftware",
               "ConversionSoftwareVersion")
NIFTI = re.compile(r"^(sub-[a-zA-Z0-9]+)(_.+)?_([a-zA-Z0-9]+)\.nii(\.gz)?$")


def participant_labels(labels):
    """Labels as given (with or without "sub-") to bare labels; ValueError in words for a bad one."""
    bare = []
    for label in labels or ():
        name = label[4:] if label.startswith("sub-") else label
        if not re.fullmatch(r"[a-zA-Z0-9]+", name):
            raise ValueError(f"--participant-label {label}: a BIDS label is letters and digits only")
        bare.append(name)
    return bare


def find_anatomical(bids_dir, labels=(), suffixes=()):
    """Sorted paths of the anatomical NIfTIs of participants `labels` (all when empty) with `suffixes` (all).

    ValueError in words when bids_dir is not a BIDS dataset or a label names no participant.
    """
    if not os.path.isfile(os.path.join(bids_dir, "dataset_description.json")):
        raise ValueError(f"--bids {bids_dir}: not a BIDS dataset (no dataset_description.json)")
    present = sorted(name[4:] for name in os.listdir(bids_dir)
                     if name.startswith("sub-") and os.path.isdir(os.path.join(bids_dir, name)))
    missing = [label for label in labels if label not in present]
    if missing:
        raise ValueError(f"--participant-label: no participant {', '.join('sub-' + m for m in missing)} in "
                         f"{bids_dir} (it has {', '.join('sub-' + p for p in present) or 'none'})")
    found = []
    for label in labels or present:
        subject = os.path.join(bids_dir, f"sub-{label}")
        sessions = [os.path.join(subject, name) for name in sorted(os.listdir(subject)) if name.startswith("ses-")]
        for folder in [subject] + sessions:
            anat = os.path.join(folder, "anat")
            if not os.path.isdir(anat):
                continue
            for name in sorted(os.listdir(anat)):
                match = NIFTI.match(name)
                if match and (not suffixes or match.group(3) in suffixes):
                    found.append(os.path.join(anat, name))
    return found


def output_path(bids_dir, source, out_dir, method, suffix=".nii.gz"):
    """Where the derivative of `source` goes: its relative folder in out_dir, `desc-<method>` before its suffix."""
    relative = os.path.relpath(os.path.dirname(source), bids_dir)
    match = NIFTI.match(os.path.basename(source))
    entities = [part for part in (match.group(2) or "").split("_") if part and not part.startswith(f"{ENTITY}-")]
    name = "_".join([match.group(1), *entities, f"{ENTITY}-{method}", match.group(3)]) + suffix
    return os.path.join(out_dir, relative, name)


def method_label(tag):
    """A BIDS label (letters and digits) for an output tag: quality_x4 -> qualityx4, espcn_through_x5 ->
    espcnthroughx5, quality_through_1.25mm -> qualitythrough1p25mm."""
    return re.sub(r"[^a-zA-Z0-9]", "", tag.replace(".", "p"))


def carried_sidecar(source):
    """The source's sidecar fields that still hold for a super-resolved volume ({} when it has none)."""
    path = provenance.sidecar_path(source)
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in fields.items() if key not in GRID_FIELDS} if isinstance(fields, dict) \
        else {}


def bids_uri(bids_dir, path):
    return f"bids:raw:{os.path.relpath(path, bids_dir)}"


def write_description(bids_dir, out_dir, method):
    """The output dataset's dataset_description.json, written whole (atomically); `method` names the network
    that runs (e.g. "Quality network in-plane").  An existing one is kept, with this method added to its
    GeneratedBy when it is not there yet (a dataset may hold both networks' outputs)."""
    path = os.path.join(out_dir, "dataset_description.json")
    generated = {"Name": constants.PROJECT_NAME, "Version": constants.VERSION,
                 "Description": f"{method} super-resolution of anatomical MRI"}
    try:
        with open(path, encoding="utf-8") as f:
            description = json.load(f)
    except (OSError, ValueError):
        description = None
    if isinstance(description, dict):
        if description.get("DatasetType") != "derivative" or generated in description.get("GeneratedBy", []):
            return path  # another dataset's description is never touched
        description["GeneratedBy"] = list(description.get("GeneratedBy", [])) + [generated]
    else:
        description = {
            "Name": f"{constants.PROJECT_NAME} super-resolution",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [generated],
            "SourceDatasets": [{"URL": "file://" + os.path.abspath(bids_dir)}],
            "DatasetLinks": {"raw": "file://" + os.path.abspath(bids_dir)},
        }
    os.makedirs(out_dir, exist_ok=True)
    write_json(path, description)
    return path
