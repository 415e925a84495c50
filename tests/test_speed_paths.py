"""The fast paths run and stay correct: benchmark.py's JSON, mixed precision, XLA."""
import json
import os

import gzip

import nibabel as nib
import numpy as np
import pytest

from common import model_files
import constants
import inference
import modules
from scans import volumes
from conftest import run_script, write_tree
from common.tensorflow_env import keras


def test_benchmark_runs_and_prints_its_json(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=1)
    result = run_script("benchmark.py", "--batch-size", "2", "--repeats", "1", "--steps", "1", "--input-size", "16",
                        "--precision", "float32", "--data-dir", data, "--volume-slices", "2", "--volume-size", "24",
                        "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("batch_size", "train_images_per_s", "infer_images_per_s", "model_infer_images_per_s", "precision",
                "infer_precision", "matmul_peak_gflops", "volume_slices_per_s", "pipeline_epoch_s",
                "model_slices_per_s", "volume_fraction_of_model"):
        assert key in report, key
    assert report["batch_size"] == 2 and report["precision"] == "float32"
    assert report["infer_precision"] == modules.choose_precision("auto")  # what predict.py serves on this machine
    assert report["train_images_per_s"] > 0 and report["infer_images_per_s"] > 0
    assert report["volume_slices_per_s"] > 0
    assert report["volume_fraction_of_model"] == pytest.approx(
        report["volume_slices_per_s"] / report["model_slices_per_s"], rel=0.02)
    # the quality network beside it, with its own figures (the shipped 6 blocks: about 8x the ESPCN's work a pixel)
    for key in ("train_images_per_s", "model_infer_images_per_s", "volume_slices_per_s", "infer_gflops"):
        assert report[f"quality_{key}"] > 0, key


@pytest.mark.parametrize("flags", [["--precision", "mixed_bfloat16"], ["--precision", "mixed_float16"], ["--jit", "on"]])
def test_fast_training_paths_train_and_save_a_float32_output_model(tmp_path, flags):
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=1)
    out = tmp_path / "out"
    result = run_script("train.py", "--data-dir", data, "--output-dir", str(out), "--epochs", "1",
                        "--batch-size", "2", "--patch-size", "32", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    if "--precision" in flags:
        assert f"precision: {flags[1]}" in result.stdout
    model = keras.models.load_model(str(out / "espcn.keras"), safe_mode=True, compile=False)
    if "--precision" in flags:  # the body computes in the asked precision, the output is float32
        assert model.get_layer("conv4_linear").dtype_policy.name == flags[1]
    assert model.output.dtype == "float32"
    served = inference.load_model(str(out / "espcn.keras"))  # predict.py's precision: this machine's auto
    assert served.get_layer("conv2").dtype_policy.name == modules.choose_precision("auto")
    assert served.output.dtype == "float32"
    x = np.random.default_rng(1).random((1, 18, 18, 1), dtype=np.float32)
    assert np.allclose(served(x), model(x), atol=0.05)  # the same network, in this machine's precision


def test_predict_precision_flag_serves_the_model_in_that_precision(tmp_path, capsys):
    from scans import image_files
    import predict
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 24), dtype=np.uint8))
    image.save(tmp_path / "s.png")
    path = model_files.shipped_path("espcn")
    outputs = {}
    for precision in ("float32", "mixed_bfloat16"):
        out = tmp_path / precision
        assert predict.main(["--input", str(tmp_path / "s.png"), "--output-dir", str(out), "--model", "espcn",
                             "--precision", precision]) == 0
        assert f"precision: {precision}" in capsys.readouterr().out
        outputs[precision] = np.asarray(Image.open(out / "s_espcn_x4.png")).astype(int)
        served = inference.load_model(path, precision)
        assert {layer.dtype_policy.name for layer in served.layers if layer.name.startswith("conv")} == {precision}
        mine = image_files.super_resolve(served, image, ensemble=constants.ENSEMBLE_IMAGES)[0]
        assert np.array_equal(np.asarray(mine).astype(int), outputs[precision])  # predict served exactly this model
    difference = np.abs(outputs["float32"] - outputs["mixed_bfloat16"])
    # bfloat16 keeps 8 bits of mantissa; through four layers its outputs stay within a few hundredths of float32's
    assert 0 < difference.max() <= 0.03 * 255


@pytest.mark.parametrize("vendor, flags, gpu, expected", [
    ("GenuineIntel", "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", False, "mixed_bfloat16"),  # AMX Xeon
    ("AuthenticAMD", "fpu avx2 avx512f avx512_bf16", False, "mixed_bfloat16"),  # AVX-512 BF16 EPYC
    ("GenuineIntel", "fpu avx2 avx512f avx512_bf16 avx512_fp16", False, "float32"),  # Xeon, AVX-512 BF16, no AMX
    ("AuthenticAMD", "fpu avx2 fma", False, "float32"),  # AVX2 only: bfloat16 would be emulated
    ("GenuineIntel", "fpu avx2 fma", True, "mixed_float16"),  # any CPU with a GPU
    ("", "", False, "float32"),  # /proc/cpuinfo unreadable
])
def test_auto_precision_on_every_kind_of_machine(monkeypatch, vendor, flags, gpu, expected):
    text = (f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\n"
            "processor\t: 1\n") if flags else ""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(modules, "cpuinfo_text", lambda: text)
    monkeypatch.setattr(modules, "has_gpu", lambda: gpu)
    assert modules.choose_precision("auto") == expected
    assert modules.choose_precision("float32") == "float32"
    served = modules.inference_model(modules.get_model(2, filters=(4, 4, 4)), "auto")
    assert served.get_layer("conv1").dtype_policy.name == expected and served.output.dtype == "float32"


@pytest.mark.parametrize("name, kind", [("out.nii.gz", nib.Nifti1Image), ("out.mgz", nib.MGHImage)])
def test_gzipped_outputs_are_plain_gzip_of_nibabels_bytes_and_repeatable(tmp_path, name, kind):
    # ISA-L writes them (volumes.write_image): zlib must read the very bytes nibabel would write uncompressed,
    # with no file name in the gzip header (the temporary's would leak) and the same bytes on a second write.
    rng = np.random.default_rng(0)
    data = np.asfortranarray(rng.integers(-300, 3000, (37, 29, 11)).astype(np.int16))
    image = kind(data, np.diag([0.5, 0.6, 2.0, 1.0]))
    path = str(tmp_path / name)
    volumes.save_image(image, path)
    first = open(path, "rb").read()
    assert gzip.decompress(first) == image.to_bytes()
    assert not first[3] & 0x08  # FLG.FNAME unset
    volumes.save_image(image, path)
    assert open(path, "rb").read() == first
    back = nib.load(path)
    assert type(back) is kind and np.array_equal(np.asarray(back.dataobj), data)


def test_in_plane_output_at_the_top_of_int32_does_not_wrap_around():
    # float32 cannot hold int32's maximum (it rounds up to 2**31, which wraps to the minimum on casting);
    # the writer's upper limit is the largest float32 below it.
    top = np.iinfo(np.int32).max
    data = np.full((12, 12, 3), top, np.int32)
    data[3:9, 3:9] = top - 2_000_000
    image = nib.Nifti1Image(data, np.eye(4))
    model = modules.get_model(4)
    bias = model.get_layer("conv4_linear").bias
    bias.assign(np.full(bias.shape, 5.0, np.float32))  # outputs far above 1: clipped to the input's maximum
    out = volumes.super_resolve_in_plane(model, image, data.astype(np.float32), 2)[0]
    assert out.dtype == np.int32 and out.min() >= top - 2_000_000 - 256


def test_stored_values_at_the_top_of_int32_do_not_wrap_around():
    # to_stored (through-plane's writer) shares the in-plane writer's limits: float32 2**31 must not become -2**31
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int32), np.eye(4))
    stored = volumes.to_stored(np.array([2.0 ** 31, -2.0 ** 31 - 1e3, 5.4], np.float32), image, np.int32)
    assert stored[0] > 2 ** 31 - 200 and stored[1] == np.iinfo(np.int32).min and stored[2] == 5
