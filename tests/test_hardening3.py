"""Hardening, third pass: signals at any moment, checkpoints that lie, pipes, and what a new
user trips on. Each test runs the real scripts on tiny corpora."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import data
from conftest import (
    ROOT,
    TINY,
    copy_run,
    pattern_corpus,
    run_main,
    run_script,
    start_training,
    train_tiny,
    wait_for_training,
)


@pytest.fixture(scope='module')
def long_run(tmp_path_factory):
    """A pattern corpus long enough (about 800 windows an epoch) for a signal to land in
    mid-epoch."""
    folder = tmp_path_factory.mktemp('long3')
    pattern_corpus(folder / 'corpus', train_lines=3000, eval_lines=40)
    return folder / 'corpus'


def start_long(folder, corpus, *extra):
    os.symlink(corpus, folder / 'corpus')
    proc = start_training(folder, '--epochs', '50', *extra)
    wait_for_training(proc)
    return proc


# ------------------------------------------------------------------ runs and signals

def test_a_deleted_lock_file_stops_the_first_run_before_it_writes_again(tmp_path, long_run):
    first = start_long(tmp_path, long_run)
    (tmp_path / 'model.lock').unlink()
    second = run_script('demo_tie.py', '--data_dir', long_run, *TINY, '--tied', '--epochs', 1,
                        '--save_path', tmp_path / 'model.pt', '--overwrite')
    _, err = first.communicate(timeout=300)
    assert first.returncode == 1, err
    assert 'model.lock was deleted or replaced' in err and 'without writing' in err
    assert second.returncode == 0, second.stderr  # the one run left writes alone
    assert not (tmp_path / 'model.lock').exists()  # and removes its lock when it ends


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_trainer_starts_ends_it_at_once_with_a_line(tmp_path, signum):
    pattern_corpus(tmp_path / 'corpus')
    proc = start_training(tmp_path, '--epochs', '5')
    time.sleep(0.4)  # importing PyTorch
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert 'stopped at once' in err and 'Traceback' not in err
    assert not (tmp_path / 'model.last.pt').exists()


def run_snippet(code):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_before_training_starts_a_signal_ends_the_run_at_once():
    """What the trainer installs before reading data: nothing to save yet, so no waiting for
    a window that will not come (a SIGTERM used to be ignored until training started)."""
    proc = run_snippet('''
        import os, signal, time
        from stopping import StopRequest
        signal.signal(signal.SIGTERM, StopRequest())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print('still running')
    ''')
    assert proc.returncode == 143 and 'still running' not in proc.stdout
    assert 'SIGTERM received: stopped at once' in proc.stderr


def test_a_second_signal_during_a_write_lets_the_write_finish_then_ends():
    proc = run_snippet('''
        import os, signal, time
        from stopping import StopRequest
        stop = StopRequest()
        stop.immediate = False  # training
        signal.signal(signal.SIGINT, stop)
        os.kill(os.getpid(), signal.SIGINT)  # first: stop after the window
        with stop.writing():
            os.kill(os.getpid(), signal.SIGINT)  # second, while a checkpoint is written
            time.sleep(0.2)
            print('write complete', flush=True)
        print('after the write')
    ''')
    assert proc.returncode == 130
    assert proc.stdout.splitlines() == ['write complete']
    assert 'stopping once the file being written is complete' in proc.stderr


def test_sighup_saves_the_epoch_in_progress_and_exits_129(tmp_path, long_run):
    proc = start_long(tmp_path, long_run)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    assert torch.load(tmp_path / 'model.last.pt', weights_only=True)['position'] is not None
    assert 'Resume with: python demo_tie.py' in out  # on stdout too, for logs of stdout


def test_a_fresh_start_without_a_last_checkpoint_does_not_offer_resume(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    (tmp_path / 'model.last.pt').unlink()
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied',
                    '--save_path', tmp_path / 'model.pt')
    assert proc.returncode == 1
    assert 'left no last checkpoint' in proc.stderr and '--overwrite' in proc.stderr
    assert 'Continue it with --resume' not in proc.stderr
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                       tmp_path / 'model.pt', '--resume')
    assert resumed.returncode == 1
    assert 'no last checkpoint to continue from' in resumed.stderr
    assert '--overwrite' in resumed.stderr


def test_a_finished_run_resumed_into_a_new_save_path_tests_its_best_model(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path / 'r4')
    proc = run_script('demo_tie.py', '--data_dir', tmp_path / 'r4' / 'corpus', '--save_path',
                      tmp_path / 'r15' / 'm.pt', '--resume', tmp_path / 'r4' / 'model.last.pt')
    assert proc.returncode == 0, proc.stderr
    assert 'Nothing to train' in proc.stdout and 'Test Loss:' in proc.stdout


def test_a_symlinked_save_path_is_followed_and_resumes(tmp_path):
    pattern_corpus(tmp_path / 'corpus')
    (tmp_path / 'real').mkdir()
    (tmp_path / 'lnk').mkdir()
    os.symlink(tmp_path / 'real' / 'm.pt', tmp_path / 'lnk' / 'link.pt')  # dangling
    first = run_script('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied',
                       '--epochs', 1, '--save_path', tmp_path / 'lnk' / 'link.pt')
    assert first.returncode == 0, first.stderr
    assert os.path.islink(tmp_path / 'lnk' / 'link.pt')
    assert sorted(os.listdir(tmp_path / 'real')) == ['m.csv', 'm.last.pt', 'm.pt']
    resumed = run_script('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--epochs', 2,
                         '--save_path', tmp_path / 'lnk' / 'link.pt', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Epoch: 2,' in resumed.stdout


def test_overwrite_deletes_only_files_this_project_wrote(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    (tmp_path / 'model.csv').write_text('my notes, not metrics\n')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, '--tied',
                    '--save_path', tmp_path / 'model.pt', '--overwrite')
    assert proc.returncode == 1
    assert 'model.csv is not a file this trainer wrote' in proc.stderr
    assert (tmp_path / 'model.csv').read_text() == 'my notes, not metrics\n'
    assert (tmp_path / 'model.pt').exists() and (tmp_path / 'model.last.pt').exists()


def test_a_save_path_that_is_no_regular_file_is_refused_saying_so(tmp_path):
    proc = run_main('demo_tie.py', '--data_dir', tmp_path, '--save_path', '/dev/null')
    assert proc.returncode == 1
    assert '/dev/null is not a regular file' in proc.stderr
    assert 'from an earlier run' not in proc.stderr


# ------------------------------------------------------------------ checkpoints that lie

def lying_copy(trained, tmp_path, change):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    change(ckpt)
    path = tmp_path / 'lying.pt'
    torch.save(ckpt, path)
    return path


def read_with(reader, trained, path):
    """Run one of the three scripts that read a best checkpoint on `path`."""
    if reader == 'score.py':
        return run_main('score.py', '--checkpoint', path, trained['corpus'] / 'test.txt')
    if reader == 'generate.py':
        return run_main('generate.py', '--checkpoint', path, '--num_words', 3)
    return run_main('demo_tie.py', '--eval_only', '--data_dir', trained['corpus'],
                    '--save_path', path)


# each case through one of the readers (they share load_checkpoint), all readers in turn
@pytest.mark.parametrize('field, value, reader', [('hidden_size', 10**6, 'score.py'),
                                                  ('embed_size', 10**9, 'generate.py'),
                                                  ('num_layers', 10**6, 'demo_tie.py')])
def test_sizes_that_do_not_match_the_weights_are_refused_before_anything_is_built(
        trained, tmp_path, field, value, reader):
    path = lying_copy(trained, tmp_path, lambda c: c['model_args'].__setitem__(field, value))
    proc = read_with(reader, trained, path)
    assert proc.returncode == 1, proc.stderr
    assert 'does not match its weights' in proc.stderr or 'LSTM layers' in proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('dtype, reader', [(torch.int64, 'generate.py'),
                                           (torch.bool, 'demo_tie.py'),
                                           (torch.complex64, 'score.py')])
def test_weights_that_are_not_real_numbers_are_refused(trained, tmp_path, dtype, reader):
    def cast(ckpt):
        ckpt['model_state']['fc.bias'] = ckpt['model_state']['fc.bias'].to(dtype)
    proc = read_with(reader, trained, lying_copy(trained, tmp_path, cast))
    assert proc.returncode == 1 and 'floating-point' in proc.stderr, proc.stderr


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
    proc = read_with(reader, trained, lying_copy(trained, tmp_path, change))
    assert proc.returncode == 1, proc.stderr
    assert 'is damaged' in proc.stderr and 'Traceback' not in proc.stderr


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
    assert proc.returncode == 1, proc.stderr
    assert f'stored --{field}' in proc.stderr and 'Traceback' not in proc.stderr


# ------------------------------------------------------------------ input, output and sizes

@pytest.mark.parametrize('command', [
    'score.py --checkpoint {ckpt} --per_token {test} | head -3',
    'generate.py --checkpoint {ckpt} --num_samples 50 --num_words 20 | head -1'])
def test_a_closed_pipe_ends_the_script_quietly(trained, command):
    line = command.format(ckpt=trained['checkpoint'], test=trained['corpus'] / 'test.txt')
    proc = subprocess.run(f'{sys.executable} {ROOT}/{line}', shell=True, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.stdout.strip()
    assert 'Traceback' not in proc.stderr and 'BrokenPipe' not in proc.stderr


def test_scoring_from_a_closed_stdin_says_so(trained):
    proc = subprocess.run([sys.executable, str(ROOT / 'score.py'), '--checkpoint',
                           trained['checkpoint'], '-'], capture_output=True, text=True,
                          timeout=60, check=False, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 1 and 'standard input is closed' in proc.stderr


def test_independent_lines_are_scored_in_pieces_of_bounded_size(trained):
    import score
    from checkpoint import build_model, load_checkpoint
    ckpt = load_checkpoint(trained['checkpoint'])
    model = build_model(ckpt)
    line = ' '.join(['one two three four five six seven eight'] * 40)
    path = trained['folder'] / 'long_line.txt'
    path.write_text(line + '\nfive six\n')
    text = score.read_text(str(path), ckpt['vocab'])
    whole = score.score_independent(model, text, None, torch.device('cpu'), budget=10**9)
    pieces = score.score_independent(model, text, None, torch.device('cpu'), budget=50)
    assert pieces == pytest.approx(whole, rel=1e-6, nan_ok=True)


def test_model_sizes_that_cannot_fit_are_refused_before_reading_data(tmp_path):
    proc = run_main('demo_tie.py', '--hidden_size', 100000, '--data_dir', tmp_path / 'none')
    assert proc.returncode == 2 and 'GiB' in proc.stderr and 'parameters' in proc.stderr
    assert 'data folder' not in proc.stderr  # refused before reading the data


# ------------------------------------------------------------------ what a new user trips on

def test_a_typed_eos_is_followed_by_sos_and_typed_markers_are_refused(trained):
    import generate
    vocab = torch.load(trained['checkpoint'], weights_only=True)['vocab']
    one, two = vocab.index('one'), vocab.index('two')
    assert generate.prompt_ids(['one', '<eos>', 'two'], vocab) == [
        data.SOS, one, data.EOS, data.SOS, two]
    for marker in ('<sos>', '<pad>'):
        proc = run_main('generate.py', '--checkpoint', trained['checkpoint'], '--seed_text',
                        f'one {marker} two')
        assert proc.returncode == 1 and marker in proc.stderr and 'not words' in proc.stderr


def test_a_sample_that_ends_at_once_says_why(trained):
    proc = run_script('generate.py', '--checkpoint', trained['checkpoint'], '--seed_text',
                      'one two three four five six seven eight', '--stop_at_eos', '--seed', 1,
                      timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'one two three four five six seven eight'
    assert 'ended at once' in proc.stderr


def test_generation_with_amp_on_a_cpu_runs_in_float32_and_says_so(trained):
    proc = run_script('generate.py', '--checkpoint', trained['checkpoint'], '--amp',
                      '--num_words', 3, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'float32' in proc.stderr


def test_scores_count_the_words_read_as_unk_or_respelled(tmp_path):
    """A PTB-style vocabulary (lower case, numbers as N): 'The' and '2021' are respelled,
    'bitcoin' and a typed '<unk>' are scored as <unk>."""
    lines = 'the company said N shares rose\nthe stock fell N\n' * 30
    from conftest import write_corpus
    write_corpus(tmp_path / 'corpus', lines)
    proc, save = train_tiny(tmp_path, epochs=1)
    assert proc.returncode == 0, proc.stderr
    text = tmp_path / 'odd.txt'
    text.write_text('The bitcoin fell 20% in 2021 <unk>\nthe stock fell\n')
    doc = json.loads(run_script('score.py', '--checkpoint', save, '--json', text).stdout)
    # The -> the, 2021 -> N; bitcoin, 20% and in are not in the vocabulary
    assert [(r['unk'], r['respelled']) for r in doc['per_line']] == [(4, 2), (0, 0)]
    assert doc['scored_as_unk'] == 4 and doc['respelled'] == 2
    assert doc['out_of_vocabulary'] == 3
    table = run_script('score.py', '--checkpoint', save, text).stdout
    assert '<unk>' in table.splitlines()[0] and 'respelled' in table.splitlines()[0]
    assert '3 read as <unk>, 2 respelled; 4 tokens scored as <unk>' in table


def test_plot_labels_two_csvs_of_one_name_by_their_folders():
    import plot
    assert plot.labels(['a/m.csv', 'b/m.csv', 'c/x.csv']) == ['a/m', 'b/m', 'x']


def test_getdata_names_a_folder_as_an_offline_source_when_the_download_fails(tmp_path):
    shutil.copy(ROOT / 'getdata.sh', tmp_path / 'getdata.sh')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'curl').write_text('#!/bin/sh\nexit 6\n')
    (bin_dir / 'curl').chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')
    proc = subprocess.run(['bash', str(tmp_path / 'getdata.sh')], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 1
    assert 'FOLDER' in proc.stderr and 'simple-examples.tgz' in proc.stderr


def test_the_lock_file_goes_when_the_run_ends(tmp_path):
    proc, _ = train_tiny(tmp_path, epochs=1)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / 'model.lock').exists()


def test_the_documented_test_command_installs_what_the_tests_import():
    readme = (ROOT / 'README.md').read_text()
    install = next(line for line in readme.splitlines()
                   if line.startswith('pip install') and 'pytest' in line)
    for package in ('pytest', 'pytest-xdist', 'matplotlib', 'ruff'):
        assert package in install.split()
    assert 'python -m pytest -q tests' in readme  # the one-core command
