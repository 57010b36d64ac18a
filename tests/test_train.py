"""demo_tie.py run as a user runs it, on tiny corpora."""
import csv
import os
import re
import stat

import pytest
import torch

from conftest import PATTERN, TINY, pattern_corpus, run_main, run_script, write_corpus


def test_training_prints_the_reference_lines_and_learns_a_predictable_corpus(trained):
    out = trained['proc'].stdout
    lines = out.splitlines()
    assert lines[0] == 'Using device: cpu'
    assert lines[1] == 'Vocabulary size: 12'  # 3 specials, <unk>, 8 words
    assert lines[2] == 'LSTMLanguageModel('
    assert re.search(r'^Total parameters: \d+\n\n', out, re.MULTILINE)
    epochs = re.findall(r'^Epoch: (\d+), Validation Loss: (\d+\.\d{4}), Validation Perplexity: '
                        r'(\d+\.\d{4}), Time: \d+m \d+s$', out, re.MULTILINE)
    assert [e[0] for e in epochs] == ['1', '2', '3']
    assert out.count('current lr: [0.01]') == 3
    assert 'Best model saved with Perplexity: ' in out
    assert float(epochs[-1][2]) < 1.5  # the next word is always determined
    block = re.search(r'-{41}\nTesting: \n-{41}\nTest Loss: (\d+\.\d{4}), Test Perplexity: '
                      r'(\d+\.\d{4})\nTest Loss without <sos>: \d+\.\d{4}, Test Perplexity '
                      r'without <sos>: (\d+\.\d{4})', out)
    assert block and float(block[2]) < 1.5
    assert 'Test Evaluation' in trained['proc'].stderr  # the progress bar


def test_checkpoint_opens_with_weights_only_and_carries_what_generation_needs(trained):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    assert ckpt['vocab'][:3] == ['<pad>', '<sos>', '<eos>']
    assert ckpt['model_args'] == {'vocab_size': 12, 'embed_size': 16, 'hidden_size': 16,
                                  'num_layers': 1, 'dropout': 0.1, 'tied': True}
    assert ckpt['epoch'] >= 1 and ckpt['args']['seed'] == 1111
    last = torch.load(trained['folder'] / 'model.last.pt', weights_only=True)
    assert last['epoch'] == 3 and 'optimizer' in last and last['position'] is None


def test_metrics_csv_has_one_row_per_epoch(trained):
    with open(trained['folder'] / 'model.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['1', '2', '3']
    assert set(rows[0]) == {'epoch', 'train_loss', 'train_ppl', 'val_loss', 'val_ppl',
                            'val_loss_no_sos', 'val_ppl_no_sos', 'lr', 'seconds',
                            'train_tokens_per_s'}
    val_ppl = re.findall(r'Validation Perplexity: (\d+\.\d{4})', trained['proc'].stdout)
    assert [r['val_ppl'] for r in rows] == val_ppl
    assert float(rows[2]['train_loss']) < float(rows[0]['train_loss'])


def test_the_files_a_run_writes_have_a_normal_files_mode(trained):
    """They are written through private temporary files, yet must end up readable like any
    file the user creates (0666 less the umask), e.g. by a plotting job of another account."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ('model.pt', 'model.last.pt', 'model.csv'):
        assert stat.S_IMODE(os.stat(trained['folder'] / name).st_mode) == 0o666 & ~umask, name


def test_eval_only_reproduces_the_test_numbers_of_training(trained):
    proc = run_script('demo_tie.py', '--eval_only', '--data_dir', trained['corpus'],
                      '--save_path', trained['checkpoint'])
    assert proc.returncode == 0, proc.stderr
    test_lines = [l for l in trained['proc'].stdout.splitlines() if l.startswith('Test Loss')]
    assert test_lines == [l for l in proc.stdout.splitlines() if l.startswith('Test Loss')]
    assert 'Validation Perplexity: ' in proc.stdout


def fails(proc, message):
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr


@pytest.mark.parametrize('flag,value', [('--batch_size', '0'), ('--seq_length', '-3'),
                                        ('--epochs', '0'), ('--embed_size', 'x'),
                                        ('--dropout', '1'), ('--dropout', '-0.1'),
                                        ('--lr', '0'), ('--lr', 'nan'), ('--clip', '-1'),
                                        ('--lr_factor', '1.5'), ('--device', 'tpu')])
def test_bad_flag_values_are_usage_errors(flag, value, tmp_path):
    fails(run_main('demo_tie.py', flag, value, '--data_dir', tmp_path),
          f'argument {flag}|{value}')


def test_missing_data_folder_says_run_getdata(tmp_path):
    fails(run_script('demo_tie.py', '--data_dir', tmp_path / 'nope', '--save_path',
                     tmp_path / 'm.pt'),
          r'data folder not found: .*nope.*bash getdata\.sh')


def test_missing_split_file_is_named(tmp_path):
    pattern_corpus(tmp_path / 'c')
    (tmp_path / 'c' / 'test.txt').unlink()
    fails(run_main('demo_tie.py', '--data_dir', tmp_path / 'c', '--save_path', tmp_path / 'm.pt'),
          r'missing data file: .*test\.txt')


def test_empty_split_is_an_error(tmp_path):
    write_corpus(tmp_path / 'c', PATTERN + '\n', '\n\n', PATTERN + '\n')
    fails(run_main('demo_tie.py', '--data_dir', tmp_path / 'c', '--save_path', tmp_path / 'm.pt'),
          r'valid\.txt is empty')


def test_corpus_smaller_than_one_window_is_an_error(tmp_path):
    pattern_corpus(tmp_path / 'c', train_lines=2)
    fails(run_main('demo_tie.py', '--data_dir', tmp_path / 'c', '--save_path', tmp_path / 'm.pt',
                   '--batch_size', '20', '--seq_length', '30'),
          r'train split is too small: 20 tokens.*needs 620')


def test_tied_with_different_sizes_is_refused(tmp_path):
    fails(run_main('demo_tie.py', '--tied', '--embed_size', '8', '--hidden_size', '16',
                   '--data_dir', tmp_path), r'--tied needs --embed_size equal to --hidden_size')


def test_unwritable_save_path_fails_before_training(tmp_path):
    pattern_corpus(tmp_path / 'c')
    (tmp_path / 'afile').write_text('')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'c', *TINY,
                    '--save_path', tmp_path / 'afile' / 'm.pt')
    fails(proc, r'cannot write checkpoint .*afile/m\.pt')
    assert 'Epoch' not in proc.stdout + proc.stderr


def test_untied_model_trains_too(tmp_path):
    pattern_corpus(tmp_path / 'c')
    proc = run_script('demo_tie.py', '--data_dir', tmp_path / 'c', '--embed_size', '8',
                      '--hidden_size', '16', '--num_layers', '2', '--batch_size', '4',
                      '--seq_length', '8', '--epochs', '1', '--save_path', tmp_path / 'u.pt')
    assert proc.returncode == 0, proc.stderr
    assert 'LSTM(8, 16, num_layers=2, batch_first=True, dropout=0.5)' in proc.stdout
    assert not torch.load(tmp_path / 'u.pt', weights_only=True)['model_args']['tied']


def test_vocabulary_options_print_how_many_training_words_became_unk(tmp_path):
    write_corpus(tmp_path / 'c', (PATTERN + '\n') * 200 + 'rare words here\n')
    proc = run_script('demo_tie.py', '--data_dir', tmp_path / 'c', *TINY, '--tied', '--epochs', '1',
                      '--min_count', '2', '--save_path', tmp_path / 'm.pt')
    assert proc.returncode == 0, proc.stderr
    assert 'Vocabulary size: 12' in proc.stdout  # the 8 pattern words, 3 specials, <unk>
    assert re.search(r'Words not in the vocabulary, read as <unk>: train 3 \(0\.\d+% of its '
                     r'tokens\)', proc.stdout)
    vocab = torch.load(tmp_path / 'm.pt', weights_only=True)['vocab']
    assert 'rare' not in vocab and '<unk>' in vocab
