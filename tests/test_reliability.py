"""Interruptions, resumption, bad checkpoints and failed writes: faults injected for real."""
import csv
import os
import pickle
import re
import signal
from pathlib import Path

import pytest
import torch

import demo_tie
from conftest import (
    TINY,
    copy_run,
    pattern_corpus,
    printed_test_lines,
    run_main,
    run_script,
    start_training,
    states_equal,
    train_tiny,
    wait_for_training,
)


def csv_epochs(path):
    with open(path) as f:
        return [row['epoch'] for row in csv.DictReader(f)]


def test_resuming_after_an_epoch_matches_the_uninterrupted_run_bit_for_bit(tmp_path, trained):
    # trained: the same settings run for 3 epochs without a stop
    pattern_corpus(tmp_path / 'corpus')
    first, save = train_tiny(tmp_path, epochs=1)
    assert first.returncode == 0, first.stderr
    resumed, _ = train_tiny(tmp_path, '--resume', epochs=3)
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resuming from' in resumed.stdout and 'at epoch 2' in resumed.stdout
    assert printed_test_lines(resumed) == printed_test_lines(trained['proc'])
    assert states_equal(save, trained['checkpoint'])
    assert states_equal(tmp_path / 'model.last.pt', trained['folder'] / 'model.last.pt')
    assert csv_epochs(tmp_path / 'model.csv') == ['1', '2', '3']  # appended, not duplicated


@pytest.fixture(scope='module')
def long_corpus(tmp_path_factory):
    """Enough windows (about 800 an epoch) that a signal lands in mid-epoch."""
    return pattern_corpus(tmp_path_factory.mktemp('long') / 'corpus', train_lines=3000,
                          eval_lines=40)


def test_sigterm_saves_a_last_checkpoint_and_resume_matches_bit_for_bit(tmp_path, long_corpus):
    uninterrupted_folder = tmp_path / 'whole'
    uninterrupted = run_script('demo_tie.py', '--data_dir', long_corpus, *TINY, '--tied',
                               '--epochs', 2, '--save_path', uninterrupted_folder / 'model.pt')
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    os.symlink(long_corpus, tmp_path / 'corpus')
    proc = start_training(tmp_path, '--epochs', '2')
    wait_for_training(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 'Training stopped by SIGTERM' in err and '--resume' in err
    assert 'Traceback' not in err and 'Testing' not in out
    last = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert last['epoch'] < 2 or last['position'] is not None

    resumed = run_script('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied',
                         '--epochs', 2, '--save_path', tmp_path / 'model.pt', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert printed_test_lines(resumed) == printed_test_lines(uninterrupted)
    assert states_equal(tmp_path / 'model.last.pt', uninterrupted_folder / 'model.last.pt')
    assert states_equal(tmp_path / 'model.pt', uninterrupted_folder / 'model.pt')
    assert csv_epochs(tmp_path / 'model.csv') == ['1', '2']


def test_ctrl_c_stops_training_and_still_tests_the_best_model(tmp_path, long_corpus):
    os.symlink(long_corpus, tmp_path / 'corpus')
    proc = start_training(tmp_path, '--epochs', '50')
    for line in proc.stdout:  # wait until a best model exists
        if line.startswith('Best model saved'):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'Training stopped by SIGINT' in err and 'Traceback' not in err
    assert re.search(r'Testing: \n-{41}\nTest Loss: ', out)
    assert torch.load(tmp_path / 'model.last.pt', weights_only=True)['epoch'] < 50


def test_nan_loss_stops_with_advice_and_leaves_the_best_checkpoint_alone(tmp_path, one_epoch):
    save = copy_run(one_epoch, tmp_path)
    before = save.read_bytes()
    proc, _ = train_tiny(tmp_path, '--resume', '--lr', '1e30', '--clip', '1e30', epochs=2)
    assert proc.returncode == 1
    assert re.search(r'NaN or infinite in epoch 2, window \d+ of \d+; try a lower --lr',
                     proc.stderr)
    assert 'Traceback' not in proc.stderr
    assert save.read_bytes() == before


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
    gen = run_script('generate.py', '--checkpoint', bad)
    res = run_script('demo_tie.py', '--data_dir', trained['corpus'], *TINY, '--tied',
                     '--save_path', tmp_path / 'm.pt', '--resume', bad)
    for proc in (gen, res):
        assert proc.returncode == 1
        assert 'can be opened safely' in proc.stderr or 'cannot read checkpoint' in proc.stderr
        assert 'Traceback' not in proc.stderr and 'Warning' not in proc.stderr, proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'empty', 'foreign'])
def test_damaged_checkpoints_give_a_clear_error(tmp_path, trained, damage):
    good = Path(trained['checkpoint']).read_bytes()
    bad = tmp_path / 'bad.pt'
    if damage == 'truncated':
        bad.write_bytes(good[:len(good) // 2])
    elif damage == 'garbage':
        bad.write_bytes(os.urandom(5000))
    elif damage == 'empty':
        bad.write_bytes(b'')
    else:
        torch.save({'state_dict': {'w': torch.zeros(3)}}, bad)
    for proc in (run_main('generate.py', '--checkpoint', bad),
                 run_main('demo_tie.py', '--eval_only', '--data_dir', trained['corpus'],
                          '--save_path', bad)):
        assert proc.returncode == 1
        assert re.search(r'error: (cannot read checkpoint|.* is not a checkpoint)', proc.stderr)
        assert 'Traceback' not in proc.stderr


def test_resume_refuses_a_best_model_checkpoint_and_other_settings(tmp_path, trained):
    common = ['--data_dir', trained['corpus'], '--save_path', tmp_path / 'm.pt', '--tied']
    proc = run_main('demo_tie.py', *common, *TINY, '--resume', trained['checkpoint'])
    assert proc.returncode == 1 and 'holds a model only' in proc.stderr
    other = [a if a != '16' else '24' for a in TINY]
    proc = run_main('demo_tie.py', *common, *other, '--resume',
                    trained['folder'] / 'model.last.pt')
    assert proc.returncode == 1
    assert 'made with --embed_size 16, --hidden_size 16; leave these flags out' in proc.stderr


def test_failed_write_at_end_of_epoch_keeps_the_previous_checkpoints(tmp_path, monkeypatch, capsys,
                                                                     one_epoch):
    save = copy_run(one_epoch, tmp_path)
    last = tmp_path / 'model.last.pt'
    before = {p: p.read_bytes() for p in (save, last)}

    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):  # writes part of the file, then the disk is full
        real_save({'partial': torch.zeros(1000)}, f)
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', disk_full)
    status = demo_tie.main(['--data_dir', str(tmp_path / 'corpus'), *TINY, '--tied',
                            '--epochs', '2', '--save_path', str(save), '--resume'])
    err = capsys.readouterr().err
    assert status == 1
    assert f'could not write {save}: No space left on device' in err, err
    assert 'resume with: python demo_tie.py' in err
    assert {p: p.read_bytes() for p in (save, last)} == before
    # no temporary file left, and no lock file: the run is over
    assert sorted(os.listdir(tmp_path)) == ['corpus', 'model.csv', 'model.last.pt', 'model.pt']


def test_ctrl_c_before_any_epoch_ends_saves_and_exits_130_with_the_resume_hint(tmp_path,
                                                                               long_corpus):
    os.symlink(long_corpus, tmp_path / 'corpus')
    proc = start_training(tmp_path, '--epochs', '3')
    wait_for_training(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert 'no epoch finished' not in err and 'Test Loss' not in out and 'Traceback' not in err
    assert 'Resume with' in err  # the position in epoch 1 was saved
    assert torch.load(tmp_path / 'model.last.pt', weights_only=True)['position'] is not None
