"""The JSON sidecar beside every NIfTI/MGH output (issue 31 item 2): what made it, checked against the files."""
import hashlib
import json
import os

import nibabel as nib
import numpy as np

import constants
import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_an_in_plane_output_names_its_source_and_model(tmp_path):
    source = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 10, 3)).astype(np.float32),
                             np.diag([1.2, 1.2, 3.0, 1.0])), str(source))
    assert predict.main(["--input", str(source), "--output-dir", str(tmp_path / "out"), "--model", "espcn",
                         "--precision", "float32"]) == 0
    fields = json.load(open(tmp_path / "out" / "t1_espcn_x4.json"))
    model = os.path.join(ROOT, "pretrained", "espcn_x4.keras")
    assert fields["Sources"] == [str(source)]
    assert fields["Model"]["File"] == model and fields["Model"]["SHA256"] == sha256(model)
    assert fields["GeneratedBy"] == {"Name": constants.PROJECT_NAME, "Version": constants.VERSION}
    assert fields["Factors"] == [4, 4, 1] and fields["Precision"] == "float32" and fields["Ensemble"] == 1
    assert fields["InputVoxelSize"] == [1.2, 1.2, 3.0] and fields["VoxelSize"] == [0.3, 0.3, 3.0]
    assert fields["InputSliceThickness"] == fields["SliceThickness"] == 3.0


def test_a_through_plane_output_records_its_geometry_and_adaptation(tmp_path):
    source = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((20, 16, 5)).astype(np.float32),
                             np.diag([1.0, 1.0, 4.0, 1.0])), str(source))
    json.dump({"SliceThickness": 3.0}, open(tmp_path / "thick.json", "w"))
    assert predict.main(["--input", str(source), "--through-plane", "--adapt-steps", "20", "--model", "espcn",
                         "--through-plane-seconds", "600", "--output-dir", str(tmp_path / "out")]) == 0
    fields = json.load(open(tmp_path / "out" / "thick_espcn_through_x4.json"))
    model = os.path.join(ROOT, "pretrained", "espcn_through_x4.keras")
    assert fields["Model"]["SHA256"] == sha256(model) and "through-plane" in fields["Model"]["Network"]
    assert fields["Factors"] == [1, 1, 4] and fields["VoxelSize"] == [1.0, 1.0, 1.0]
    assert fields["InputSliceThickness"] == 3.0 and fields["SliceThickness"] == 1.0
    assert fields["ThicknessSource"] == "thick.json" and fields["AdaptationSteps"] == 20
    assert fields["Ensemble"] == constants.NETWORK_PRESETS["espcn"]["flips"]  # the ESPCN's default (the quality network: its own)
