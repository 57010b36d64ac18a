"""bench.py runs and reports what it times; nothing here asserts a speed."""
import json

import pytest

from conftest import run_main
from lm.device import cpu_has_native_bfloat16


def test_bench_prints_its_table_and_json(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_main('bench.py', '--embed_size', '16', '--hidden_size', '16', '--num_layers', '1',
                    '--batch_size', '4', '--seq_length', '5', '--windows', '3', '--repeats', '2',
                    '--warmup', '0', '--gen_words', '5', '--compare_example', '--json', out,
                    '--amp', '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr
    amp_rows = {'train (bfloat16 autocast)', 'evaluate (bfloat16 autocast)',
                'generate (bfloat16 autocast)'}
    if cpu_has_native_bfloat16():  # timed whatever --amp chose: the figures behind it
        assert all(row in proc.stdout for row in amp_rows)
        assert 'bfloat16 products' in proc.stdout and '--amp: ' in proc.stderr
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
    proc = run_main('bench.py', '--embed_size', '16', '--hidden_size', '16', '--batch_size', '4',
                    '--seq_length', '5', '--windows', '3', '--repeats', '1', '--warmup', '0',
                    '--gen_words', '5', '--recipe', 'regularized', '--wdrop', '0.3',
                    '--json', out, '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr
    assert 'recipe regularized' in proc.stdout
    args = json.loads(out.read_text())['args']
    assert args['variational'] and args['variable_bptt'] and args['dropout'] == 0.4
    assert args['wdrop'] == 0.3 and args['alpha'] == 2.0  # given, and from the recipe
    refused = run_main('bench.py', '--recipe', 'regularized', '--compare_example')
    assert refused.returncode == 2 and '--variational' in refused.stderr


def test_bench_times_training_under_torch_compile(tmp_path):
    """--compile times the trainer's loop with the model under torch.compile beside the eager
    one; here on the LSTM that steps through time (--dropout_recurrent), whose Python loop
    over the window is what the compiler has to trace."""
    out = tmp_path / 'bench.json'
    proc = run_main('bench.py', '--embed_size', '8', '--hidden_size', '8', '--num_layers', '1',
                    '--batch_size', '2', '--seq_length', '3', '--windows', '2', '--repeats', '1',
                    '--warmup', '1', '--gen_words', '2', '--dropout_recurrent', '0.3',
                    '--compile', '--json', out, '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr
    assert 'train (compiled)' in proc.stdout
    results = json.loads(out.read_text())['results']
    assert results['train (compiled)']['median'] > 0 and results['train']['median'] > 0


def test_bench_checks_its_json_path_before_measuring(tmp_path):
    proc = run_main('bench.py', '--json', tmp_path / 'no' / 'such' / 'dir.json', '--embed_size',
                    '8', '--hidden_size', '8')
    assert proc.returncode == 2 and 'cannot write --json' in proc.stderr
    assert 'measure' not in proc.stdout


def test_bench_times_the_onnx_export_beside_pytorch(tmp_path):
    pytest.importorskip('onnxruntime', reason='--onnx needs onnxruntime')
    out = tmp_path / 'bench.json'
    proc = run_main('bench.py', '--embed_size', '16', '--hidden_size', '16', '--batch_size', '4',
                    '--seq_length', '5', '--windows', '3', '--repeats', '1', '--warmup', '0',
                    '--gen_words', '5', '--onnx', '--json', out, '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())['results']
    assert {'evaluate (onnxruntime)', 'generate (onnxruntime)'} <= set(results)
    assert all(r['median'] > 0 for r in results.values())
