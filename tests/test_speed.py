"""The fast training loop computes what the plain one does; bench.py runs. No timings asserted."""
import copy
import json

import pytest
import torch

import data
from bench import example_train
from conftest import run_script, train_tiny
from demo_tie import make_optimizer, seed_everything, train_epoch
from model import LSTMLanguageModel


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
    fast_losses = train_epoch(fast, batched, fast_opt, 6, 0.5).losses.tolist()
    torch.manual_seed(7)
    plain_losses = example_train(plain, batched, plain_opt, 6, 0.5)

    assert len(fast_losses) == len(plain_losses) == 10
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    assert (fast.fc.weight is fast.embedding.weight) == tied


def test_amp_without_cuda_warns_and_trains_in_float32(tmp_path):
    proc, save = train_tiny(tmp_path, '--amp', epochs=1)
    assert proc.returncode == 0, proc.stderr
    assert 'warning: --amp works on CUDA only' in proc.stderr
    assert torch.load(save, weights_only=True)['model_state']['fc.bias'].dtype == torch.float32


def test_bench_prints_its_table_and_json(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_script('bench.py', '--embed_size', '16', '--hidden_size', '16', '--num_layers', '1',
                      '--batch_size', '4', '--seq_length', '5', '--windows', '3', '--repeats', '2',
                      '--warmup', '0', '--gen_words', '5', '--compare_example', '--json', out)
    assert proc.returncode == 0, proc.stderr
    for row in ('train ', 'train (word_language_model loop)', 'evaluate', 'generate', 'peak memory'):
        assert row in proc.stdout
    result = json.loads(out.read_text())
    assert set(result['results']) == {'train', 'train (word_language_model loop)', 'evaluate', 'generate'}
    assert all(r['median'] > 0 for r in result['results'].values())
