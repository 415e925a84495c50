"""Stopping a training run on SIGINT or SIGTERM, only where it is safe.

The signal handler only records the request; the training loop calls
`StopRequest.check` at its safe points (before a training step, after an
epoch's backup is written), which raises `TrainingStopped`.  Nothing is ever
raised inside a TensorFlow call or a backup write: an exception thrown from a
signal handler lands wherever the main thread happens to be, and inside
`tf.train.CheckpointManager.save` it crashed the process (a segmentation fault
and a glibc abort, issue 11).
"""
import signal


class TrainingStopped(Exception):
    """Raised at a safe point after SIGINT or SIGTERM; its text says which and where."""


class StopRequest:
    """The first SIGINT/SIGTERM received, and what the run was doing then."""

    def __init__(self):
        self.signal_name = None
        self.during = None
        self.phase = "start-up"

    def install(self):
        """Handles SIGINT and SIGTERM from now on; returns self.

        An inherited ignored SIGINT (a background job of a non-interactive
        shell) stays ignored, as in every Python program.
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) not in (signal.SIG_IGN, self.record):
                signal.signal(signum, self.record)
        return self

    def record(self, signum, frame):
        """The handler: remembers the first request and does nothing else."""
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            self.during = self.phase

    def check(self):
        """Raises TrainingStopped if a stop was requested; call only where stopping is safe."""
        if self.signal_name is not None:
            raise TrainingStopped(f"{self.signal_name} during {self.during}")
