"""What --amp means on a CPU: bfloat16 only where this model's own matrix products measure
faster in it than in float32. The decision is tested on injected figures; nothing here
asserts a speed."""
import math

import pytest
import torch

from lm.device import (
    bfloat16_speedup,
    cpu_autocast,
    cpu_has_native_bfloat16,
    matrix_shapes,
    mixed_precision,
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
    ratio = bfloat16_speedup(shapes, seconds=0)
    assert math.isfinite(ratio) and ratio > 0
