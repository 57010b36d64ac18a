"""What --amp and the default --threads mean on a CPU: bfloat16 only where this model's own
matrix products measure faster in it than in float32, and one thread for each core that other
work leaves free. The decisions are tested on injected figures and a real busy process;
nothing here asserts a speed."""
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_script
from lm.device import (
    available_cores,
    busy_cores,
    cpu_autocast,
    cpu_has_native_bfloat16,
    matrix_shapes,
    mixed_precision,
    threads_beside,
)
from model import LSTMLanguageModel

CPU = torch.device('cpu')


@pytest.mark.parametrize('speedup, dtype', [(2.3, torch.bfloat16), (1.01, torch.bfloat16),
                                            (1.0, None), (0.55, None)])
def test_amp_on_a_cpu_takes_bfloat16_only_where_it_measured_faster(speedup, dtype):
    chosen, line = cpu_autocast(speedup)
    assert chosen == dtype
    assert f'{speedup:.2f}x' in line  # the figure behind the decision is printed
    assert ('running in float32' in line) == (dtype is None)


@pytest.mark.parametrize('speedup', [2.3, 0.55])
def test_mixed_precision_on_a_cpu_follows_the_measurement_or_the_missing_instructions(speedup):
    dtype, scaler, line = mixed_precision(CPU, True, speedup=speedup)
    assert scaler is None
    if cpu_has_native_bfloat16():
        assert (dtype, line) == (cpu_autocast(speedup)[0], line)
        assert line.startswith('warning: ') == (speedup < 1)
    else:  # emulated bfloat16 is never faster: no measurement is needed
        assert dtype is None and 'no native bfloat16' in line
    assert mixed_precision(CPU, False, speedup=speedup) == (None, None, None)


@pytest.mark.parametrize('variational', [False, True])
def test_the_products_timed_are_the_models_own(variational):
    model = LSTMLanguageModel(23, 16, 16, 2, 0.0, True, variational=variational)
    shapes = matrix_shapes(model, rows=6)
    # each of 4 LSTM weights and the decoder: forward, and the two products of backward
    assert len(shapes) == 3 * 5
    assert {(6, 16, 23), (6, 23, 16), (23, 6, 16)} <= set(shapes)  # the decoder
    assert (6, 16, 64) in shapes  # a layer's four gates


@pytest.mark.parametrize('default, cores, busy, threads', [
    (2, 2, 0.0, 2),    # an idle machine: PyTorch's default
    (2, 2, 0.3, 2),    # a core partly used (an editor, a browser tab) is still free
    (2, 2, 1.0, 1),    # one busy process on two cores: one thread
    (2, 2, 2.0, 1),    # every core busy: one thread, never none
    (8, 16, 3.2, 8),   # never more than PyTorch's default
    (16, 16, 3.2, 13),
])
def test_threads_beside_other_work_take_the_free_cores(default, cores, busy, threads):
    assert threads_beside(default, cores, busy) == threads


def test_a_busy_core_is_seen_in_the_systems_counters():
    """A real process spinning on one core: busy_cores sees about one core's worth."""
    cores = available_cores()
    spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.3)  # started and spinning
        assert 0.7 <= busy_cores(cores, seconds=0.3) <= len(cores)
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(len(available_cores()) < 2, reason='one core: one thread whatever the load')
def test_a_script_beside_a_busy_core_takes_fewer_threads_and_says_so(tmp_path):
    """generate.py as a user runs it (no OMP_NUM_THREADS, no --threads) beside a process
    spinning on one core; with --threads, or OMP_NUM_THREADS, it keeps the given count."""
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.3)
        chosen = run_script('generate.py', '--checkpoint', tmp_path / 'none.pt', env=env)
        given = run_script('generate.py', '--checkpoint', tmp_path / 'none.pt', '--threads', 2,
                           env=env)
    finally:
        spinner.kill()
        spinner.wait()
    assert 'note: other work keeps' in chosen.stderr and '(--threads N to choose)' in chosen.stderr
    assert 'note: other work keeps' not in given.stderr
    assert chosen.returncode == given.returncode == 1  # then: no checkpoint there
