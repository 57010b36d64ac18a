"""The files of a run beside --save_path (lm/runfiles.py): one run per save path, an earlier
run's files kept unless --overwrite, save paths that cannot work, the metrics CSV, and writes
that fail without costing what is on disk."""
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import (
    ROOT,
    TINY,
    copy_run,
    pattern_corpus,
    run_main,
    snapshot,
    train,
    trainer_process,
    wait_for,
)
from lm.runfiles import read_metrics

# ---------------------------------------------------------------------------- one run, one path


def test_a_second_trainer_on_the_same_save_path_is_refused_and_kill_leaves_no_stale_lock(
        tmp_path, long_corpus):
    first = trainer_process(tmp_path, '--epochs', 50, corpus=long_corpus)
    wait_for(first, 'Epoch 1:')
    second = run_main('demo_tie.py', '--data_dir', long_corpus, *TINY, '--tied',
                      '--save_path', tmp_path / 'model.pt', '--resume')
    assert second.returncode == 1
    assert re.search(rf'another trainer \(pid {first.pid}\) is writing',
                     second.stderr), second.stderr
    first.kill()  # kill -9: the OS drops the lock with the process
    first.communicate()
    # the lock is free: the next run gets past it (to the missing data folder)
    third = run_main('demo_tie.py', '--data_dir', tmp_path / 'no-data', *TINY, '--tied',
                     '--save_path', tmp_path / 'model.pt', '--overwrite')
    assert third.returncode == 1 and 'data folder not found' in third.stderr, third.stderr


def test_a_deleted_lock_file_stops_the_first_run_before_it_writes_again(tmp_path, long_corpus):
    first = trainer_process(tmp_path, '--epochs', 50, corpus=long_corpus)
    wait_for(first, 'Epoch 1:')
    (tmp_path / 'model.lock').unlink()
    second = run_main('demo_tie.py', '--data_dir', long_corpus, *TINY, '--tied', '--epochs', 1,
                      '--save_path', tmp_path / 'model.pt', '--overwrite')
    _, err = first.communicate(timeout=300)
    assert first.returncode == 1, err
    assert 'model.lock was deleted or replaced' in err and 'without writing' in err
    assert second.returncode == 0, second.stderr  # the one run left writes alone
    assert not (tmp_path / 'model.lock').exists()  # and removes its lock when it ends


def test_the_lock_file_goes_when_the_run_ends(trained):
    assert not (trained['folder'] / 'model.lock').exists()


def test_temporary_and_lock_files_are_ignored_by_git():
    ignore = (ROOT / '.gitignore').read_text().split()
    assert '*.tmp' in ignore and '*.lock' in ignore


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
    fresh, _ = train(tmp_path, '--overwrite', epochs=1)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / 'model.csv').read_text().count('\n') == 2  # header and one epoch


def test_overwrite_deletes_only_files_this_project_wrote(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    (tmp_path / 'model.csv').write_text('my notes, not metrics\n')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied',
                    '--save_path', tmp_path / 'model.pt', '--overwrite')
    assert proc.returncode == 1
    assert 'model.csv is not a file this trainer wrote' in proc.stderr
    assert (tmp_path / 'model.csv').read_text() == 'my notes, not metrics\n'
    assert (tmp_path / 'model.pt').exists() and (tmp_path / 'model.last.pt').exists()


def test_stale_temporary_files_of_this_run_are_removed_at_start(tmp_path):
    pattern_corpus(tmp_path / 'corpus')
    stale = [tmp_path / '.model.pt.abc123.tmp', tmp_path / '.model.last.pt.x9.tmp']
    other = tmp_path / '.other.pt.zz.tmp'  # not this run's: left alone
    for path in stale + [other]:
        path.write_bytes(b'partial')
    proc, _ = train(tmp_path, epochs=1)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale) and other.exists()


# ---------------------------------------------------------------------------- save paths

@pytest.mark.parametrize('save_path', ['m.csv', '', 'folder/', 'm.lock', 'm.last.pt'])
def test_save_paths_that_name_no_file_or_collide_are_refused_before_reading_data(tmp_path,
                                                                                 save_path,
                                                                                 monkeypatch):
    (tmp_path / 'folder').mkdir()
    monkeypatch.chdir(tmp_path)
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'no-data', '--save_path', save_path)
    assert proc.returncode == 1
    assert 'save_path' in proc.stderr and 'data folder' not in proc.stderr, proc.stderr
    assert proc.stderr.count('\n') == 1 and not (tmp_path / 'm.last.lock').exists()


def test_a_save_path_that_is_no_regular_file_is_refused_saying_so(tmp_path):
    proc = run_main('demo_tie.py', '--data_dir', tmp_path, '--save_path', '/dev/null')
    assert proc.returncode == 1
    assert '/dev/null is not a regular file' in proc.stderr
    assert 'from an earlier run' not in proc.stderr


def test_unwritable_save_path_fails_before_training(tmp_path):
    pattern_corpus(tmp_path / 'c')
    (tmp_path / 'afile').write_text('')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'c', *TINY,
                    '--save_path', tmp_path / 'afile' / 'm.pt')
    assert proc.returncode == 1 and re.search(r'cannot write checkpoint .*afile/m\.pt', proc.stderr)
    assert 'Epoch' not in proc.stdout + proc.stderr


def test_a_symlinked_save_path_is_followed_and_resumes(tmp_path):
    pattern_corpus(tmp_path / 'corpus')
    (tmp_path / 'real').mkdir()
    (tmp_path / 'lnk').mkdir()
    os.symlink(tmp_path / 'real' / 'm.pt', tmp_path / 'lnk' / 'link.pt')  # dangling
    first = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied',
                     '--epochs', 1, '--save_path', tmp_path / 'lnk' / 'link.pt')
    assert first.returncode == 0, first.stderr
    assert os.path.islink(tmp_path / 'lnk' / 'link.pt')
    assert sorted(os.listdir(tmp_path / 'real')) == ['m.csv', 'm.last.pt', 'm.pt']
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--epochs', 2,
                       '--save_path', tmp_path / 'lnk' / 'link.pt', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Epoch: 2,' in resumed.stdout



def test_a_symlink_at_the_lock_file_is_refused_and_its_target_left_alone(tmp_path):
    pattern_corpus(tmp_path / 'corpus')
    target = tmp_path / 'precious.txt'
    target.write_text('not the run\'s\n')
    (tmp_path / 'm.lock').symlink_to(target)
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied',
                    '--epochs', 1, '--save_path', tmp_path / 'm.pt')
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'm.lock is a symbolic link' in proc.stderr
    assert target.read_text() == 'not the run\'s\n' and (tmp_path / 'm.lock').is_symlink()
    assert not (tmp_path / 'm.pt').exists()

# ---------------------------------------------------------------------------- the metrics CSV

def test_a_csv_saved_by_a_spreadsheet_keeps_its_rows_on_resume(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    first, _ = train(tmp_path, '--resume', epochs=2)
    assert first.returncode == 0
    csv_path = tmp_path / 'model.csv'
    rows = csv_path.read_text().splitlines()
    csv_path.write_bytes(('\ufeff' + '\r\n'.join(r.replace(',', ';') for r in rows)
                          + '\r\n').encode())
    resumed, _ = train(tmp_path, '--resume', epochs=3)
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
    assert csv_path.read_text() == renamed


# ---------------------------------------------------------------------------- failed writes

def test_a_save_folder_removed_during_the_run_is_said_so_not_blamed_on_another_run(tmp_path):
    corpus = pattern_corpus(tmp_path / 'corpus')
    run = tmp_path / 'run'

    def remove_the_folder(epoch, window):
        if (epoch, window) == (1, 5):
            shutil.rmtree(run)
    proc, _ = train(run, epochs=2, corpus=corpus, on_window=remove_the_folder)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, proc.stderr
    assert f'the folder {run} was removed while this run trained in it' in proc.stderr
    assert 'another run' not in proc.stderr and not run.exists()


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
    assert re.search(r'error: could not write \S+: File too large: this process may write '
                     r'files of \d+ bytes at most \(ulimit -f\)', proc.stderr), proc.stderr
    assert 'Traceback' not in proc.stderr and 'resume with: python demo_tie.py' in proc.stderr
    # the last checkpoint is the one from before; every file on disk is whole
    assert (tmp_path / 'model.last.pt').read_bytes() == before['model.last.pt']
    for name in ('model.pt', 'model.last.pt'):
        torch.load(tmp_path / name, weights_only=True)
    epochs = [row['epoch'] for row in read_metrics(tmp_path / 'model.csv')]  # whole, or the old one
    assert epochs in ([1], [1, 2], [1, 2, 3])
    # no temporary file left, and no lock file: the run is over
    assert sorted(os.listdir(tmp_path)) == ['corpus', 'model.csv', 'model.last.pt', 'model.pt']


def train_under_file_size_limit(folder, limit):
    """A fresh tiny run as its own process, under `ulimit -f` of `limit` bytes."""
    pattern_corpus(folder / 'corpus')
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, str(ROOT / 'demo_tie.py'), '--data_dir',
                           folder / 'corpus', *TINY, '--tied', '--epochs', '2', '--save_path',
                           folder / 'model.pt'], capture_output=True, text=True, env=env,
                          timeout=300, check=False, preexec_fn=limit_file_size(limit))


@pytest.mark.parametrize('limit, advice', [
    (0, None),  # refused at start: no file of the run can be written
    (1000, 'Nothing was saved'),  # the best model is larger
    (20000, 'There is no last checkpoint to resume from; the best model so far is'),
    # the limit is met inside PyTorch's zip writer, which reports it as a RuntimeError
    (40000, 'There is no last checkpoint to resume from; the best model so far is'),
])
def test_a_file_size_limit_gets_a_line_and_advice_that_fits_the_files_on_disk(tmp_path, limit,
                                                                             advice):
    """The best model (13 kB) fits under 20000 bytes, the last checkpoint (53 kB) not even
    under 40000: no advice names a file that is not there, and none costs the best model."""
    proc = train_under_file_size_limit(tmp_path, limit)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(error) == 1 and 'File too large' in error[0] and 'ulimit -f' in error[0]
    assert not (tmp_path / 'model.lock').exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]
    if advice is None:
        assert 'cannot write checkpoint' in error[0] and 'Epoch' not in proc.stderr
    else:
        assert advice in error[0] and 'resume with' not in error[0]
        assert (tmp_path / 'model.pt').exists() == (limit >= 20000)


def test_a_save_path_too_long_for_its_temporary_files_is_refused_at_once(tmp_path):
    """Its last checkpoint's temporary name (.NAME.last.pt.XXXXXXXX.tmp) passes 255 bytes."""
    save = tmp_path / ('a' * 236 + '.pt')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'no-data', '--save_path', save)
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'File name too long' in proc.stderr and 'shorter --save_path' in proc.stderr
    assert os.listdir(tmp_path) == []


def test_an_allocation_that_fails_in_training_ends_with_a_line_and_keeps_the_files(tmp_path,
                                                                                 one_epoch):
    """A real allocator failure in the middle of epoch 2 (a tensor of 4 PB asked for)."""
    copy_run(one_epoch, tmp_path)
    before = snapshot(tmp_path)
    proc, _ = train(tmp_path, '--resume', epochs=2,
                    on_window=lambda e, k: (e, k) == (2, 3) and torch.empty(10**15))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert "out of memory in training (can't allocate memory" in proc.stderr
    assert 'resume with: python demo_tie.py' in proc.stderr
    assert snapshot(tmp_path) == before


def test_the_memory_check_counts_the_process_limit_not_only_the_machines_ram(tmp_path):
    """A model needing 7.5 GiB for its LSTM fits this machine's RAM but not ulimit -v 6 GiB:
    refused before anything is allocated, naming the limit."""
    if os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') < 8 * 2**30:
        pytest.skip('this machine has less RAM than the model needs')

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.RLIM_INFINITY))
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable, str(ROOT / 'demo_tie.py'), '--tied', '--embed_size',
                           '5600', '--hidden_size', '5600', '--save_path', tmp_path / 'm.pt',
                           '--data_dir', tmp_path], capture_output=True, text=True, env=env,
                          timeout=120, check=False, preexec_fn=limit)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert 'this process under its limit (ulimit -v) has 6.0 GiB' in proc.stderr
