"""One training stage of a quality network (in-plane or through-plane) on a CUDA GPU through PyTorch, where
TensorFlow is absent.

usage (three steps; the middle one runs on the GPU machine, the others here):
  python tools/accelerator_stage.py pack [--data-dir D] [--extra-train-dir DIR ...] [--part K/N]
      [--init-model M.keras] --output P.npz.xz
  python3 tools/accelerator_stage.py train --pack P.npz.xz [P2.npz.xz ...] --output-dir OUT [--minutes 7] [--blocks 6]
      [--learning-rate 2e-4] [--batch-size 128] [--init-weights OUT0/weights.npz] [--thickness-ratios R ...]
  python tools/accelerator_stage.py unpack --weights OUT/weights.npz --output M.keras

Why: the quality network's training (train.py --network quality) takes hours
of a 2-core CPU a stage, and a GPU lent for minutes has no TensorFlow.  So one
stage runs as this file's `train`, in PyTorch, and its weights come back into
the Keras network of modules.build_network; the next stage, if any, is train.py
again with --init-model, or `train` again with --init-weights.

- `pack` decodes the training and validation slices exactly as train.py does
  (dataset.train_validation_paths and load_slices; extra folders tiled, as
  train.py's --extra-train-dir) and stores them, uint8, with their tissue
  boxes and the start model's weights (Keras layouts, by layer name), as an
  xz-compressed .npz, with the network's factors ((r, r) in-plane, (F, 1)
  through-plane: train.py --through-plane-factor F).  A GPU machine's upload
  can be limited (64 MiB a call on the one this was written for), so a large
  set is cut into packs: --part K/N keeps every N-th training slice from the
  K-th (the validation slices go in part 1 only), other packs hold extra
  folders alone, and one made with --init-model alone holds the start
  weights (about 1 MiB), so that networks of several factors share the
  slices.  A pack carried by an earlier call is removed from the carried
  folder by the next call (in-plane stage 4's first call moved its pack out
  of it; the through-plane stage's did not, and trained on part 1 alone);
- `train` (PyTorch and numpy only, no project module but constants) rebuilds
  the same network (5x5 head convolution, residual blocks, body skip, a 3x3
  convolution to the r*r sub-pixel channels plus the input, pixel shuffle,
  which for one channel is modules.DepthToSpace's pixel order; through-plane,
  DepthToSpace1D's) and trains it on train.py's recipe, made on the GPU per
  batch from all packs' slices: a crop centred in the slice's tissue box, the
  8 flips/turns, contrast inversion, gamma, intensity peak, noise on tissue
  (constants' ranges), then area downsampling in-plane or, through-plane,
  thick rows (slice_profiles.regular_weights, each crop as thick as one of
  --thickness-ratios x its spacing), 8-bit rounding of the input; MSE, Adam,
  bfloat16 autocast with
  float32 weights, a cosine from the learning rate to 2% of it over the time
  budget after a short warm-up.  --blocks more than the start model's adds
  blocks whose second convolution is zero, so training starts from the start
  model's output exactly.  Weights are written to OUT/weights.npz every
  --save-every seconds (a stop loses at most that; --init-weights goes on
  from them), the validation PSNR (float32) to OUT/log.json;
- `unpack` loads those weights into modules.build_network("quality", ...) and
  saves a .keras file that predict.py --model loads (safe mode).
"""
import argparse
import io
import json
import lzma
import math
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from common.atomic_files import write_atomically  # noqa: E402  (likewise)
from common import slice_profiles  # noqa: E402  (numpy and constants only)
from common.schedules import cosine_factor  # noqa: E402  (math and constants only)
import constants  # noqa: E402  (standard library only: no TensorFlow on the GPU machine)
# a linear warm-up over the first 3% of the time: Adam's first steps move every weight by about the full rate,
# and from a trained start that cost 0.3 dB of validation in 6 steps (CPU smoke run, batch 4)
WARM_UP_SHARE = 0.03


# --- pack (here, with TensorFlow) ---------------------------------------------

def pack(args):
    """Writes the slices (--part: a share of them; with --data-dir the validation slices too, in part 1), and with
    --init-model the start weights and factors, as an xz-compressed .npz."""
    part, parts = args.part
    contents = {}
    if args.init_model:  # first: a wrong start is refused before minutes of decoding
        contents.update(keras_weights(start_model(args.init_model)))
    if args.data_dir or args.extra_train_dir:
        contents.update(pack_slices(args.data_dir, args.extra_train_dir or (), part, parts))
    if not contents:
        raise ValueError("give --data-dir, --extra-train-dir or --init-model")
    buffer = io.BytesIO()
    np.savez(buffer, **contents)
    write_atomically(args.output, lambda path: pathlib.Path(path).write_bytes(lzma.compress(buffer.getvalue())))
    slices = f"{len(contents['images'])} training slices (part {part} of {parts}), " if "images" in contents else ""
    print(f"{args.output}: {slices}{len(contents.get('validation', ()))} validation slices, "
          f"{'start weights of ' + args.init_model if args.init_model else 'no weights'}, "
          f"{os.path.getsize(args.output) / 2 ** 20:.1f} MiB")


def pack_slices(data_dir, extra_dirs, part, parts):
    """{"images", "boxes"[, "validation"]}: every parts-th training slice from the part-th, decoded as train.py
    decodes them; the validation slices of data_dir in part 1 only."""
    import dataset  # TensorFlow: only on the machine that has it

    images, contents = [], {}
    if data_dir:
        train_paths, val_paths = dataset.train_validation_paths(data_dir)
        images.append(dataset.load_slices(train_paths[part - 1::parts]).images)
        if part == 1:
            contents["validation"] = dataset.load_slices(val_paths).images
    for folder in extra_dirs:
        images.append(dataset.load_extra_images(folder, constants.TARGET_SIZE).images[part - 1::parts])
    contents["images"] = np.concatenate(images)
    contents["boxes"] = dataset.tissue_boxes(contents["images"])
    return contents


def start_model(path):
    """The --init-model file, refused here (not on the GPU, after the upload) unless it is a quality network."""
    import modules
    from common.tensorflow_env import keras

    model = keras.models.load_model(path, safe_mode=True, compile=False)
    if modules.network_of(model) != "quality":
        raise ValueError(f"--init-model {path}: not a quality network ({modules.network_description(model)})")
    return model


def part_of(text):
    """"K/N" (1 <= K <= N) -> (K, N)."""
    part, _, parts = text.partition("/")
    try:
        part, parts = int(part), int(parts)
    except ValueError:
        part = parts = 0
    if not 1 <= part <= parts:
        raise argparse.ArgumentTypeError(f"{text!r}: K/N with 1 <= K <= N, such as 1/2")
    return part, parts


def read_pack(path):
    """The arrays of a pack that `pack` wrote."""
    with open(path, "rb") as handle:
        with np.load(io.BytesIO(lzma.decompress(handle.read()))) as stored:
            return dict(stored)


def keras_weights(model):
    """{"<layer>/kernel": (kh, kw, in, out), "<layer>/bias": (out,)} of every convolution, and "factors": the
    model's (rows, columns) upscale factors."""
    import modules

    found = {"factors": np.asarray(modules.upscale_factors(model), np.int64)}
    for layer in model.layers:
        if layer.__class__.__name__ == "Conv2D":
            kernel, bias = layer.get_weights()
            found[f"{layer.name}/kernel"], found[f"{layer.name}/bias"] = kernel, bias
    return found


def stored_blocks(weights):
    """The residual blocks of a store of Keras-layout weights."""
    return sum(1 for key in weights if key.startswith("block") and key.endswith("_conv1/kernel"))


def stored_factors(weights):
    """(rows, columns) upscale factors of a store of weights: (r, r) in-plane, (F, 1) through-plane; a store
    written before factors were stored (the in-plane stage 4's) is in-plane x4."""
    rows, columns = (int(value) for value in weights.get("factors", (constants.UPSCALE_FACTOR,) * 2))
    return rows, columns


# --- unpack (here, with TensorFlow) -------------------------------------------

def unpack(args):
    """weights.npz -> a saved .keras quality network (written whole or not at all)."""
    import modules

    with np.load(args.weights) as stored:
        weights = dict(stored)
    rows, columns = stored_factors(weights)
    model = modules.build_network("quality", rows, through_plane=columns == 1,
                                  filters=weights["head_conv/kernel"].shape[-1], blocks=stored_blocks(weights))
    for layer in model.layers:
        if layer.__class__.__name__ == "Conv2D":
            layer.set_weights([weights[f"{layer.name}/kernel"], weights[f"{layer.name}/bias"]])
    write_atomically(args.output, model.save)
    print(f"{args.output}: {modules.network_description(model)}, from {args.weights}")


# --- train (the GPU machine: PyTorch, numpy, constants, slice_profiles, atomic_files) ---

def layer_names(blocks):
    """Keras layer names of the torch network's convolutions, in the order of its ModuleList."""
    return (["head_conv"] + [f"block{b}_conv{i}" for b in range(1, blocks + 1) for i in (1, 2)]
            + ["body_end_conv", "conv4_linear"])


def torch_network(torch, filters, blocks, factors):
    """modules.build_network("quality", ...)'s network (one channel) as a torch module, convolutions in
    layer_names order: in-plane for factors (r, r), through-plane (rows only) for (F, 1)."""
    nn = torch.nn
    rows, columns = factors

    class Quality(nn.Module):
        def __init__(self):
            super().__init__()
            convs = [nn.Conv2d(1, filters, 5, padding=2)]
            convs += [nn.Conv2d(filters, filters, 3, padding=1) for _ in range(2 * blocks + 1)]
            convs += [nn.Conv2d(filters, rows * columns, 3, padding=1)]
            self.convs = nn.ModuleList(convs)
            self.blocks, self.factors = blocks, (rows, columns)

        def forward(self, x):
            head = self.convs[0](x)
            y = head
            for b in range(self.blocks):
                y = y + self.convs[2 + 2 * b](torch.relu(self.convs[1 + 2 * b](y)))
            y = head + self.convs[2 * self.blocks + 1](y)
            # the sub-pixel channels join the input in float32: under bfloat16 autocast the input's 8-bit
            # levels would round by up to half a level
            subpixels = self.convs[-1](y).float() + x
            if columns == rows:
                return nn.functional.pixel_shuffle(subpixels, rows)
            # DepthToSpace1D: channel j of row h becomes row rows * h + j
            n, _, height, width = subpixels.shape
            return subpixels.permute(0, 2, 1, 3).reshape(n, 1, height * rows, width)

    return Quality()


def load_start(torch, net, stored, blocks):
    """Copies the stored Keras weights in; blocks beyond the stored ones start as identities
    (he-normal first convolution, zero second), convolutions absent from the store as Keras would."""
    for name, conv in zip(layer_names(blocks), net.convs):
        key = f"{name}/kernel"
        if key in stored:
            conv.weight.data.copy_(torch.from_numpy(np.transpose(stored[key], (3, 2, 0, 1)).copy()))
            conv.bias.data.copy_(torch.from_numpy(stored[f"{name}/bias"]))
            continue
        conv.bias.data.zero_()
        if name.endswith("_conv2") or name == "conv4_linear":
            conv.weight.data.zero_()
        else:  # Keras' he_normal: a normal truncated at 2 std, scaled to keep the variance 2 / fan_in
            fan_in = conv.weight[0].numel()
            std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
            torch.nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)


def stored_weights(net, blocks):
    """The torch network's weights in Keras layouts, by layer name, and its factors (the inverse of load_start)."""
    found = {"factors": np.asarray(net.factors, np.int64)}
    for name, conv in zip(layer_names(blocks), net.convs):
        found[f"{name}/kernel"] = np.transpose(conv.weight.detach().float().cpu().numpy(), (2, 3, 1, 0))
        found[f"{name}/bias"] = conv.bias.detach().float().cpu().numpy()
    return found


class PairMaker:
    """The network's input from a (N, 1, H, W) target in [0, 1], as train.py makes it: area downsampling in-plane
    (dataset.make_pair); through-plane, thick rows every F rows (dataset.make_thick_pair / make_gapped_thick_pair,
    slice_profiles.regular_weights), each image as thick as one of thickness_ratios x its spacing (drawn per
    image; train.py draws per batch)."""

    def __init__(self, torch, factors, thickness_ratios=(1.0,)):
        self.torch, self.factors, self.ratios = torch, factors, tuple(thickness_ratios)
        self.cache = {}

    def cut(self, target):
        """The (N, 1, H, W) target cut to what a pair keeps: whole thick slices of rows through-plane; in-plane,
        rows and columns to multiples of the factor (dataset.downsample's floor)."""
        rows, columns = self.factors
        return target[:, :, :target.shape[2] // rows * rows, :target.shape[3] // columns * columns]

    def matrices(self, height, device, ratios):
        """(len(ratios), thick rows, fine rows) thick-slice weights for targets of `height` rows."""
        key = (height, str(device), ratios)
        if key not in self.cache:
            rows = self.factors[0]
            stack = np.stack([slice_profiles.regular_weights(height // rows, rows, ratio) for ratio in ratios])
            self.cache[key] = self.torch.from_numpy(stack.astype(np.float32)).to(device)
        return self.cache[key]

    def low_res(self, target, generator=None):
        """The input for `target` (already cut); generator None: no gaps (validation)."""
        rows, columns = self.factors
        if columns == rows:
            return self.torch.nn.functional.avg_pool2d(target, rows)
        if generator is None:
            return self.torch.einsum("tr,ncrw->nctw", self.matrices(target.shape[2], target.device, (1.0,))[0],
                                     target)
        stack = self.matrices(target.shape[2], target.device, self.ratios)
        pick = self.torch.randint(len(self.ratios), (len(target),), device=target.device, generator=generator)
        return self.torch.einsum("ntr,ncrw->nctw", stack[pick], target)


def augmented_crops(torch, images, boxes, batch, patch, generator):
    """`batch` (N, 1, patch, patch) targets of train.py's recipe (dataset.make_training_dataset with augmentation:
    a crop centred in the tissue box, flips/turns, inversion, gamma, peak, noise on tissue), made on the device
    from slices drawn at random (with replacement, where train.py permutes each epoch)."""
    device = images.device
    uniform = lambda *shape: torch.rand(*shape, device=device, generator=generator)  # noqa: E731
    index = torch.randint(len(images), (batch,), device=device, generator=generator)
    box = boxes[index].float()
    centre = uniform(batch, 2)
    size = images.shape[1]
    cy = (box[:, 0] + centre[:, 0] * (box[:, 1] - box[:, 0])).long()
    cx = (box[:, 2] + centre[:, 1] * (box[:, 3] - box[:, 2])).long()
    top = (cy - patch // 2).clamp(0, size - patch)
    left = (cx - patch // 2).clamp(0, size - patch)
    offsets = torch.arange(patch, device=device)
    rows, cols = top[:, None] + offsets, left[:, None] + offsets
    x = images[index[:, None, None], rows[:, :, None], cols[:, None, :]].float()[:, None] / 255.0
    flips = uniform(3, batch, 1, 1, 1) < 0.5
    x = torch.where(flips[0], x.flip(3), x)
    x = torch.where(flips[1], x.flip(2), x)
    x = torch.where(flips[2], x.transpose(2, 3), x)
    draw = uniform(4, batch, 1, 1, 1)
    tissue = (x > 0.02).float()
    x = torch.where(draw[3] < constants.INVERT_PROBABILITY, tissue * (1.05 - x), x)
    low_gamma, high_gamma = constants.GAMMA_RANGE
    gamma = low_gamma * (high_gamma / low_gamma) ** draw[1]
    x = torch.where(x > 0, x.clamp_min(1e-12) ** gamma, torch.zeros_like(x))
    low_peak, high_peak = constants.INTENSITY_SCALE_RANGE
    x = x * (low_peak + (high_peak - low_peak) * draw[0])
    noise = torch.randn(x.shape, device=device, generator=generator) * (constants.NOISE_MAX * draw[2] ** 2)
    return (x + noise * tissue).clamp(0.0, 1.0)


def training_batch(torch, images, boxes, batch, patch, generator, pairs):
    """(input rounded to 8-bit levels, target): augmented crops and the input `pairs` (a PairMaker) makes."""
    target = augmented_crops(torch, images, boxes, batch, patch, generator)
    return torch.round(pairs.low_res(target, generator) * 255.0) / 255.0, target


def validation_psnr(torch, net, validation, pairs, batch=32):
    """Mean PSNR (dB, peak 1) of whole validation slices, their input made without gaps, as train.py's validation
    (modules.psnr_ssim: the output clipped to [0, 1], each slice's PSNR capped at constants.PSNR_CAP_DB)."""
    scores = []
    with torch.no_grad():  # float32 (TF32 convolutions on a GPU), as the shipped model runs
        for start in range(0, len(validation), batch):
            target = validation[start:start + batch].float()[:, None] / 255.0
            target = pairs.cut(target)
            output = net(pairs.low_res(target)).float().clamp(0.0, 1.0)
            mse = ((output - target) ** 2).mean(dim=(1, 2, 3))
            scores.append((-10.0 * torch.log10(mse)).clamp(max=constants.PSNR_CAP_DB))
    return float(torch.cat(scores).mean())


def stage_inputs(args):
    """(start weights, training slices, their tissue boxes, validation slices) from the packs (numpy);
    ValueError in words where a part is missing."""
    packs = [read_pack(path) for path in args.pack]
    weights = next((pack for pack in packs if "head_conv/kernel" in pack), {})
    if args.init_weights:  # an earlier `train`'s weights.npz instead of the pack's start model
        with np.load(args.init_weights) as previous:
            weights = dict(previous)
    if "head_conv/kernel" not in weights:
        raise ValueError("no start weights: give a pack made with --init-model, or --init-weights")
    validation = next((pack["validation"] for pack in packs if "validation" in pack), np.zeros((0,)))
    if len(validation) == 0:
        raise ValueError("no validation slices: one pack must be made with --data-dir (and validation slices)")
    slices = [pack for pack in packs if "images" in pack]
    return (weights, np.concatenate([pack["images"] for pack in slices]),
            np.concatenate([pack["boxes"] for pack in slices]).astype(np.int64), validation)


def learning_rate_at(share, peak):
    """The rate at `share` (0-1) of the time budget: a linear warm-up, then a cosine to constants.LR_FLOOR x peak."""
    return peak * min(1.0, share / WARM_UP_SHARE) * cosine_factor(share)  # train.py's cosine, the same floor


def check_patch(patch, factors):
    """The crop side train.py would use for --patch-size (dataset.effective_patch); ValueError if none fits."""
    rows = factors[0]
    if not rows <= patch < constants.TARGET_SIZE:
        raise ValueError(f"--patch-size {patch}: from {rows} to below {constants.TARGET_SIZE}")
    return patch - patch % rows


def run_training(args):
    """One stage: the start network on the device, trained for --minutes, its weights saved as it goes."""
    import torch

    weights, images, boxes, validation = stage_inputs(args)
    factors = stored_factors(weights)
    patch = check_patch(args.patch_size, factors)
    start_blocks = stored_blocks(weights)
    blocks = args.blocks or start_blocks
    if blocks < start_blocks:
        raise ValueError(f"--blocks {blocks}: the start network has {start_blocks}; a stage can add blocks, "
                         "not drop them")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    images, boxes, validation = (torch.from_numpy(array).to(device) for array in (images, boxes, validation))
    net = torch_network(torch, weights["head_conv/kernel"].shape[-1], blocks, factors).to(device)
    net = net.to(memory_format=torch.channels_last)
    torch.manual_seed(args.seed)
    load_start(torch, net, weights, blocks)
    pairs = PairMaker(torch, factors, args.thickness_ratios)
    os.makedirs(args.output_dir, exist_ok=True)
    log = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "factors": list(factors),
           "blocks": blocks, "start_blocks": start_blocks, "training_slices": len(images), "patch": patch, **{
               key: getattr(args, key) for key in ("batch_size", "learning_rate", "minutes", "thickness_ratios")},
           "validation_psnr_start": validation_psnr(torch, net, validation, pairs), "points": []}
    print(f"{log['device']}: x{factors}, {blocks} blocks (start {start_blocks}), {len(images)} slices, "
          f"validation {log['validation_psnr_start']:.3f} dB at the start", flush=True)
    steps = train_for(torch, args, net, (images, boxes, patch), validation, pairs, log)
    log.update(steps=steps, validation_psnr_end=validation_psnr(torch, net, validation, pairs))
    write_atomically(os.path.join(args.output_dir, "log.json"),
                     lambda path: pathlib.Path(path).write_text(json.dumps(log, indent=1)))
    print(f"{steps} steps in {log['seconds']} s; validation {log['validation_psnr_start']:.3f} -> "
          f"{log['validation_psnr_end']:.3f} dB; weights in {args.output_dir}/weights.npz", flush=True)


def train_for(torch, args, net, crops, validation, pairs, log):
    """Adam on MSE, bfloat16 autocast on a GPU, for --minutes (or --max-steps) on batches of `crops` (images,
    tissue boxes, crop side); weights.npz written every --save-every seconds and at the end, a point of the
    validation curve with each.  Returns the steps run."""
    images, boxes, patch = crops
    device = images.device.type
    generator = torch.Generator(device=device).manual_seed(args.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    weights_path = os.path.join(args.output_dir, "weights.npz")

    def save():
        write_atomically(weights_path, lambda path: np.savez(path, **stored_weights(net, net.blocks)))

    budget, began, last_save, step, losses = args.minutes * 60.0, time.time(), time.time(), 0, []
    while (elapsed := time.time() - began) < budget and step < (args.max_steps or math.inf):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(elapsed / budget, args.learning_rate)
        low_res, target = training_batch(torch, images, boxes, args.batch_size, patch, generator, pairs)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            output = net(low_res.contiguous(memory_format=torch.channels_last))
        loss = torch.nn.functional.mse_loss(output.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            losses.append(float(loss.detach()))
        if time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
            point = {"step": step, "seconds": round(last_save - began, 1),
                     "loss": float(np.mean(losses[-20:])) if losses else None,
                     "validation_psnr": validation_psnr(torch, net, validation, pairs)}
            log["points"].append(point)
            print(json.dumps(point), flush=True)
    save()
    log["seconds"] = round(time.time() - began, 1)
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="slices and start weights into one .npz.xz (needs TensorFlow)")
    p.add_argument("--data-dir", help="train/ and validation/ as train.py reads them")
    p.add_argument("--extra-train-dir", nargs="+", metavar="DIR", help="tiled into training slices, as train.py's")
    p.add_argument("--init-model", help="the .keras quality network to start from (in-plane or through-plane)")
    p.add_argument("--part", type=part_of, default=(1, 1), metavar="K/N",
                   help="every N-th training slice from the K-th (validation slices in part 1 only)")
    p.add_argument("--output", required=True)
    t = commands.add_parser("train", help="one stage on a GPU (needs PyTorch)")
    t.add_argument("--pack", required=True, nargs="+", help="packs; one with validation slices")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--init-weights", help="start from an earlier `train`'s weights.npz (Adam and the schedule "
                                          "start afresh: a new stage, not a resume)")
    t.add_argument("--minutes", type=float, default=7.0, help="training time; the cosine spans it")
    t.add_argument("--max-steps", type=int, default=0, help="stop after this many steps too (0: time alone)")
    t.add_argument("--blocks", type=int, default=0, help="residual blocks, at least the start's (0: the start's)")
    t.add_argument("--learning-rate", type=float, default=2e-4)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--patch-size", type=int, default=128, help="high-resolution crop side, cut to a multiple of "
                                                                "the factor (in-plane stages 1-3 used 128)")
    t.add_argument("--thickness-ratios", type=float, nargs="+", default=[1.0], metavar="R",
                   help="through-plane: slice thickness / spacing, one drawn per crop (train.py's flag)")
    t.add_argument("--save-every", type=float, default=60.0, help="seconds between weight saves")
    t.add_argument("--seed", type=int, default=constants.SEED)
    u = commands.add_parser("unpack", help="weights.npz into a .keras quality network (needs TensorFlow)")
    u.add_argument("--weights", required=True)
    u.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        {"pack": pack, "train": run_training, "unpack": unpack}[args.command](args)
    except (OSError, ValueError, KeyError, lzma.LZMAError) as error:  # a missing or foreign file: one line
        print(f"accelerator_stage.py {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
