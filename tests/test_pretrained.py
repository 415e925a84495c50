"""The committed pretrained models: load safely, are used by default (the quality network on the user's files, the
ESPCN on the test split), and beat bicubic on unseen slices."""
import json
import os

import numpy as np
from PIL import Image

from common import model_files
import constants
import inference
from conftest import ROOT, area_downsample, bicubic_upscale, psnr_and_ssim, run_script


def test_pretrained_model_is_shipped_and_loads_with_safe_mode():
    path = model_files.shipped_path("espcn")
    assert path == os.path.join(ROOT, "pretrained", "espcn_x4.keras")
    model = inference.load_model(path)
    assert model.count_params() < 100_000
    assert model(np.zeros((1, 18, 18, 1), np.float32)).shape == (1, 72, 72, 1)  # served as trained: x4


def test_predict_falls_back_to_the_pretrained_quality_network_on_the_users_files_and_says_so(tmp_path):
    Image.fromarray(np.tile(np.arange(0, 240, 15, dtype=np.uint8), (16, 1))).save(tmp_path / "lr.png")
    result = run_script("predict.py", "--input", str(tmp_path / "lr.png"), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert constants.DEFAULT_NETWORK == "quality"
    assert "pretrained" in result.stdout and model_files.shipped_name("quality") in result.stdout
    assert "Quality network" in result.stdout and "the default" in result.stdout
    with Image.open(tmp_path / "out" / "lr_quality_x4.png") as out:
        assert out.size == (64, 64)
    assert os.listdir(tmp_path / "out") == ["lr_quality_x4.png"]


def held_out_slices(data):
    """Every slice of <data>/test/<class>/, as the README describes it: its Y on [0, 1], padded with black at the
    bottom and right to 256x256 (the embedded sample's slices are 256 wide and 240 tall)."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(data, "test"))
                   for name in names)
    slices = []
    for path in paths:
        with Image.open(path) as image:
            y = np.asarray(image.convert("L"), np.float64) / 255.0
        slices.append(np.pad(y, ((0, 256 - y.shape[0]), (0, 256 - y.shape[1]))))
    return slices


def test_pretrained_model_beats_bicubic_on_the_held_out_template_slab(tmp_path):
    """The embedded test split: axial slices of a slab no training slice touches.  evaluation.json's figures,
    recomputed without evaluation.py: each slice shrunk to 64x64 by area averaging, resized back bicubically
    (Pillow's code) or by the model as predict.py serves it (8 views), scored per image, averaged over the split."""
    import dataset

    data = str(tmp_path / "AD_NC")
    dataset.build_sample_dataset(data)
    result = run_script("predict.py", "--data-dir", data, "--output-dir", str(tmp_path / "out"),
                        "--precision", "float32")  # float32: the same numbers on every CPU
    assert result.returncode == 0, result.stderr[-2000:]
    # without --input the seed's job: its network, the ESPCN, not the default for the user's files
    assert constants.SEED_NETWORK == "espcn"
    assert "model: ESPCN" in result.stdout and model_files.shipped_name("espcn") in result.stdout, result.stdout
    assert "Quality network" not in result.stdout and "quality_x4" not in result.stdout, result.stdout
    with open(tmp_path / "out" / "evaluation.json") as f:
        summary = json.load(f)
    originals = held_out_slices(data)
    assert summary["n_images"] == len(originals) >= 20  # the whole split
    low_res = np.stack([area_downsample(original) for original in originals]).astype(np.float32)
    model = inference.load_model(model_files.shipped_path("espcn"), "float32")
    outputs = {"bicubic": [bicubic_upscale(plane) for plane in low_res],
               "model": inference.upscale_stack(model, low_res, ensemble=constants.ENSEMBLE_IMAGES)}
    for name, images in outputs.items():
        psnr, ssim = np.mean([psnr_and_ssim(image, original) for image, original in zip(images, originals)], axis=0)
        assert abs(summary[f"{name}_psnr"] - psnr) < 2e-3 and abs(summary[f"{name}_ssim"] - ssim) < 2e-4, \
            (name, psnr, ssim, summary)
    assert summary["model_psnr"] - summary["bicubic_psnr"] >= 3.0, summary
    assert summary["model_ssim"] > summary["bicubic_ssim"], summary


def test_shipped_quality_network_beats_the_espcn_on_the_held_out_template_slab(tmp_path):
    """predict.py --model quality: the shipped quality network (a residual network, not an ESPCN) loads with
    safe mode and scores above the shipped ESPCN on the embedded held-out split, both in float32 with 8 views
    (measured: 35.71 against 33.58 dB; 6 blocks, receptive radius 2 + 6 x 2 + 1 + 1)."""
    import dataset
    import modules

    quality = inference.load_model(model_files.shipped_path("quality"), "float32")
    assert modules.network_of(quality) == "quality" and inference.receptive_radius(quality) == 16
    data = str(tmp_path / "AD_NC")
    dataset.build_sample_dataset(data)
    scores = {}
    for name in ("espcn", "quality"):
        result = run_script("predict.py", "--data-dir", data, "--output-dir", str(tmp_path / name), "--model", name,
                            "--precision", "float32")
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"the shipped {model_files.label(name)}, --model {name}" in result.stdout, result.stdout
        with open(tmp_path / name / "evaluation.json") as f:
            scores[name] = json.load(f)
    assert scores["quality"]["model_psnr"] >= scores["espcn"]["model_psnr"] + 0.15, scores
    assert scores["quality"]["model_psnr"] - scores["quality"]["bicubic_psnr"] >= 4.0, scores


def test_shipped_quality_through_plane_models_beat_the_espcns_on_the_template_slab(tmp_path):
    """predict.py --compare --through-plane --model quality, each factor it ships, without adaptation: the shipped
    quality through-plane models above the shipped ESPCN ones and well above cubic B-spline, float32, on the
    template's central axial slab (the test split's slices; the models' template training slices are outside it,
    except coronal and sagittal ones that cross it). Measured (AMD EPYC, AVX2; third-stage quality models,
    2026-12-04): x3 quality 38.36 dB, ESPCN 36.89, spline 31.59; x4 quality 34.70, ESPCN 33.58, spline 29.10. The
    shipped GPU-stage models (Intel Xeon with AMX, float32, the same day): x3 40.12 dB, x4 36.18; the others
    unchanged. x6 (Intel Xeon with AVX-512 BF16, float32, 2026-12-08): quality 30.36 dB, ESPCN 28.27, spline 25.55."""
    import nibabel as nib

    import dataset
    import predict

    volume = dataset.template_volume()
    test = dataset.sample_slab_ranges(volume.shape[2])["test"]
    crop = np.ascontiguousarray(volume[32:160, 24:192, test[0][0]:test[0][1]]) * 1000.0
    path = str(tmp_path / "slab.nii.gz")
    nib.save(nib.Nifti1Image(crop.astype(np.float32), np.eye(4)), path)
    scores = {}
    for factor in constants.QUALITY_THROUGH_PLANE_FACTORS:
        for name in ("espcn", "quality"):
            out = tmp_path / f"{name}_x{factor}"
            assert predict.main(["--input", path, "--compare", "--through-plane", "--no-adapt", "--axis", "1",
                                 "--through-plane-factor", str(factor), "--model", name, "--precision", "float32",
                                 "--output-dir", str(out)]) == 0
            with open(out / f"slab_{name}_through_compare.json") as f:
                scores[name, factor] = json.load(f)
    for factor in constants.QUALITY_THROUGH_PLANE_FACTORS:
        espcn, quality = scores["espcn", factor], scores["quality", factor]
        assert quality["model_psnr"] - quality["cubic_spline_psnr"] >= 4.0, scores
        assert quality["model_psnr"] >= espcn["model_psnr"] + 0.5, scores
