"""The fast training loop computes what the plain one does; bench.py runs. No timings asserted."""
import contextlib
import copy
import json
import re

import pytest
import torch

import data
from bench import example_train
from conftest import run_main, run_script, train_tiny
from device import cpu_has_native_bfloat16
from engine import Stepping, make_optimizer, train_epoch
from model import LSTMLanguageModel
from runstate import seed_everything


@pytest.mark.parametrize('tied', [True, False])
def test_optimised_loop_gives_the_losses_of_the_plain_loop(tied):
    seed_everything(0)
    stream = torch.randint(3, 60, (4 * 61,))
    batched = data.batchify(stream, 4)  # 60 steps: 10 windows of 6
    fast = LSTMLanguageModel(60, 16, 16, 2, 0.3, tied)
    plain = copy.deepcopy(fast)
    fast_opt = make_optimizer(fast, 0.01, 1e-5)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=0.01, weight_decay=1e-5, foreach=True)

    torch.manual_seed(7)  # the same dropout masks for both
    fast_losses = train_epoch(fast, batched, data.fixed_windows(batched, 6),
                              Stepping(fast_opt, clip=0.5)).losses.tolist()
    torch.manual_seed(7)
    plain_losses = example_train(plain, batched, plain_opt, 6, 0.5)

    assert len(fast_losses) == len(plain_losses) == 10
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    assert (fast.fc.weight is fast.embedding.weight) == tied


def test_amp_on_the_cpu_trains_learns_and_saves_float32(tmp_path):
    proc, save = train_tiny(tmp_path, '--amp', epochs=2)
    assert proc.returncode == 0, proc.stderr
    emulated = 'no native bfloat16' in proc.stderr
    assert emulated == (not cpu_has_native_bfloat16())  # float32, with a warning, only there
    ppl = float(re.findall(r'Validation Perplexity: (\d+\.\d+)', proc.stdout)[-1])
    assert ppl < 2.0  # the pattern corpus is learnt
    for path in (save, tmp_path / 'model.last.pt'):
        state = torch.load(path, weights_only=True)['model_state']
        assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    # the checkpoint is interchangeable: resumed without --amp, evaluated without it
    resumed, _ = train_tiny(tmp_path, '--resume', epochs=3)
    assert resumed.returncode == 0, resumed.stderr
    assert 'Epoch: 3,' in resumed.stdout


def test_bfloat16_autocast_losses_stay_close_to_float32():
    """bfloat16 keeps 8 significant bits, so each product's inputs are rounded by up to
    2**-9 (0.2%) relative; the loss, an average over the window, moves by much less than
    that in relative terms as long as training has not diverged. We allow 1% over the
    first 12 windows, a bound that a wrong cast (float16 overflow, an unscaled gradient,
    weights kept in bfloat16) would break, while rounding noise stays well inside it
    (measured on the development machine: at most 0.26%).

    Run through the trainer's own train_epoch. Where the CPU lacks native bfloat16, oneDNN
    has no bfloat16 LSTM at all ("could not create a primitive descriptor"), which is one
    more reason --amp trains in float32 there; the test then turns oneDNN off, so that the
    LSTM runs in float32 and the decoder's products in (emulated) bfloat16."""
    seed_everything(0)
    stream = torch.arange(3, 23).repeat(60)[:8 * 145]  # a learnable sequence: losses fall
    batched = data.batchify(stream, 8)  # 145 steps: 12 windows of 12
    reference = LSTMLanguageModel(23, 32, 32, 2, 0.0, True)
    amp = copy.deepcopy(reference)
    losses = {}
    onednn = (contextlib.nullcontext() if cpu_has_native_bfloat16()
              else torch.backends.mkldnn.flags(enabled=False))
    with onednn:
        for name, model, dtype in (('float32', reference, None), ('bfloat16', amp, torch.bfloat16)):
            opt = make_optimizer(model, 0.01, 1e-5)
            losses[name] = train_epoch(model, batched, data.fixed_windows(batched, 12),
                                       Stepping(opt, clip=0.5,
                                                autocast_dtype=dtype)).losses.tolist()
            assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    # it learns, so the check means something
    assert losses['float32'][-1] < losses['float32'][0] - 0.1
    assert losses['bfloat16'] == pytest.approx(losses['float32'], rel=0.01)
    assert losses['bfloat16'] != losses['float32']  # autocast did change the arithmetic


def test_bench_prints_its_table_and_json(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_script('bench.py', '--embed_size', '16', '--hidden_size', '16', '--num_layers', '1',
                      '--batch_size', '4', '--seq_length', '5', '--windows', '3', '--repeats', '2',
                      '--warmup', '0', '--gen_words', '5', '--compare_example', '--json', out,
                      '--amp')
    assert proc.returncode == 0, proc.stderr
    amp_rows = {'train (bfloat16 autocast)', 'evaluate (bfloat16 autocast)',
                'generate (bfloat16 autocast)'}
    if cpu_has_native_bfloat16():
        assert all(row in proc.stdout for row in amp_rows)
    else:
        assert 'no native bfloat16' in proc.stderr and 'autocast' not in proc.stdout
        amp_rows = set()
    for row in ('train ', 'train (word_language_model loop)', 'evaluate', 'generate',
                'peak memory'):
        assert row in proc.stdout
    result = json.loads(out.read_text())
    assert set(result['results']) == {'train', 'train (word_language_model loop)', 'evaluate',
                                      'generate'} | amp_rows
    assert all(r['median'] > 0 for r in result['results'].values())


def test_bench_times_the_model_and_loss_of_a_recipe(tmp_path):
    """--recipe builds the model demo_tie.py's recipe trains (its regularisers, a flag given
    overriding it) and trains it with the recipe's activation penalties."""
    out = tmp_path / 'bench.json'
    proc = run_script('bench.py', '--embed_size', '16', '--hidden_size', '16', '--batch_size', '4',
                      '--seq_length', '5', '--windows', '3', '--repeats', '1', '--warmup', '0',
                      '--gen_words', '5', '--recipe', 'regularized', '--wdrop', '0.3',
                      '--json', out)
    assert proc.returncode == 0, proc.stderr
    assert 'recipe regularized' in proc.stdout
    args = json.loads(out.read_text())['args']
    assert args['variational'] and args['variable_bptt'] and args['dropout'] == 0.4
    assert args['wdrop'] == 0.3 and args['alpha'] == 2.0  # given, and from the recipe
    refused = run_main('bench.py', '--recipe', 'regularized', '--compare_example')
    assert refused.returncode == 2 and '--variational' in refused.stderr
