"""The default network and what outputs call it: the quality network for the user's scans, the ESPCN for the
seed's test split (tests/test_pretrained.py), a model trained into --output-dir first; outputs named
<stem>_<network>_..., a figure beside each volume output, BIDS desc-<network>..., the DICOM equipment's model
name, train.py's <network>.keras and the resume fingerprint's --network."""
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from common import model_files
import constants
import predict
from through_plane import model_source
import train
from training import backups
from conftest import ROOT
from test_backups import new_state
from test_dicom import write_files
from test_dicom_predict import smooth_head

SHIPPED_ESPCN = os.path.join(ROOT, "pretrained", "espcn_x4.keras")


def a_scan(path, size=(16, 12)):
    """A small 8-bit slice: a bright blob with some texture on black."""
    rows, cols = np.mgrid[0:size[1], 0:size[0]]
    values = 200 * np.exp(-((rows - size[1] / 2) ** 2 + (cols - size[0] / 2) ** 2) / 30) + 20 * (cols % 3)
    Image.fromarray(values.astype(np.uint8)).save(path)
    return str(path)


def a_volume(path, shape=(16, 12, 4), zooms=(1.0, 1.0, 3.0), seed=0):
    data = smooth_head(shape, seed)
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), str(path))
    return str(path)


# --- Which model runs, and the names it gives ------------------------------------------------------------------

def test_the_users_image_gets_the_quality_network_unless_the_espcn_is_asked_for_and_both_outputs_coexist(
        tmp_path, capsys):
    scan = a_scan(tmp_path / "scan.png")
    out = tmp_path / "out"
    assert constants.DEFAULT_NETWORK == "quality"
    assert predict.main(["--input", scan, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model: Quality network, {model_files.shipped_path('quality')} (the shipped Quality network, the default)" \
        in printed, printed
    quality = (out / "scan_quality_x4.png").read_bytes()

    assert predict.main(["--input", scan, "--output-dir", str(out), "--model", "espcn"]) == 0
    printed = capsys.readouterr().out
    assert f"model: ESPCN, {SHIPPED_ESPCN} (the shipped ESPCN, --model espcn)" in printed, printed
    assert sorted(os.listdir(out)) == ["scan_espcn_x4.png", "scan_quality_x4.png"]  # no figure for a 2D image
    assert (out / "scan_quality_x4.png").read_bytes() == quality, "the second run overwrote the first's output"
    with Image.open(out / "scan_espcn_x4.png") as espcn, Image.open(out / "scan_quality_x4.png") as sharper:
        assert espcn.size == sharper.size == (64, 48)
        assert not np.array_equal(np.asarray(espcn), np.asarray(sharper))  # two networks, two results

    mine = tmp_path / "mine.keras"  # --model PATH: named for the network the file holds, not for its file name
    shutil.copy(SHIPPED_ESPCN, mine)
    assert predict.main(["--input", scan, "--output-dir", str(tmp_path / "file"), "--model", str(mine)]) == 0
    assert f"model: ESPCN, {mine} (given by --model)" in capsys.readouterr().out
    assert os.listdir(tmp_path / "file") == ["scan_espcn_x4.png"]


def test_a_model_trained_into_the_output_dir_is_preferred_and_named(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(SHIPPED_ESPCN, out / "espcn.keras")  # as train.py writes it
    scan = a_scan(tmp_path / "scan.png")
    assert predict.main(["--input", scan, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model: ESPCN, {out / 'espcn.keras'} (trained into {out}, preferred to the shipped models)" in printed, \
        printed
    assert sorted(os.listdir(out)) == ["espcn.keras", "scan_espcn_x4.png"]


def test_in_plane_model_takes_a_named_network_a_file_a_trained_model_then_the_default(tmp_path):
    """model_files.in_plane_model alone (no model is loaded): the order in which a run's model is chosen."""
    out = str(tmp_path)
    shipped = {network: model_files.shipped_path(network) for network in constants.NETWORKS}
    assert model_files.in_plane_model(None, out) == (shipped["quality"], "the shipped Quality network, the default")
    assert model_files.in_plane_model(None, out, constants.SEED_NETWORK)[0] == shipped["espcn"]
    open(os.path.join(out, "espcn.keras"), "w").close()
    assert model_files.in_plane_model(None, out)[0] == os.path.join(out, "espcn.keras")  # trained beats shipped
    open(os.path.join(out, "quality.keras"), "w").close()
    # both trained: the job's default network first
    assert model_files.in_plane_model(None, out)[0] == os.path.join(out, "quality.keras")
    assert model_files.in_plane_model(None, out, "espcn")[0] == os.path.join(out, "espcn.keras")
    # a named network is the shipped one, whatever was trained; a file is taken as it is
    assert model_files.in_plane_model("espcn", out) == (shipped["espcn"], "the shipped ESPCN, --model espcn")
    assert model_files.in_plane_model("quality", out)[0] == shipped["quality"]
    assert model_files.in_plane_model("x/y.keras", out) == ("x/y.keras", "given by --model")


def test_model_file_names():
    assert model_files.shipped_path("espcn") == os.path.join(ROOT, "pretrained", "espcn_x4.keras")
    assert model_files.shipped_path("quality") == os.path.join(ROOT, "pretrained", "quality_x4.keras")
    assert model_files.shipped_path("quality", 5) == os.path.join(ROOT, "pretrained", "quality_through_x5.keras")
    assert model_files.shipped_name("espcn", 3) == "pretrained/espcn_through_x3.keras"
    assert [model_files.trained_name(n) for n in ("espcn", "quality")] == ["espcn.keras", "quality.keras"]
    assert model_files.trained_name("quality", 3) == "quality_through_x3.keras"
    assert [model_files.label(n) for n in ("espcn", "quality")] == ["ESPCN", "Quality network"]
    # every shipped model the names promise is there: each network in-plane, the quality network's through-plane
    # factors, the ESPCN's whole range
    for network in constants.NETWORKS:
        assert os.path.isfile(model_files.shipped_path(network)), network
    for factor in constants.QUALITY_THROUGH_PLANE_FACTORS:
        assert os.path.isfile(model_files.shipped_path("quality", factor)), factor
    for factor in constants.THROUGH_PLANE_FACTORS:
        assert os.path.isfile(model_files.shipped_path("espcn", factor)), factor


# --- The figure beside each volume output ----------------------------------------------------------------------

def test_a_volume_output_gets_a_figure_of_its_three_planes_unless_no_figures(tmp_path):
    volume = a_volume(tmp_path / "v.nii.gz")
    mgh = tmp_path / "h.mgz"
    nib.save(nib.MGHImage(smooth_head((16, 12, 4), 1).astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])), str(mgh))
    out = tmp_path / "out"
    assert predict.main(["--input", volume, str(mgh), "--output-dir", str(out), "--precision", "float32"]) == 0
    assert sorted(os.listdir(out)) == ["h_quality_x4.json", "h_quality_x4.mgz", "h_quality_x4_planes.png",
                                       "v_quality_x4.json", "v_quality_x4.nii.gz", "v_quality_x4_planes.png"]
    for name in ("v_quality_x4_planes.png", "h_quality_x4_planes.png"):
        with Image.open(out / name) as figure:
            assert figure.format == "PNG"
            width, height = figure.size
            assert width > height > 100, figure.size  # three planes across, input above output
            pixels = np.asarray(figure.convert("L"))
        assert pixels.std() > 10, "a blank figure"

    bare = tmp_path / "bare"
    assert predict.main(["--input", volume, str(mgh), "--output-dir", str(bare), "--model", "espcn",
                         "--no-figures"]) == 0
    assert sorted(os.listdir(bare)) == ["h_espcn_x4.json", "h_espcn_x4.mgz", "v_espcn_x4.json", "v_espcn_x4.nii.gz"]


# --- BIDS: desc-<network>..., GeneratedBy, figures/ ----------------------------------------------------------------

def a_bids_dataset(root):
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    a_volume(anat / "sub-01_T1w.nii.gz", shape=(16, 12, 4), zooms=(1.0, 1.0, 4.0))
    (anat / "sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3}))
    return root


def generated_by(description):
    return {"Name": constants.PROJECT_NAME, "Version": constants.VERSION,
            "Description": f"{description} super-resolution of anatomical MRI"}


def test_bids_outputs_name_the_network_and_each_network_adds_its_generated_by(tmp_path):
    raw = a_bids_dataset(tmp_path / "raw")
    out = tmp_path / "derivatives" / "sr"
    anat, figures = out / "sub-01" / "anat", out / "sub-01" / "figures"
    assert predict.main(["--bids", str(raw), "--output-dir", str(out), "--precision", "float32"]) == 0
    assert sorted(os.listdir(anat)) == ["sub-01_desc-qualityx4_T1w.json", "sub-01_desc-qualityx4_T1w.nii.gz"]
    assert os.listdir(figures) == ["sub-01_desc-qualityx4_T1w.png"]  # where BIDS Apps keep figures, not in anat/
    with Image.open(figures / "sub-01_desc-qualityx4_T1w.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > figure.size[1]
    description = json.load(open(out / "dataset_description.json"))
    assert description["GeneratedBy"] == [generated_by("Quality network in-plane")]
    quality = (anat / "sub-01_desc-qualityx4_T1w.nii.gz").read_bytes()

    for _ in range(2):  # the ESPCN into the same dataset, twice: one entry more, not two
        assert predict.main(["--bids", str(raw), "--output-dir", str(out), "--model", "espcn",
                             "--precision", "float32"]) == 0
    assert sorted(os.listdir(anat)) == ["sub-01_desc-espcnx4_T1w.json", "sub-01_desc-espcnx4_T1w.nii.gz",
                                        "sub-01_desc-qualityx4_T1w.json", "sub-01_desc-qualityx4_T1w.nii.gz"]
    assert sorted(os.listdir(figures)) == ["sub-01_desc-espcnx4_T1w.png", "sub-01_desc-qualityx4_T1w.png"]
    assert (anat / "sub-01_desc-qualityx4_T1w.nii.gz").read_bytes() == quality
    description = json.load(open(out / "dataset_description.json"))
    assert description["GeneratedBy"] == [generated_by("Quality network in-plane"), generated_by("ESPCN in-plane")]
    assert description["DatasetType"] == "derivative" and description["SourceDatasets"]

    # through-plane by default: the quality network's x4 (4 mm slices of 1 mm pixels)
    assert predict.main(["--bids", str(raw), "--output-dir", str(out), "--through-plane", "--no-adapt",
                         "--precision", "float32"]) == 0
    assert (anat / "sub-01_desc-qualitythroughx4_T1w.nii.gz").exists()
    assert (figures / "sub-01_desc-qualitythroughx4_T1w.png").exists()
    description = json.load(open(out / "dataset_description.json"))
    assert description["GeneratedBy"][2:] == [generated_by("Quality network through-plane")]
    sidecar = json.load(open(anat / "sub-01_desc-qualitythroughx4_T1w.json"))
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"] and sidecar["RepetitionTime"] == 2.3


def test_method_label_is_the_tag_in_letters_and_digits():
    from scans import bids_derivatives

    assert bids_derivatives.method_label("quality_x4") == "qualityx4"
    assert bids_derivatives.method_label("espcn_through_x5") == "espcnthroughx5"
    assert bids_derivatives.method_label("quality_through_1.25mm") == "qualitythrough1p25mm"


# --- DICOM: the equipment's model name is the network ---------------------------------------------------------

@pytest.mark.parametrize("flags, network, label", [([], "quality", "Quality network"),
                                                    (["--model", "espcn"], "espcn", "ESPCN")])
def test_a_dicom_output_series_names_its_network(tmp_path, flags, network, label):
    folder = tmp_path / "T1"
    write_files(str(folder), smooth_head((24, 20, 3)), ManufacturerModelName="Skyra")
    out = tmp_path / "out"
    assert predict.main(["--input", str(folder), "--output-dir", str(out), "--output-format", "dicom",
                         "--precision", "float32", *flags]) == 0
    name = f"T1_{network}_x4"
    assert sorted(os.listdir(out)) == [name, f"{name}_planes.png"]  # the figure beside the series' folder
    files = [pydicom.dcmread(out / name / file) for file in sorted(os.listdir(out / name))]
    assert len(files) == 3
    assert {f.ManufacturerModelName for f in files} == {label}  # not the scanner's
    assert files[0].SeriesDescription == f"T1 axial {label} x4"
    assert files[0].DerivationDescription.startswith(f"{label} x4 in-plane")
    assert model_files.shipped_name(network).split("/")[-1] in files[0].SoftwareVersions


def test_a_series_written_without_a_network_has_no_equipment_model_name(tmp_path):
    from scans import dicom_series
    from scans import volumes

    write_files(str(tmp_path / "in"), smooth_head((12, 10, 3)), ManufacturerModelName="Skyra")
    series = dicom_series.find_series(sorted(str(p) for p in (tmp_path / "in").iterdir()))[0][0]
    image = dicom_series.load_series(series)
    stored = np.repeat(np.repeat(np.asarray(image.dataobj.get_unscaled()), 2, axis=0), 2, axis=1)
    dicom_series.write_series(series, volumes.resampled_image(image, stored, (2, 2, 1)), str(tmp_path / "out"),
                              " copy")
    first = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0])
    assert "ManufacturerModelName" not in first and first.Manufacturer == constants.PROJECT_NAME


# --- Through-plane without --model: the quality network's factors, the ESPCN's for the others -------------------

def test_through_plane_by_default_takes_the_quality_networks_nearest_factor_or_the_espcns_asked_for(
        tmp_path, capsys):
    # 5 mm slices of 1 mm pixels: no quality network of x5 is shipped; x4 and x6 are equally near, and the tie
    # goes to the smaller factor (fewer working voxels)
    source = tmp_path / "axial_5mm.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(3).integers(0, 900, (24, 20, 4)).astype(np.int16),
                             np.diag([1.0, 1.0, 5.0, 1.0])), str(source))
    assert 5 not in constants.QUALITY_THROUGH_PLANE_FACTORS and {4, 6} <= set(constants.QUALITY_THROUGH_PLANE_FACTORS)
    common = ["--input", str(source), "--through-plane", "--no-adapt", "--precision", "float32"]
    assert predict.main([*common, "--output-dir", str(tmp_path / "nearest")]) == 0
    printed = capsys.readouterr().out
    assert "model: Quality network through-plane (shipped, the default)" in printed, printed
    out = nib.load(str(tmp_path / "nearest" / "axial_5mm_quality_through_x4.nii.gz"))
    assert out.shape == (24, 20, 16) and np.allclose(out.header.get_zooms(), (1.0, 1.0, 1.25))
    sidecar = json.load(open(tmp_path / "nearest" / "axial_5mm_quality_through_x4.json"))
    assert sidecar["Model"]["File"] == model_files.shipped_path("quality", 4)

    # 6 mm slices of 0.5 mm pixels (ratio 12, zero-filled clinical pixels): the quality network's x6, on a
    # working grid of 1 mm
    wide = tmp_path / "axial_6mm.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(4).integers(0, 900, (40, 36, 4)).astype(np.int16),
                             np.diag([0.5, 0.5, 6.0, 1.0])), str(wide))
    assert predict.main(["--input", str(wide), *common[2:], "--output-dir", str(tmp_path / "wide")]) == 0
    out = nib.load(str(tmp_path / "wide" / "axial_6mm_quality_through_x6.nii.gz"))
    assert out.shape == (40, 36, 24) and np.allclose(out.header.get_zooms(), (0.5, 0.5, 1.0))
    sidecar = json.load(open(tmp_path / "wide" / "axial_6mm_quality_through_x6.json"))
    assert sidecar["Model"]["File"] == model_files.shipped_path("quality", 6)
    capsys.readouterr()

    # x5 asked for: the shipped ESPCN's x5 stands in, said so, and named in the output
    assert predict.main([*common, "--through-plane-factor", "5", "--output-dir", str(tmp_path / "x5")]) == 0
    printed = capsys.readouterr().out
    assert "the ESPCN's stands in" in printed, printed
    assert sorted(os.listdir(tmp_path / "x5")) == ["axial_5mm_espcn_through_x5.json",
                                                    "axial_5mm_espcn_through_x5.nii.gz",
                                                    "axial_5mm_espcn_through_x5_planes.png"]
    assert nib.load(str(tmp_path / "x5" / "axial_5mm_espcn_through_x5.nii.gz")).shape == (24, 20, 20)
    sidecar = json.load(open(tmp_path / "x5" / "axial_5mm_espcn_through_x5.json"))
    assert sidecar["Model"]["File"] == model_files.shipped_path("espcn", 5)

    # --model quality named: no stand-in, x5 refused in one line
    assert predict.main([*common, "--through-plane-factor", "5", "--model", "quality",
                         "--output-dir", str(tmp_path / "refused")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "quality_through_x5.keras" in errors[0], errors
    assert not os.path.exists(tmp_path / "refused") or os.listdir(tmp_path / "refused") == []


def test_model_source_networks_per_factor():
    default, quality, espcn = (model_source.ModelSource(model) for model in (None, "quality", "espcn"))
    assert default.describe() == "Quality network through-plane (shipped, the default)"
    assert quality.describe() == "Quality network through-plane (shipped, --model quality)"
    assert espcn.describe() == "ESPCN through-plane (shipped, --model espcn)"
    assert [default.network_for(f) for f in (2, 3, 4, 5, 6)] == ["espcn", "quality", "quality", "espcn", "quality"]
    assert [quality.network_for(f) for f in (4, 5)] == ["quality", "quality"]  # refused later, never replaced
    assert [espcn.network_for(f) for f in (3, 4)] == ["espcn", "espcn"]
    assert default.path_for(5) == model_files.shipped_path("espcn", 5)
    assert default.path_for(3) == model_files.shipped_path("quality", 3)


# --- train.py: <network>.keras, and --network in the resume fingerprint ---------------------------------------

def test_the_resume_fingerprint_stores_the_network_and_reads_an_old_backups_none_as_the_espcn(tmp_path):
    def settings_of(*flags):
        args = train.parse_args(["--output-dir", str(tmp_path), *flags])
        return args, train.run_settings(args, "float32", False, 1, ([], []))

    espcn_args, espcn = settings_of()
    quality_args, quality = settings_of("--network", "quality")
    assert espcn["--network"] == "espcn" and quality["--network"] == "quality"

    # a backup of an earlier train.py, which stored None for the ESPCN
    model, state = new_state()
    state.record({"epoch": 0, "val_loss": 1.0}, model)
    backup_dir = backups.backup_dir_of(str(tmp_path))
    backups.write_backup(state, {**espcn, "--network": None}, backup_dir)
    latest = backups.latest_backup(backup_dir)
    assert train.backup_to_resume(espcn_args, espcn, chief=True) == latest  # the ESPCN's command resumes it
    with pytest.raises(ValueError, match=r"--network \(backup 'espcn', now 'quality'\)"):
        train.backup_to_resume(quality_args, quality, chief=True)
    assert backups.latest_backup(backup_dir) == latest  # refused, and left as it was
    assert backups.read_settings(latest)["--network"] is None


def test_auto_precision_leaves_bfloat16_where_onednn_is_capped_below_it(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN run as on an AVX2-only CPU, which has no bfloat16 convolution:
    auto must then pick float32, as it does on such a CPU (a bfloat16 model would fail to run).  On an Intel
    CPU a cap below AMX leaves AVX-512 BF16 alone, where float32 is the faster."""
    import modules
    monkeypatch.setattr(modules, "has_gpu", lambda: False)
    monkeypatch.setattr(modules, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(modules, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert modules.choose_precision("auto") == "mixed_bfloat16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert modules.choose_precision("auto") == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert modules.choose_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(modules, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(modules, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert modules.choose_precision("auto") == "mixed_bfloat16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert modules.choose_precision("auto") == "float32"


def test_a_singular_affine_still_gets_its_figure(tmp_path):
    """An affine with a zero column (sform-only files can carry one) orients no axis: the figure shows the voxel
    axes as they are instead of failing the input after its volume was written."""
    from scans import volume_figures
    data = smooth_head((16, 12, 4), 3)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 1] = 0.0
    path = volume_figures.save_planes_figure(data, np.repeat(data, 2, axis=2), affine, (1.0, 1.0, 1.5), "odd",
                                             str(tmp_path / "odd.png"))
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.size[0] > figure.size[1]
