"""How signals stop a run (lm/signals.py), in real processes: at once while there is nothing
to save, at a window's edge while training, never in the middle of a write."""
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import (
    ROOT,
    SIGNALLED,
    STOPPED_AT,
    pattern_corpus,
    printed_test_lines,
    run_main,
    signal_at,
    train,
    trainer_process,
    wait_for,
    write_corpus,
)
from lm.signals import STOP_SIGNALS


def test_sigterm_saves_a_last_checkpoint_and_the_printed_command_resumes(tmp_path, long_corpus):
    """The whole path a scheduler takes: SIGTERM to a training process, exit 143 with the
    resume command printed once, and that command continues the run."""
    proc = trainer_process(tmp_path, '--epochs', '2', corpus=long_corpus)
    wait_for(proc, 'Epoch 1:')
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 'Traceback' not in err and 'Testing' not in out
    stop_line = next(line for line in out.splitlines() if line.startswith('Training stopped'))
    assert stop_line.startswith('Training stopped by SIGTERM. Resume with: python demo_tie.py')
    assert 'Resume with' not in err  # printed once, on standard output
    command = stop_line.split('Resume with: ')[1]
    assert command.endswith(f'--resume {tmp_path / "model.last.pt"}')
    last = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert last['epoch'] == 1 and last['position'] is not None
    resumed = run_main('demo_tie.py', *shlex.split(command)[2:])
    assert resumed.returncode == 0, resumed.stderr
    assert 'Epoch: 2,' in resumed.stdout and printed_test_lines(resumed)


@pytest.mark.parametrize('signum', [signal.SIGUSR1, signal.SIGUSR2])
def test_a_batch_schedulers_warning_signal_saves_and_stops_like_sigterm(tmp_path, signum):
    """Slurm's --signal and SGE's -notify send SIGUSR1 or SIGUSR2 before the time runs out."""
    proc, _ = train(tmp_path, epochs=3, on_window=signal_at(1, SIGNALLED, signum))
    assert proc.returncode == 128 + signum, proc.stderr
    name = signal.Signals(signum).name
    assert f'Training stopped by {name}. Resume with: python demo_tie.py' in proc.stdout
    last = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert last['position']['window'] == STOPPED_AT


def test_sighup_saves_the_epoch_in_progress_and_exits_129(tmp_path, long_corpus):
    proc = trainer_process(tmp_path, '--epochs', '50', corpus=long_corpus)
    wait_for(proc, 'Epoch 1:')
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    assert torch.load(tmp_path / 'model.last.pt', weights_only=True)['position'] is not None
    assert 'Training stopped by SIGHUP. Resume with: python demo_tie.py' in out


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_trainer_starts_ends_it_at_once_with_a_line(tmp_path, signum):
    pattern_corpus(tmp_path / 'corpus')
    proc = trainer_process(tmp_path, '--epochs', '5')
    handling(proc)  # then it imports PyTorch, which takes far longer than delivery
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert 'stopped at once' in err and 'Traceback' not in err
    assert not (tmp_path / 'model.last.pt').exists()


def handling(proc):
    """Wait until `proc` has installed its handlers of STOP_SIGNALS (their bits in SigCgt of
    /proc/PID/status), the first thing the trainer does, rather than for a guessed time.
    Python catches SIGINT itself from the start, so the bits of the others tell: the script
    installs them all in a row."""
    status = Path(f'/proc/{proc.pid}/status')
    if not status.exists():
        pytest.skip('needs /proc to see when the handler is installed')
    while True:
        caught = next(line for line in status.read_text().splitlines()
                      if line.startswith('SigCgt:'))
        if all(int(caught.split()[1], 16) >> (s - 1) & 1 for s in STOP_SIGNALS):
            return
        assert proc.poll() is None, 'the trainer ended before installing its handler'
        time.sleep(0.001)


def run_snippet(code):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_before_training_starts_a_signal_ends_the_run_at_once():
    """What the trainer installs before reading data: nothing to save yet, so no waiting for
    a window that will not come."""
    proc = run_snippet('''
        import os, signal, time
        from lm.signals import StopRequest
        signal.signal(signal.SIGTERM, StopRequest())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print('still running')
    ''')
    assert proc.returncode == 143 and 'still running' not in proc.stdout
    assert 'SIGTERM received: stopped at once' in proc.stderr


def test_a_second_signal_during_a_write_lets_the_write_finish_then_ends():
    proc = run_snippet('''
        import os, signal, time
        from lm.signals import StopRequest
        stop = StopRequest()
        stop.immediate = False  # training
        signal.signal(signal.SIGINT, stop)
        os.kill(os.getpid(), signal.SIGINT)  # first: stop after the window
        with stop.writing():
            os.kill(os.getpid(), signal.SIGINT)  # second, while a checkpoint is written
            time.sleep(0.2)
            print('write complete', flush=True)
        print('after the write')
    ''')
    assert proc.returncode == 130
    assert proc.stdout.splitlines() == ['write complete']
    assert 'stopping once the file being written is complete' in proc.stderr


def test_a_second_ctrl_c_always_exits_130_cleanly(tmp_path, long_corpus):
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        proc = trainer_process(folder, '--epochs', 3, corpus=long_corpus)
        wait_for(proc, 'Epoch 1:')
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01 * attempt)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert 'Traceback' not in err


def test_a_signal_during_the_final_test_ends_it_at_once(tmp_path):
    # a long test split, so that the test takes long enough to be interrupted
    write_corpus(tmp_path / 'corpus', 'one two three four five six seven eight\n' * 300,
                 test='one two three four five six seven eight\n' * 60000)
    proc = trainer_process(tmp_path, '--epochs', 1)
    wait_for(proc, 'Testing: ', stream='stdout')
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert 'stopped at once' in err and 'Test Loss' not in out and 'Traceback' not in err
