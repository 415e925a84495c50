"""The user's own 2D images (PNG, JPEG, BMP, TIFF) of any mode, super-resolved into a file of the same kind.

Greyscale images go through the network in their own intensity range and come
back in their own depth (8-bit and 16-bit as PNG, 32-bit integer and float as
TIFF); colour images have their Y (luma) super-resolved by the network and
their chroma and alpha by bicubic resizing, as the Keras ESPCN example does.
The output array is allocated once, in the output's data type, and filled
tile by tile and band by band, so memory stays near the output's own size.
"""
import numpy as np
from PIL import Image

import constants
import inference
import modules

HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L")
# Input rows of context on each side of a band beyond the network's receptive radius (the ESPCN's 5,
# the quality network's 16: inference.receptive_radius), covering bicubic's support (2) too, so the
# bands join seamlessly.
BAND_EXTRA_MARGIN = 3
# Colour images are super-resolved in bands of this many input rows: bounds the memory of the colour
# conversion to one band beside the output image.  A band and its context fit one tile's rows.
BAND_ROWS = constants.TILE_SIZE // 2


def super_resolve(model, image, batch_size=None, ensemble=1, edges="auto"):
    """(output PIL image, file suffix, warning or None) for a decoded PIL image of any mode.

    batch_size, ensemble and edges are inference.upscale_planes'.
    """
    factor = modules.model_upscale_factor(model)
    warning = frames_warning(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("L" if image.mode == "1" else "RGB")
    if image.mode == "F":
        values, nan_mask, n_nan, n_inf = inference.finite_copy(np.asarray(image, np.float32))
        out = upscale_grey(model, values, np.float32, batch_size, nan_mask=nan_mask, ensemble=ensemble,
                           edges=edges)
        note = inference.non_finite_warning(n_nan, n_inf, nan_kept=True)
        return Image.fromarray(out, mode="F"), ".tif", inference.join_warnings(warning, note)
    if image.mode == "I":  # 32-bit integers: PNG holds 16 bits at most, TIFF holds them all
        out = upscale_grey(model, np.asarray(image), np.int32, batch_size, ensemble=ensemble, edges=edges)
        return Image.fromarray(out), ".tif", warning
    if image.mode in HIGH_DEPTH_MODES:
        out = upscale_grey(model, np.asarray(image), np.uint16, batch_size, ensemble=ensemble, edges=edges)
        return Image.fromarray(out), ".png", warning
    size = (image.width * factor, image.height * factor)
    alpha = image.getchannel("A").resize(size, Image.BICUBIC) if image.mode in ("RGBA", "LA", "PA") else None
    if image.mode in ("L", "LA"):
        result = Image.fromarray(upscale_grey(model, np.asarray(image.getchannel("L")), np.uint8, batch_size,
                                              full_range=True, ensemble=ensemble, edges=edges))
        return (Image.merge("LA", (result, alpha)) if alpha is not None else result), ".png", warning
    result = upscale_colour(model, image.convert("RGB"), batch_size, ensemble, edges)
    if alpha is not None:
        result.putalpha(alpha)
    return result, ".png", warning


def frames_warning(image):
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        return f"{frames} frames: only the first was super-resolved; frames 2 to {frames} are left out"
    return None


def upscale_grey(model, values, dtype, batch_size, full_range=False, nan_mask=None, ensemble=1, edges="auto"):
    """The upscaled (H*f, W*f) array of `dtype` for a greyscale array.

    The network sees 8-bit images on their type's full range (`full_range`),
    deeper ones (16- and 32-bit, float) on their own min to max, since their
    values often fill a small part of the type (e.g. 0-4000 in 16 bits).
    """
    factor = modules.model_upscale_factor(model)
    height, width = values.shape
    if full_range:
        low, high = 0.0, float(np.iinfo(dtype).max)
    else:
        low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    out = np.empty((height * factor, width * factor), dtype)
    inference.check_output_fits(out.nbytes)

    def write(_, top, left, block):
        result = block * span + low
        if np.dtype(dtype).kind in "iu":
            limits = np.iinfo(dtype)
            result = np.clip(np.round(result), limits.min, limits.max)
        if nan_mask is not None:
            inference.put_back_nan(result, nan_mask, top, left, factor)
        out[top:top + block.shape[0], left:left + block.shape[1]] = result

    plane = (values.astype(np.float32) - low) / span
    inference.upscale_planes(model, plane[None], write, batch_size, ensemble=ensemble, edges=edges)
    return out


def upscale_colour(model, image, batch_size, ensemble=1, edges="auto"):
    """The upscaled RGB PIL image of an RGB PIL image: Y by the model, chroma bicubic, band by band.

    Each band of input rows is super-resolved with rows of real context on
    either side (the network's receptive radius and BAND_EXTRA_MARGIN more,
    beyond bicubic's support), and only its centre is kept, so the bands join into
    exactly the whole-image result while memory holds one output image plus
    one band.  The edges are decided once, on the whole image's luma, so that
    every band takes the same path.
    """
    factor = modules.model_upscale_factor(model)
    ycbcr = image.convert("YCbCr")
    if edges == "auto":
        luma = np.asarray(ycbcr.getchannel("Y"), np.float32) / 255.0
        edges = "trained" if inference.serves_as_trained(luma, inference.receptive_radius(model)) else "mirror"
    margin = inference.receptive_radius(model) + BAND_EXTRA_MARGIN
    result = Image.new("RGB", (image.width * factor, image.height * factor))
    inference.check_output_fits(image.width * image.height * factor ** 2 * 4, "the output")
    for top in range(0, image.height, BAND_ROWS):
        bottom = min(image.height, top + BAND_ROWS)
        start, stop = max(0, top - margin), min(image.height, bottom + margin)
        band = ycbcr.crop((0, start, image.width, stop))
        size = (band.width * factor, band.height * factor)
        keep = (0, (top - start) * factor, size[0], (bottom - start) * factor)
        y, cb, cr = band.split()
        out_y = Image.fromarray(upscale_grey(model, np.asarray(y), np.uint8, batch_size, full_range=True,
                                           ensemble=ensemble, edges=edges))
        channels = (out_y, cb.resize(size, Image.BICUBIC), cr.resize(size, Image.BICUBIC))
        result.paste(Image.merge("YCbCr", channels).crop(keep).convert("RGB"), (0, top * factor))
    return result
