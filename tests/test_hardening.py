"""The trainer used wrongly, by accident or on purpose: concurrent runs, earlier runs' files,
odd save paths, failed writes, resumes that do not fit, signals at odd moments, odd flags.
Each test runs the real scripts on tiny corpora."""
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (
    ROOT,
    TINY,
    copy_run,
    pattern_corpus,
    run_main,
    run_script,
    train_tiny,
    write_corpus,
)
from runstate import read_metrics


def trainer(folder, *extra, corpus=None):
    """Start demo_tie.py in the background on the pattern corpus of `folder`."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, str(ROOT / 'demo_tie.py'), '--data_dir',
                             corpus or folder / 'corpus', *TINY, '--tied',
                             '--save_path', folder / 'model.pt', *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(proc, text, stream='stderr'):
    seen = b''
    pipe = getattr(proc, stream)
    while text.encode() not in seen:
        chunk = os.read(pipe.fileno(), 4096)
        assert chunk, f'the process ended before printing {text!r}'
        seen += chunk


def snapshot(folder, names=('model.pt', 'model.last.pt', 'model.csv')):
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


@pytest.fixture(scope='module')
def long_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp('long')
    pattern_corpus(folder, train_lines=3000, eval_lines=40)
    return folder


@pytest.fixture(scope='module')
def stopped_run(tmp_path_factory, long_corpus):
    """A run stopped by SIGTERM in epoch 1: model.last.pt holds its position in mid-epoch, and
    no epoch has ended. Tests copy what they change."""
    folder = tmp_path_factory.mktemp('stopped')
    proc = trainer(folder, '--epochs', 3, corpus=long_corpus)
    wait_for(proc, 'Epoch 1:')
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    return folder


# ---------------------------------------------------------------------------- runs and their files

def test_a_second_trainer_on_the_same_save_path_is_refused_and_kill_leaves_no_stale_lock(
        tmp_path, long_corpus):
    first = trainer(tmp_path, '--epochs', 50, corpus=long_corpus)
    wait_for(first, 'Epoch 1:')
    second = run_script('demo_tie.py', '--data_dir', long_corpus, *TINY, '--tied',
                        '--save_path', tmp_path / 'model.pt', '--resume')
    assert second.returncode == 1
    assert re.search(rf'another trainer \(pid {first.pid}\) is writing',
                     second.stderr), second.stderr
    first.kill()  # kill -9: the OS drops the lock with the process
    first.communicate()
    # the lock is free: the next run gets past it (to the missing data folder)
    third = run_script('demo_tie.py', '--data_dir', tmp_path / 'no-data', *TINY, '--tied',
                       '--save_path', tmp_path / 'model.pt', '--overwrite')
    assert third.returncode == 1 and 'data folder not found' in third.stderr, third.stderr


def test_a_fresh_run_over_an_earlier_runs_files_is_refused_unless_overwrite(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    before = snapshot(tmp_path)
    again = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied', '--epochs',
                     1, '--save_path', tmp_path / 'model.pt')
    assert again.returncode == 1
    assert all(name in again.stderr for name in ('model.pt', 'model.last.pt', 'model.csv'))
    assert '--resume' in again.stderr and '--overwrite' in again.stderr
    assert snapshot(tmp_path) == before
    typo = run_main('demo_tie.py', '--data_dir', tmp_path / 'no-data', *TINY, '--tied',
                    '--save_path', tmp_path / 'model.pt', '--overwrite')
    assert typo.returncode == 1 and snapshot(tmp_path) == before  # nothing deleted for nothing
    fresh, _ = train_tiny(tmp_path, '--overwrite', epochs=1)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / 'model.csv').read_text().count('\n') == 2  # header and one epoch


@pytest.mark.parametrize('save_path', ['m.csv', '', 'folder/', 'm.lock'])
def test_save_paths_that_name_no_file_or_collide_are_refused_before_reading_data(tmp_path,
                                                                                 save_path,
                                                                                 monkeypatch):
    (tmp_path / 'folder').mkdir()
    monkeypatch.chdir(tmp_path)
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'no-data', '--save_path', save_path)
    assert proc.returncode == 1
    assert 'save_path' in proc.stderr and 'data folder' not in proc.stderr, proc.stderr


def test_stale_temporary_files_of_this_run_are_removed_at_start(tmp_path):
    pattern_corpus(tmp_path / 'corpus')
    stale = [tmp_path / '.model.pt.abc123.tmp', tmp_path / '.model.last.pt.x9.tmp']
    other = tmp_path / '.other.pt.zz.tmp'  # not this run's: left alone
    for path in stale + [other]:
        path.write_bytes(b'partial')
    proc, _ = train_tiny(tmp_path, epochs=1)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale) and other.exists()


def test_temporary_and_lock_files_are_ignored_by_git():
    ignore = (ROOT / '.gitignore').read_text().split()
    assert '*.tmp' in ignore and '*.lock' in ignore


# ---------------------------------------------------------------------------- the metrics CSV

def test_the_csv_is_created_with_its_first_row(stopped_run):
    assert (stopped_run / 'model.last.pt').exists() and not (stopped_run / 'model.csv').exists()


def test_a_csv_saved_by_a_spreadsheet_keeps_its_rows_on_resume(tmp_path):
    first, _ = train_tiny(tmp_path, epochs=2)
    assert first.returncode == 0
    csv_path = tmp_path / 'model.csv'
    rows = csv_path.read_text().splitlines()
    csv_path.write_bytes(('\ufeff' + '\r\n'.join(r.replace(',',
                                                           ';') for r in rows) + '\r\n').encode())
    resumed, _ = train_tiny(tmp_path, '--resume', epochs=3)
    assert resumed.returncode == 0, resumed.stderr
    lines = csv_path.read_text().splitlines()
    assert [l.split(',')[0] for l in lines] == ['epoch', '1', '2', '3']
    assert lines[1:3] == rows[1:3]


def test_a_csv_the_trainer_cannot_read_is_kept_and_the_resume_refused(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    csv_path = tmp_path / 'model.csv'
    renamed = csv_path.read_text().replace('val_ppl,', 'validation perplexity,', 1)
    csv_path.write_text(renamed)
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--epochs', 2,
                       '--save_path', tmp_path / 'model.pt', '--resume')
    assert resumed.returncode == 1 and 'left as it is' in resumed.stderr
    assert 'Traceback' not in resumed.stderr
    assert csv_path.read_text() == renamed


# ---------------------------------------------------------------------------- write errors

def limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize('limit', [2000, 9000, 30000])
def test_a_write_that_fails_inside_torch_save_ends_cleanly_and_keeps_the_files(tmp_path, limit,
                                                                               one_epoch):
    copy_run(one_epoch, tmp_path)
    before = snapshot(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable, str(ROOT / 'demo_tie.py'), '--data_dir',
                           tmp_path / 'corpus', *TINY, '--tied', '--epochs', '3',
                           '--save_path', tmp_path / 'model.pt', '--resume'],
                          capture_output=True, text=True, env=env, timeout=300, check=False,
                          preexec_fn=limit_file_size(limit))
    assert proc.returncode == 1, proc.stderr
    assert 'error: could not write' in proc.stderr and 'Traceback' not in proc.stderr
    assert 'resume with: python demo_tie.py' in proc.stderr
    # the last checkpoint is the one from before; every file on disk is whole
    assert (tmp_path / 'model.last.pt').read_bytes() == before['model.last.pt']
    for name in ('model.pt', 'model.last.pt'):
        torch.load(tmp_path / name, weights_only=True)
    epochs = [row['epoch'] for row in read_metrics(tmp_path / 'model.csv')]  # whole, or the old one
    assert epochs in ([1], [1, 2], [1, 2, 3])
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


# ---------------------------------------------------------------------------- resume

def test_resume_takes_the_model_flags_from_the_checkpoint(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    proc = run_script('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                      tmp_path / 'model.pt',
                      '--epochs', 2, '--resume')
    assert proc.returncode == 0, proc.stderr
    assert 'Embedding(12, 16)' in proc.stdout and 'Epoch: 2,' in proc.stdout
    ckpt = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert ckpt['args']['tied'] is True and ckpt['args']['batch_size'] == 4


def test_a_contradicting_model_flag_is_refused_with_a_hint_in_valid_syntax(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                    tmp_path / 'model.pt', '--num_layers', 2, '--resume')
    assert proc.returncode == 1
    assert 'made with --num_layers 1;' in proc.stderr and 'True' not in proc.stderr


def test_optimizer_flags_given_on_resume_are_applied_said_and_recorded(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    proc, _ = train_tiny(tmp_path, '--resume', '--lr', '0.005', '--clip', '0.25', epochs=2)
    assert proc.returncode == 0, proc.stderr
    assert 'Changed on resume: --lr 0.01 -> 0.005' in proc.stdout
    assert 'Changed on resume: --clip 5.0 -> 0.25' in proc.stdout
    assert 'current lr: [0.005]' in proc.stdout
    ckpt = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert ckpt['args']['lr'] == 0.005 and ckpt['args']['clip'] == 0.25
    assert ckpt['optimizer']['param_groups'][0]['lr'] == 0.005


@pytest.mark.parametrize('split', ['train', 'valid'])
def test_resume_on_changed_data_is_refused_naming_the_split(tmp_path, split, one_epoch):
    copy_run(one_epoch, tmp_path)
    path = tmp_path / 'corpus' / f'{split}.txt'
    lines = path.read_text().splitlines()  # the same words, so the same vocabulary
    path.write_text('\n'.join(lines[:-1] + ['eight seven six five four three two one']) + '\n')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--epochs', 2,
                    '--save_path', tmp_path / 'model.pt', '--resume')
    assert proc.returncode == 1
    assert f'{split}.txt in ' in proc.stderr
    assert 'differ from the data this run started with' in proc.stderr


@pytest.mark.parametrize('damage', ['hidden shape', 'no rng', 'partial position',
                                    'optimizer state'])
def test_a_damaged_but_loadable_last_checkpoint_is_refused_cleanly(tmp_path, long_corpus, damage,
                                                                  stopped_run):
    last = tmp_path / 'model.last.pt'
    ckpt = torch.load(stopped_run / 'model.last.pt', weights_only=True)
    assert ckpt['position'] is not None
    if damage == 'hidden shape':
        ckpt['position']['hidden'] = tuple(h[:, :2] for h in ckpt['position']['hidden'])
    elif damage == 'no rng':
        del ckpt['rng']
    elif damage == 'partial position':
        del ckpt['position']['losses']
    else:
        state = ckpt['optimizer']['state']
        state[0]['exp_avg'] = torch.zeros(3)
    torch.save(ckpt, last)
    resumed = run_main('demo_tie.py', '--data_dir', long_corpus, '--save_path',
                       tmp_path / 'model.pt', '--resume')
    assert resumed.returncode == 1, resumed.stderr
    assert 'is damaged and cannot be resumed' in resumed.stderr
    assert 'Traceback' not in resumed.stderr


def test_the_best_model_tested_after_a_resume_elsewhere_must_be_this_runs(tmp_path, trained,
                                                                          one_epoch):
    copy_run(one_epoch, tmp_path / 'a')
    elsewhere = tmp_path / 'b'
    elsewhere.mkdir()
    (elsewhere / 'model.pt').write_bytes(trained['checkpoint'].read_bytes())  # another run's
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'a' / 'corpus', '--epochs', 1,
                    '--save_path', elsewhere / 'model.pt',
                    '--resume', tmp_path / 'a' / 'model.last.pt')
    assert proc.returncode == 1
    assert 'is not this run\'s best model' in proc.stderr and 'Test Loss' not in proc.stdout


def test_epochs_already_done_says_so_and_tests(tmp_path):
    first, _ = train_tiny(tmp_path, epochs=2)
    assert first.returncode == 0
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--epochs', 2,
                    '--save_path', tmp_path / 'model.pt', '--resume')
    assert proc.returncode == 0, proc.stderr
    assert 'Nothing to train: 2 epochs are done and --epochs is 2.' in proc.stdout
    assert [l for l in proc.stdout.splitlines() if l.startswith('Test Loss')] == \
        [l for l in first.stdout.splitlines() if l.startswith('Test Loss')]


# ---------------------------------------------------------------------------- signals

def test_a_signal_during_the_final_test_ends_it_at_once(tmp_path):
    # a long test split, so that the test takes long enough to be interrupted
    write_corpus(tmp_path / 'corpus', 'one two three four five six seven eight\n' * 300,
                 test='one two three four five six seven eight\n' * 60000)
    proc = trainer(tmp_path, '--epochs', 1)
    wait_for(proc, 'Testing: ', stream='stdout')
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert 'stopped at once' in err and 'Test Loss' not in out and 'Traceback' not in err


def test_a_second_ctrl_c_always_exits_130_cleanly(tmp_path, long_corpus):
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        proc = trainer(folder, '--epochs', 3, corpus=long_corpus)
        wait_for(proc, 'Epoch 1:')
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01 * attempt)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert 'Traceback' not in err


# ---------------------------------------------------------------------------- odd input

@pytest.mark.parametrize('content', ['csv', 'text', 'random'])
def test_files_that_are_not_checkpoints_are_called_so(tmp_path, trained, content):
    bad = tmp_path / 'bad.pt'
    if content == 'csv':
        bad.write_bytes((trained['folder'] / 'model.csv').read_bytes())
    elif content == 'text':
        bad.write_text('hello world\nthis is text\n')
    else:
        bad.write_bytes(b'\x80\x02' + os.urandom(3000))
    for proc in (run_main('generate.py', '--checkpoint', bad),
                 run_main('demo_tie.py', '--eval_only', '--data_dir', trained['corpus'],
                          '--save_path', bad)):
        assert proc.returncode == 1
        assert 'is not a checkpoint' in proc.stderr and 'run code' not in proc.stderr
        assert 'Traceback' not in proc.stderr


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, trained):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    ckpt['model_state']['fc.bias'][0] = float('nan')
    bad = tmp_path / 'nan.pt'
    torch.save(ckpt, bad)
    for proc in (run_main('generate.py', '--checkpoint', bad),
                 run_main('demo_tie.py', '--eval_only', '--data_dir', trained['corpus'],
                          '--save_path', bad)):
        assert proc.returncode == 1 and 'NaN or infinite weights' in proc.stderr


@pytest.mark.parametrize('script', ['demo_tie.py', 'generate.py'])
def test_a_huge_seed_is_refused_by_argparse(script):
    proc = run_main(script, '--seed', '99999999999999999999999')
    assert proc.returncode == 2 and 'argument --seed' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_bench_checks_its_json_path_before_measuring(tmp_path):
    proc = run_main('bench.py', '--json', tmp_path / 'no' / 'such' / 'dir.json', '--embed_size',
                    '8', '--hidden_size', '8')
    assert proc.returncode == 2 and 'cannot write --json' in proc.stderr
    assert 'measure' not in proc.stdout


# ---------------------------------------------------------------------------- the first ten minutes

def test_generate_without_a_checkpoint_says_how_to_get_one(tmp_path):
    proc = run_script('generate.py', cwd=tmp_path)
    assert proc.returncode == 1
    assert 'checkpoint not found: best_model.pt' in proc.stderr and 'demo_tie.py' in proc.stderr


@pytest.mark.parametrize('script', ['demo_tie.py', 'generate.py', 'bench.py', 'score.py'])
def test_threads_flag_and_defaults_in_help(script):
    proc = run_main(script, '--help')
    assert proc.returncode == 0 and '--threads' in proc.stdout and '(default: ' in proc.stdout
    assert run_main(script, '--threads', '0').returncode == 2


def test_help_shows_the_reference_defaults():
    text = ' '.join(run_main('demo_tie.py', '--help').stdout.split())
    for flag, default in (('--batch_size', '20'), ('--lr', '0.001'), ('--epochs', '40'),
                          ('--save_path', 'best_model.pt'), ('--dropout', '0.5')):
        assert re.search(re.escape(flag) + r' \S+ .*?\(default: ' + re.escape(default) + r'\)',
                         text), flag


def test_validation_shows_a_progress_bar(trained):
    assert 'Validation' in trained['proc'].stderr
