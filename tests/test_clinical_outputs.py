"""Clinical outputs (issue 29): the brightest voxels kept, a derived series' header, non-MR refused, no patient
data left behind by a killed writer, thin slices, and dcm2niix reading what we write."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import nibabel as nib
import numpy as np
import pydicom
import pytest

from common import atomic_files
import predict
from scans import dicom_series
from scans import volumes
from test_dicom import a_volume, write_files
from test_dicom_predict import read_back, smooth_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def brightest_mean(values, share=0.001):
    flat = np.sort(np.asarray(values, np.float64).ravel())
    return flat[-max(1, int(len(flat) * share)):].mean()


def test_in_plane_volumes_keep_their_brightest_voxels(tmp_path):
    volume = smooth_head((40, 36, 8)).astype(np.float32)
    rng = np.random.default_rng(0)
    vessels = rng.integers(0, volume.size, volume.size // 500)  # 0.2 %, above the 99.5th percentile: vessels
    volume.flat[vessels] = 1826.0 * rng.uniform(0.8, 1.0, len(vessels))
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([0.9, 0.9, 3.0, 1.0])), str(tmp_path / "post.nii.gz"))
    assert predict.main(["--input", str(tmp_path / "post.nii.gz"), "--output-dir", str(tmp_path / "out"),
                         "--model", "espcn", "--precision", "float32"]) == 0
    out = np.asarray(nib.load(str(tmp_path / "out" / "post_espcn_x4.nii.gz")).dataobj)
    assert out.max() <= volume.max()  # limited to the input's range, never to a percentile of it
    assert brightest_mean(out) >= 0.9 * brightest_mean(volume), (brightest_mean(out), brightest_mean(volume))


@pytest.fixture()
def post_contrast(tmp_path):
    """A contrast-enhanced series: 1 mm slices 1.5 mm apart, ContrastBolusAgent, a scanner's equipment."""
    folder = tmp_path / "T1_post"
    write_files(str(folder), smooth_head((40, 36, 8)),
                positions=[np.array([-20.0, 15.0, 30.0 + 1.5 * k]) for k in range(8)],
                SliceThickness=1.0, ContrastBolusAgent="Gadobutrol", Manufacturer="ScannerCo",
                StationName="MR1", RepetitionTime=8.1, FlipAngle=12)
    return str(folder)


def test_a_derived_series_says_what_it_is(tmp_path, post_contrast):
    out = tmp_path / "out"
    assert predict.main(["--input", post_contrast, "--output-dir", str(out), "--output-format", "dicom",
                         "--model", "espcn", "--precision", "float32", "--uid-root", "1.2.826.0.1.99"]) == 0
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in glob.glob(post_contrast + "/*")}
    source = next(iter(sources.values()))
    files = [pydicom.dcmread(p) for p in sorted(glob.glob(str(out / "T1_post_espcn_x4" / "*.dcm")))]
    first = files[0]
    assert float(first.SliceThickness) == 1.0 and float(first.SpacingBetweenSlices) == 1.5
    assert first.ContrastBolusAgent == "Gadobutrol" and float(first.RepetitionTime) == 8.1
    assert first.StudyInstanceUID == source.StudyInstanceUID and first.SeriesInstanceUID != source.SeriesInstanceUID
    assert list(first.ImageType)[0] == "DERIVED" and "in-plane super-resolution" in first.DerivationDescription
    assert first.SeriesDescription == "T1 axial ESPCN x4"
    assert "espcn_x4.keras" in first.SoftwareVersions and first.Manufacturer != "ScannerCo"
    assert first.ManufacturerModelName == "ESPCN"
    assert "StationName" not in first
    assert {item.ReferencedSOPInstanceUID for item in first.SourceImageSequence} == set(sources)
    assert first.SeriesDate and first.ContentDate and first.SeriesTime
    assert all(f.SOPInstanceUID.startswith("1.2.826.0.1.99.") for f in files)
    assert first.SeriesInstanceUID.startswith("1.2.826.0.1.99.")


def test_a_quality_network_series_names_its_network(tmp_path, post_contrast):
    out = tmp_path / "out"
    assert predict.main(["--input", post_contrast, "--output-dir", str(out), "--output-format", "dicom",
                         "--model", "quality", "--ensemble", "1", "--precision", "float32"]) == 0
    first = pydicom.dcmread(sorted(glob.glob(str(out / "T1_post_quality_x4" / "*.dcm")))[0])
    assert first.SeriesDescription == "T1 axial Quality network x4"
    assert first.ManufacturerModelName == "Quality network"
    assert first.DerivationDescription.startswith("Quality network x4 in-plane")
    assert "quality_x4.keras" in first.SoftwareVersions


def test_a_through_plane_series_states_its_new_slices(tmp_path, post_contrast):
    out = tmp_path / "out"
    assert predict.main(["--input", post_contrast, "--output-dir", str(out), "--output-format", "dicom",
                         "--through-plane", "--no-adapt", "--through-plane-factor", "2", "--model", "espcn",
                         "--precision", "float32"]) == 0
    first = pydicom.dcmread(sorted(glob.glob(str(out / "T1_post_espcn_through_x2" / "*.dcm")))[0])
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == 0.75
    assert "1.5 mm apart and 1 mm thick" in first.DerivationDescription
    assert first.SeriesDescription == "T1 axial ESPCN through x2" and first.ManufacturerModelName == "ESPCN"


def test_a_pet_series_is_refused_in_one_line(tmp_path, capsys):
    folder = tmp_path / "PET"
    write_files(str(folder), a_volume(4, shape=(12, 10, 4)), Modality="PT",
                SOPClassUID=pydicom.uid.PositronEmissionTomographyImageStorage, description="FDG brain")
    code = predict.main(["--input", str(folder), "--output-dir", str(tmp_path / "out"), "--output-format", "both",
                         "--model", "espcn"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(lines) == 1 and "Modality PT" in lines[0] and "FDG brain" in lines[0], err
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


def test_thin_slices_at_positions_rounded_to_two_decimals_are_one_volume(tmp_path):
    positions = [np.array([-20.0, 15.0, round(30.0 + 0.45 * k, 2)]) for k in range(9)]  # 0.45 mm, rounded
    write_files(str(tmp_path / "thin"), a_volume(5, shape=(12, 10, 9)), positions=positions)
    image = read_back(str(tmp_path / "thin"))
    assert image.shape == (12, 10, 9) and np.isclose(image.header.get_zooms()[2], 0.45, atol=1e-3)


def test_a_killed_writer_leaves_no_partial_folder_after_the_next_run(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {ROOT!r})
        from common import atomic_files
        def write(folder):
            open(os.path.join(folder, "00001.dcm"), "wb").write(b"patient data")
            print("writing", flush=True)
            time.sleep(60)
        atomic_files.write_folder_atomically({str(out / "series")!r}, write)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    live = [name for name in os.listdir(out) if name.startswith(".partial-")]
    assert len(live) == 1
    assert atomic_files.remove_dead_partials(str(out)) == []  # a running writer's folder is left alone
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert os.listdir(out) == live  # SIGKILL: nothing could clean up
    assert predict.main(["--input", str(tmp_path / "missing.nii.gz"), "--output-dir", str(out)]) != 0
    assert os.listdir(out) == []  # the next run into the folder removed it


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix (pip install dcm2niix) not installed")
@pytest.mark.parametrize("flags, tag", [([], "espcn_x4"), (["--through-plane", "--no-adapt"], "espcn_through_x2")])
def test_dcm2niix_reads_each_derived_series_onto_our_nifti_voxels(tmp_path, post_contrast, flags, tag):
    out = tmp_path / "out"
    assert predict.main(["--input", post_contrast, "--output-dir", str(out), "--output-format", "both",
                         "--model", "espcn", "--precision", "float32", *flags]) == 0
    converted = tmp_path / "dcm2niix"
    converted.mkdir()
    done = subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "%s", "-o", str(converted),
                           str(out / f"T1_post_{tag}")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    theirs = nib.as_closest_canonical(nib.load(glob.glob(str(converted / "*.nii"))[0]))
    ours = nib.as_closest_canonical(volumes.load_volume(str(out / f"T1_post_{tag}.nii.gz"))[0])
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-3)
    np.testing.assert_allclose(theirs.get_fdata(), ours.get_fdata(), atol=1e-3)
