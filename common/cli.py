"""Command-line pieces shared by train.py, predict.py and benchmark.py."""
import argparse
import contextlib
import os
import sys
import tempfile

import constants


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def a_number(text):
    """A float from a flag's text; argparse's one-line error when it is not one."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive_float(text):
    value = a_number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def unit_share(text):
    """A share from 0 to 1 (a float)."""
    value = a_number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be 0 to 1, got {value:g}")
    return value


def upscale_factor(text):
    """A factor the models can be built for: 2 to 8 (1 would leave the image as it is)."""
    value = positive_int(text)
    if not 2 <= value <= 8:
        raise argparse.ArgumentTypeError(f"must be 2 to 8, got {value}")
    return value


def filter_counts(text):
    """The feature convolutions' filter counts: three positive integers, e.g. "64,64,32"."""
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"must be three counts like 64,64,32, got {text!r}")
    counts = tuple(positive_int(part.strip()) for part in parts)
    if max(counts) > 1024:
        raise argparse.ArgumentTypeError(f"at most 1024 filters a layer, got {text!r}")
    return counts


def check_output_dir(output_dir):
    """Creates the output dir; ValueError naming it if it cannot be written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(f"--output-dir {output_dir}: cannot write there ({error.strerror or error})") from None


@contextlib.contextmanager
def quiet_native_stderr():
    """Hides what native code writes to stderr inside the block, unless the block fails.

    TensorFlow's C++ side prints notices such as "Could not find cuda drivers"
    and "failed call to cuInit" on machines without CUDA, whatever
    TF_CPP_MIN_LOG_LEVEL says; they would bury our one-line messages.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as chatter:
        os.dup2(chatter.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            chatter.seek(0)
            sys.stderr.write(chatter.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def target_size(text):
    value = positive_int(text)
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 from 16 up, got {value}")
    return value


def per_network(preset):
    """A through-plane preset's value for each network, in words for --help and docs/flags.md (both are made
    from constants.NETWORK_PRESETS): per_network("flips") is "4 (ESPCN), 1 (Quality network)"."""
    return ", ".join(f"{constants.NETWORK_PRESETS[network][preset]:g} ({constants.NETWORK_LABELS[network]})"
                     for network in constants.NETWORKS)
