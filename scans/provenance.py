"""What made an output: the JSON sidecar written beside every NIfTI and MGH volume predict.py writes.

A super-resolved volume looks like any other; its sidecar (`<stem>.json`
beside `<stem>.nii.gz`, as BIDS and dcm2niix place them) records its source,
the model file and its SHA-256, the network, the factors, precision, ensemble
and edges, the through-plane adaptation, the project's version, and the voxel
sizes and slice thickness of input and output, so a result can be traced and
repeated.
"""
import hashlib
import os

import numpy as np

from common.atomic_files import write_json
import constants

SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")


def sidecar_path(volume_path):
    """`<stem>.json` beside a volume file: where BIDS and dcm2niix keep a volume's sidecar, and ours go."""
    for suffix in SUFFIXES:
        if volume_path.lower().endswith(suffix):
            return volume_path[:-len(suffix)] + ".json"
    return volume_path + ".json"


def file_sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def voxel_sizes(image):
    return [round(float(z), 6) for z in image.header.get_zooms()[:3]]


def record(source, model_path, network, factors, settings, input_image, output_image, slice_thickness=None):
    """The sidecar's fields for one output.

    Args:
        source: the input (a path, or a DICOM series' folder).
        model_path: the .keras file the model came from (none where it was trained from scratch on the volume);
            network: its kind in words.
        factors: per-axis factors of the output grid against the input's.
        settings: {name: value} of what else decided the output (precision, ensemble, edges, adaptation...).
        input_image, output_image: the nibabel images (their voxel sizes are recorded).
        slice_thickness: (input, output) slice thickness in mm, or None when they are the voxel size.
    """
    fields = {
        "Sources": [os.path.abspath(source)],
        "GeneratedBy": {"Name": constants.PROJECT_NAME, "Version": constants.VERSION},
        "Model": {"File": os.path.abspath(model_path) if os.path.isfile(model_path) else None,  # None: trained
                  "SHA256": file_sha256(model_path) if os.path.isfile(model_path) else None,  # on the volume alone
                  "Network": network},
        "Factors": [round(float(f), 6) for f in factors],
        **settings,
        "InputVoxelSize": voxel_sizes(input_image),
        "VoxelSize": voxel_sizes(output_image),
    }
    if slice_thickness is not None:
        fields["InputSliceThickness"], fields["SliceThickness"] = (round(float(t), 6) for t in slice_thickness)
    return {key: to_json(value) for key, value in fields.items()}


def to_json(value):
    """numpy numbers as plain ones, so json can write them."""
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value


def write_sidecar(volume_path, fields):
    """Writes `fields` as the sidecar of `volume_path`, atomically; returns its path."""
    path = sidecar_path(volume_path)
    write_json(path, fields)
    return path
