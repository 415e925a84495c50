"""predict.py --bids (issue 31): a BIDS dataset in, a derivatives dataset that pybids indexes out."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

import predict

bids = pytest.importorskip("bids")  # pybids, a test dependency (requirements.txt)


def write_nifti(path, shape, zooms, sidecar=None, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype(np.float32) * 1000
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    if sidecar is not None:
        with open(path.replace(".nii.gz", ".json"), "w") as f:
            json.dump(sidecar, f)


@pytest.fixture()
def raw(tmp_path):
    """Two participants, one with two sessions, sidecars, and a bold run in func/."""
    root = tmp_path / "raw"
    root.mkdir()
    with open(root / "dataset_description.json", "w") as f:
        json.dump({"Name": "tiny", "BIDSVersion": "1.9.0"}, f)
    write_nifti(str(root / "sub-01/anat/sub-01_T1w.nii.gz"), (12, 10, 4), (1.0, 1.0, 4.0),
                {"RepetitionTime": 2.3, "SliceThickness": 4.0, "MagneticFieldStrength": 3})
    write_nifti(str(root / "sub-01/func/sub-01_task-rest_bold.nii.gz"), (8, 8, 4, 3), (3.0, 3.0, 3.0),
                {"RepetitionTime": 2.0, "TaskName": "rest"})
    write_nifti(str(root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"), (16, 12, 5), (1.0, 1.0, 4.0),
                {"SliceThickness": 3.0, "SpacingBetweenSlices": 4.0, "EchoTime": 0.01}, seed=1)
    write_nifti(str(root / "sub-02/ses-2/anat/sub-02_ses-2_FLAIR.nii.gz"), (16, 12, 5), (1.0, 1.0, 4.0), seed=2)
    return root


def test_each_participant_job_adds_its_outputs_to_one_derivatives_dataset(raw):
    out = raw / "derivatives" / "espcn"
    # the ESPCN (fast): the jobs' mechanics, not the network (tests/test_default_network.py: the default's names)
    assert predict.main(["--bids", str(raw), "--output-dir", str(out), "--participant-label", "01",
                         "--model", "espcn", "--precision", "float32"]) == 0
    assert predict.main(["--bids", str(raw), "--output-dir", str(out), "--participant-label", "sub-02",
                         "--through-plane", "--no-adapt", "--model", "espcn", "--precision", "float32"]) == 0
    description = json.load(open(out / "dataset_description.json"))
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "brain-mri-espcn" and description["SourceDatasets"]

    layout = bids.BIDSLayout(str(raw), derivatives=str(out))
    outputs = layout.get(scope="derivatives", extension=[".nii", ".nii.gz"])
    found = sorted((f.entities["subject"], f.entities.get("session"), f.entities["suffix"]) for f in outputs)
    assert found == [("01", None, "T1w"), ("02", "1", "T1w"), ("02", "2", "FLAIR")]
    assert all(f.entities.get("desc", "").startswith("espcn") for f in outputs)
    assert not layout.get(scope="derivatives", suffix="bold")

    t1 = json.load(open(out / "sub-01" / "anat" / "sub-01_desc-espcnx4_T1w.json"))
    assert t1["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert t1["RepetitionTime"] == 2.3 and t1["MagneticFieldStrength"] == 3  # carried forward
    assert t1["SliceThickness"] == 4.0 and "SHA256" in t1["Model"]
    session = json.load(open(out / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_desc-espcnthroughx4_T1w.json"))
    assert session["EchoTime"] == 0.01 and "SpacingBetweenSlices" not in session  # the grid changed
    assert session["InputSliceThickness"] == 3.0 and session["SliceThickness"] == 1.0


def test_an_unknown_participant_is_one_line(raw, capsys):
    assert predict.main(["--bids", str(raw), "--output-dir", str(raw / "derivatives" / "x"),
                         "--participant-label", "07"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sub-07" in err[0] and "sub-01" in err[0]
