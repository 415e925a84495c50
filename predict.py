"""Super-resolve brain-MRI slices x4 with a trained ESPCN.

usage:
  python predict.py [--data-dir DIR] [--output-dir DIR] [--model PATH]
      Evaluates the model against bicubic on the whole test split and writes
      <output-dir>/evaluation.json and the comparison figure multi_comp_5.png.
  python predict.py --input PATH [PATH ...] --output-dir DIR [--model PATH]
      Super-resolves the user's own low-resolution images (PNG, JPEG, BMP,
      TIFF) and NIfTI volumes (.nii, .nii.gz) as they are: <stem>_x4.png /
      <stem>_x4.nii.gz.  With --compare, each input is treated as a
      high-resolution original instead: downsampled x4, then bicubic vs model
      vs original in a figure <stem>_compare.png.

Without --model, the freshly trained <output-dir>/espcn.keras is used if it
exists, else the pretrained model shipped with the project.
"""
import argparse
import json
import os
import sys
import zipfile

import numpy as np

import constants


# --- Command line ------------------------------------------------------------

def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=constants.DATA_DIR, help="AD_NC-style tree; its test/ split is evaluated")
    parser.add_argument("--output-dir", default=constants.OUTPUT_DIR)
    parser.add_argument("--model", default=None,
                        help=f"a .keras model (default: <output-dir>/{constants.MODEL_FILENAME}, "
                             f"else {constants.PRETRAINED_MODEL})")
    parser.add_argument("--batch-size", type=positive_int, default=constants.PREDICT_BATCH_SIZE,
                        help="slices per inference batch")
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="low-resolution images / NIfTI volumes / folders of them to super-resolve")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=2,
                        help="NIfTI: slices are taken across this axis and upscaled in-plane")
    parser.add_argument("--compare", action="store_true",
                        help="with --input: downsample each (high-resolution) input and compare bicubic vs model")
    parser.add_argument("--figure-images", type=positive_int, default=constants.FIGURE_IMAGES,
                        help="test images in the comparison figure")
    return parser.parse_args(argv)


# --- Model -------------------------------------------------------------------

def resolve_model_path(model_arg, output_dir):
    """The model file to load, and a word on where it came from."""
    if model_arg:
        return model_arg, "given by --model"
    trained = os.path.join(output_dir, constants.MODEL_FILENAME)
    if os.path.exists(trained):
        return trained, "freshly trained"
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, constants.PRETRAINED_MODEL), "pretrained, shipped with the project"


def load_model(path):
    """Loads a .keras ESPCN with safe_mode on; ValueError naming the file if it cannot."""
    import keras

    import modules  # registers DepthToSpace for deserialisation

    if not os.path.isfile(path):
        raise ValueError(f"--model {path}: no such file")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(f"--model {path}: not a .keras model file")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
        modules.model_upscale_factor(model)
    except Exception as error:  # corrupt archives fail in many ways inside Keras
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--model {path}: cannot be loaded ({reason[:200]})") from None
    return model


def upscale_batch(model, low_res):
    """Model output for a float32 (N, h, w, 1) batch in [0,1], clipped to [0,1]."""
    return np.clip(np.asarray(model.predict_on_batch(low_res), dtype=np.float32), 0.0, 1.0)


def bicubic_upscale(low_res, factor):
    import tensorflow as tf

    size = (low_res.shape[1] * factor, low_res.shape[2] * factor)
    return np.clip(tf.image.resize(low_res, size, method="bicubic").numpy(), 0.0, 1.0)


def scores(prediction, target):
    """Per-image PSNR and SSIM as numpy arrays."""
    import modules

    psnr, ssim = modules.psnr_ssim(prediction, target)
    return psnr.numpy(), ssim.numpy()


# --- Evaluation on the test split -------------------------------------------

def evaluate_test_split(model, data_dir, batch_size):
    """Model and bicubic outputs with per-image scores over the whole test split."""
    from tqdm import tqdm

    import dataset
    import modules

    factor = modules.model_upscale_factor(model)
    test = dataset.load_slices(dataset.list_images(os.path.join(data_dir, "test")))
    if len(test.paths) == 0:
        raise ValueError(f"--data-dir {data_dir}: no usable image in test/")
    results = {"paths": test.paths, "model_psnr": [], "bicubic_psnr": [], "model_ssim": [], "bicubic_ssim": []}
    batches = dataset.make_eval_dataset(test.images, batch_size, factor)
    total = -(-len(test.paths) // batch_size)
    for low_res, target in tqdm(batches, total=total, desc="evaluating", unit="batch"):
        low_res, target = low_res.numpy(), target.numpy()
        for name, output in (("model", upscale_batch(model, low_res)), ("bicubic", bicubic_upscale(low_res, factor))):
            psnr, ssim = scores(output, target)
            results[f"{name}_psnr"] += psnr.tolist()
            results[f"{name}_ssim"] += ssim.tolist()
    return test, results


def summarise(results):
    summary = {"n_images": len(results["paths"])}
    for key in ("model_psnr", "bicubic_psnr", "model_ssim", "bicubic_ssim"):
        summary[key] = round(float(np.mean(results[key])), 4)
    return summary


def comparison_rows(model, images, factor):
    """(original, bicubic, model) [0,1] images and their scores for uint8 slices."""
    import dataset

    target = dataset.to_unit_float(images).numpy()
    low_res = dataset.downsample(target, factor).numpy()
    outputs = {"bicubic": bicubic_upscale(low_res, factor), "model": upscale_batch(model, low_res)}
    rows = []
    for i in range(len(images)):
        row = [("original", target[i], None)]
        for name, output in outputs.items():
            psnr, ssim = scores(output[i:i + 1], target[i:i + 1])
            row.append((name, output[i], (float(psnr[0]), float(ssim[0]))))
        rows.append(row)
    return rows


def save_comparison_figure(rows, path, row_labels=None):
    """The seed's figure: one row per image, original / bicubic / model, with PSNR and SSIM."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, (name, image, score) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            title = name if score is None else f"{name}\nPSNR {score[0]:.2f} dB  SSIM {score[1]:.3f}"
            if c == 0 and row_labels:
                title = f"{row_labels[r]}\n{title}"
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    tmp_path = path[:-4] + ".partial.png"
    fig.savefig(tmp_path, dpi=100)
    plt.close(fig)
    os.replace(tmp_path, path)


def run_evaluation(model, args):
    import modules

    test, results = evaluate_test_split(model, args.data_dir, args.batch_size)
    summary = summarise(results)
    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, "evaluation.json")
    with open(json_path + ".partial", "w") as out:
        json.dump(summary, out, indent=2)
    os.replace(json_path + ".partial", json_path)
    count = min(args.figure_images, len(test.paths))
    picks = np.linspace(0, len(test.paths) - 1, count).round().astype(int)
    rows = comparison_rows(model, test.images[picks], modules.model_upscale_factor(model))
    figure_path = os.path.join(args.output_dir, f"multi_comp_{count}.png")
    save_comparison_figure(rows, figure_path, [os.path.basename(test.paths[i]) for i in picks])
    print(f"{summary['n_images']} test images: model PSNR {summary['model_psnr']:.2f} dB "
          f"(bicubic {summary['bicubic_psnr']:.2f}), SSIM {summary['model_ssim']:.4f} "
          f"(bicubic {summary['bicubic_ssim']:.4f})")
    print(f"wrote {json_path} and {figure_path}")
    return summary


def main(argv=None):
    args = parse_args(argv)
    try:
        model_path, origin = resolve_model_path(args.model, args.output_dir)
        model = load_model(model_path)
        print(f"model: {model_path} ({origin})")
        if args.input:
            return run_on_inputs(model, args)
        if args.data_dir == constants.DATA_DIR:
            import dataset
            dataset.ensure_default_data(args.data_dir)
        import dataset
        dataset.check_data_dir(args.data_dir)
        run_evaluation(model, args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
