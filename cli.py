"""Command-line pieces shared by train.py, predict.py and benchmark.py."""
import argparse


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


def import_tensorflow_quietly():
    """Imports TensorFlow with its import-time C++ chatter hidden.

    On a machine without CUDA, TF prints "Could not find cuda drivers" and an
    absl notice to stderr at import, whatever TF_CPP_MIN_LOG_LEVEL says; that
    would bury our one-line messages.  The chatter is kept and shown only if
    the import itself fails.
    """
    import os
    import sys
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as chatter:
        os.dup2(chatter.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            chatter.seek(0)
            sys.stderr.write(chatter.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
