"""The checkpoint format (lm/checkpoint.py): what a checkpoint holds, files that are not
checkpoints or lie about themselves, hostile ones, and checkpoints written by older code."""
import csv
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, TRAINED_TOL, block_reading, copy_run, fails, run_main

OLD = Path(__file__).resolve().parent / 'fixtures' / 'old_run'


def test_checkpoint_opens_with_weights_only_and_carries_what_generation_needs(trained):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    assert ckpt['vocab'][:3] == ['<pad>', '<sos>', '<eos>']
    assert ckpt['model_args'] == {'vocab_size': 12, 'embed_size': 16, 'hidden_size': 16,
                                  'num_layers': 1, 'dropout': 0.1, 'tied': True}
    assert ckpt['epoch'] >= 1 and ckpt['args']['seed'] == 1111
    last = torch.load(trained['folder'] / 'model.last.pt', weights_only=True)
    assert last['epoch'] == 3 and 'optimizer' in last and last['position'] is None


def read_with(reader, trained, path):
    """One of the three scripts that read a best checkpoint, on `path`."""
    if reader == 'score.py':
        return run_main('score.py', '--checkpoint', path, trained['corpus'] / 'test.txt')
    if reader == 'generate.py':
        return run_main('generate.py', '--checkpoint', path, '--num_words', 3)
    return run_main('demo_tie.py', '--eval_only', '--data_dir', trained['corpus'],
                    '--save_path', path)


class Marker:
    """Unpickling this creates a file: what a hostile checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize('writer', ['torch.save', 'pickle'])
def test_hostile_checkpoint_never_runs_code(tmp_path, writer, trained):
    marker = tmp_path / 'pwned'
    bad = tmp_path / 'bad.pt'
    payload = {'format': 'lstm-tied-lm/1', 'evil': Marker(marker)}
    if writer == 'pickle':
        bad.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, bad)
    for proc in (read_with('generate.py', trained, bad), read_with('score.py', trained, bad),
                 run_main('demo_tie.py', '--data_dir', trained['corpus'], *TINY, '--tied',
                          '--save_path', tmp_path / 'm.pt', '--resume', bad)):
        fails(proc, 'can be opened safely')
        assert 'Warning' not in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'random pickle', 'empty', 'foreign',
                                    'csv', 'text'])
def test_files_that_are_not_checkpoints_are_called_so(tmp_path, trained, damage):
    good = Path(trained['checkpoint']).read_bytes()
    bad = tmp_path / 'bad.pt'
    if damage == 'truncated':
        bad.write_bytes(good[:len(good) // 2])
    elif damage == 'garbage':
        bad.write_bytes(os.urandom(5000))
    elif damage == 'random pickle':
        bad.write_bytes(b'\x80\x02' + os.urandom(3000))
    elif damage == 'empty':
        bad.write_bytes(b'')
    elif damage == 'foreign':
        torch.save({'state_dict': {'w': torch.zeros(3)}}, bad)
    elif damage == 'csv':
        bad.write_bytes((trained['folder'] / 'model.csv').read_bytes())
    else:
        bad.write_text('hello world\nthis is text\n')
    for reader in ('generate.py', 'demo_tie.py'):
        proc = read_with(reader, trained, bad)
        fails(proc, r'error: .* is not a checkpoint')
        assert 'run code' not in proc.stderr


@pytest.mark.parametrize('kind, expected', [('fifo', 'is not a regular file'),
                                            ('device', 'is not a regular file'),
                                            ('unreadable', 'cannot read .*: Permission denied')])
def test_a_checkpoint_that_cannot_be_read_is_named_with_the_reason(tmp_path, trained, kind,
                                                                   expected):
    bad = tmp_path / 'bad.pt'
    block_reading(bad, kind, Path(trained['checkpoint']).read_bytes())
    for reader in ('generate.py', 'score.py'):
        fails(read_with(reader, trained, bad), expected)


def test_a_checkpoint_of_a_newer_format_says_so(tmp_path, trained):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    ckpt['format'] = 'lstm-tied-lm/2'
    torch.save(ckpt, tmp_path / 'newer.pt')
    fails(read_with('generate.py', trained, tmp_path / 'newer.pt'),
          r'written by a newer version of this project \(its format is lstm-tied-lm/2, this '
          r'version reads lstm-tied-lm/1\)')


def test_model_arguments_this_version_does_not_know_are_named_in_a_warning(tmp_path, trained):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    ckpt['model_args']['layer_norm'] = True  # as a later version might write
    torch.save(ckpt, tmp_path / 'later.pt')
    proc = read_with('score.py', trained, tmp_path / 'later.pt')
    assert proc.returncode == 0, proc.stderr
    assert 'describes its model with layer_norm, which this version does not know' in proc.stderr
    assert 'warning' not in read_with('score.py', trained, trained['checkpoint']).stderr


def lying_copy(trained, tmp_path, change):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    change(ckpt)
    path = tmp_path / 'lying.pt'
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, trained):
    path = lying_copy(trained, tmp_path,
                      lambda c: c['model_state']['fc.bias'].__setitem__(0, float('nan')))
    for reader in ('generate.py', 'demo_tie.py'):
        fails(read_with(reader, trained, path), 'NaN or infinite weights')


# each case through one of the readers (they share load_checkpoint), all readers in turn
@pytest.mark.parametrize('field, value, reader', [('hidden_size', 10**6, 'score.py'),
                                                  ('embed_size', 10**9, 'generate.py'),
                                                  ('num_layers', 10**6, 'demo_tie.py')])
def test_sizes_that_do_not_match_the_weights_are_refused_before_anything_is_built(
        trained, tmp_path, field, value, reader):
    path = lying_copy(trained, tmp_path, lambda c: c['model_args'].__setitem__(field, value))
    fails(read_with(reader, trained, path), 'does not match its weights|LSTM layers')


@pytest.mark.parametrize('dtype, reader', [(torch.int64, 'generate.py'),
                                           (torch.bool, 'demo_tie.py'),
                                           (torch.complex64, 'score.py')])
def test_weights_that_are_not_real_numbers_are_refused(trained, tmp_path, dtype, reader):
    def cast(ckpt):
        ckpt['model_state']['fc.bias'] = ckpt['model_state']['fc.bias'].to(dtype)
    fails(read_with(reader, trained, lying_copy(trained, tmp_path, cast)), 'floating-point')


@pytest.mark.parametrize('field, value', [('dropouti', 'x'), ('wdrop', 1.5),
                                          ('variational', 'yes')])
def test_a_checkpoint_with_a_bad_regulariser_is_called_damaged(tmp_path, trained, field, value):
    path = lying_copy(trained, tmp_path, lambda c: c['model_args'].__setitem__(field, value))
    fails(read_with('generate.py', trained, path), 'is damaged: its model description')


@pytest.mark.parametrize('field, value, reader', [
    ('batch_size', '20', 'score.py'), ('seq_length', -3, 'demo_tie.py'),
    ('dropout', float('nan'), 'score.py'), ('args', [1, 2], 'demo_tie.py')])
def test_stored_training_arguments_are_read_as_the_command_line_reads_them(
        trained, tmp_path, field, value, reader):
    def change(ckpt):
        if field == 'args':
            ckpt['args'] = value
        else:
            ckpt['args'][field] = value
        if field == 'dropout':  # the rate the model is built with, too
            ckpt['model_args'][field] = value
    fails(read_with(reader, trained, lying_copy(trained, tmp_path, change)), 'is damaged')


@pytest.mark.parametrize('field, value', [('lr', 'fast'), ('epochs', -5), ('optimizer', 'evil'),
                                          ('seed', 'x')])
def test_a_resume_refuses_stored_arguments_the_command_line_would_refuse(
        tmp_path, one_epoch, field, value):
    copy_run(one_epoch, tmp_path)
    ckpt = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    ckpt['args'][field] = value
    torch.save(ckpt, tmp_path / 'model.last.pt')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                    tmp_path / 'model.pt', '--resume', '--epochs', 2)
    fails(proc, f'stored --{field}')


# ------------------------------------------------------------------ written by older code

@pytest.fixture
def old_run(tmp_path):
    """What the code of commit c01eae7 (before the trainer was restructured) wrote: a tiny tied
    model (8 units, 2 layers, --recipe regularized, seed 5) after epoch 1 (model.pt,
    model.last.pt, model.csv, epoch1.log) and the same run's two whole epochs (whole.csv,
    whole.log), all on the corpus beside them."""
    folder = tmp_path / 'old_run'
    shutil.copytree(OLD, folder)
    return folder


def rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_an_old_last_checkpoint_resumes_to_the_figures_of_the_uninterrupted_run(old_run):
    proc = run_main('demo_tie.py', '--data_dir', old_run / 'corpus', '--save_path',
                    old_run / 'model.pt', '--resume', '--epochs', '2')
    assert proc.returncode == 0, proc.stderr
    assert 'Resuming from' in proc.stdout and 'at epoch 2' in proc.stdout
    resumed, whole = rows(old_run / 'model.csv'), rows(OLD / 'whole.csv')
    assert [r['epoch'] for r in resumed] == ['1', '2']
    for column in ('train_loss', 'val_loss', 'val_loss_no_sos'):  # the same steps were taken
        assert float(resumed[1][column]) == pytest.approx(float(whole[1][column]),
                                                           abs=TRAINED_TOL)


def test_an_old_best_checkpoint_evaluates_generates_and_scores(old_run):
    proc = run_main('demo_tie.py', '--eval_only', '--data_dir', old_run / 'corpus',
                    '--save_path', old_run / 'model.pt')
    assert proc.returncode == 0, proc.stderr
    printed = (OLD / 'epoch1.log').read_text()
    old_test = [line for line in printed.splitlines() if line.startswith('Test Loss')]
    new_test = [line for line in proc.stdout.splitlines() if line.startswith('Test Loss')]
    assert len(new_test) == 2 and new_test == old_test
    gen = run_main('generate.py', '--checkpoint', old_run / 'model.pt', '--seed_text',
                   'the company', '--num_words', '5', '--seed', '1')
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith('the company ') and len(gen.stdout.split()) >= 7
    score = run_main('score.py', '--checkpoint', old_run / 'model.pt',
                     old_run / 'corpus' / 'test.txt')
    assert score.returncode == 0, score.stderr
    assert 'Perplexity without <sos>' in score.stdout
