"""How a run stops: the signals that end it, at once or at a window's edge. Imports nothing
heavy, so that demo_tie.py can install a handler before it imports PyTorch.
"""
import contextlib
import os
import signal
import sys

# Ctrl-C, a scheduler's or the system's stop, a closed terminal, and the warnings that batch
# schedulers send before a job's time runs out (Slurm's --signal, SGE's -notify). SIGQUIT
# (Ctrl-backslash) keeps its meaning, quit at once: like SIGKILL, it loses only the epoch in
# progress.
STOP_SIGNALS = tuple(getattr(signal, name)
                     for name in ('SIGINT', 'SIGTERM', 'SIGHUP', 'SIGUSR1', 'SIGUSR2')
                     if hasattr(signal, name))  # Windows has SIGINT and SIGTERM only


class StopRequest:
    """The handler of STOP_SIGNALS.

    While the run starts up (reading data, building the model) and during the final test
    (`immediate`) there is nothing to save: a signal ends the process at once with 128 + its
    number. During training the run stops after the window in progress and writes its last
    checkpoint; a second signal then ends it at once, except while a file is being written
    (`writing()`), which is finished first. The files on disk are whole at every moment, since
    each is replaced by one rename."""

    def __init__(self):
        self.signum = None
        self.immediate = True  # until training starts
        self._writing, self._exit_after_write = False, None

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.immediate or self.signum is not None:
            if self._writing:
                self._exit_after_write = signum
                print(f'\n{name} received: stopping once the file being written is complete',
                      file=sys.stderr, flush=True)
                return
            stop_at_once(signum, frame)
        self.signum = signum
        print(f'\n{name} received: stopping after the current window', file=sys.stderr,
              flush=True)

    @contextlib.contextmanager
    def writing(self):
        """A block that writes a run's file: a signal that would end the process waits for it."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            if self._exit_after_write is not None:
                stop_at_once(self._exit_after_write, None)


def stop_at_once(signum, frame):
    sys.stdout.flush()
    print(f'\n{signal.Signals(signum).name} received: stopped at once', file=sys.stderr,
          flush=True)
    os._exit(128 + signum)
