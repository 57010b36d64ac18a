"""demo_tie.py under torchrun: two CPU processes (gloo) against one, on a tiny corpus."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TRAINED_TOL, random_corpus, run_main, tiny_flags, write_corpus

# dropout 0: the processes' different dropout streams would make the runs differ
FLAGS = [*tiny_flags(num_layers=2, dropout=0), '--tied']


def torchrun(nproc, *args, popen=False):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
               str(nproc), str(ROOT / 'demo_tie.py'), *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    if popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def printed(proc, prefix):
    return [l for l in proc.stdout.splitlines() if l.startswith(prefix)]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """Random sentences over 30 words: the loss stays well above 0, so relative differences
    between the runs mean something."""
    return random_corpus(tmp_path_factory.mktemp('corpus'), [f'w{i}' for i in range(30)])


@pytest.fixture(scope='module')
def one_and_two(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp('runs')
    one = run_main('demo_tie.py', '--data_dir', corpus, *FLAGS, '--epochs', 2,
                     '--save_path', folder / 'one.pt')
    two = torchrun(2, '--data_dir', corpus, *FLAGS, '--epochs', 2, '--save_path', folder / 'two.pt')
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    return folder, one, two


def test_two_processes_train_the_model_one_process_trains(one_and_two):
    folder, _one, _two = one_and_two
    a = torch.load(folder / 'one.last.pt', weights_only=True)
    b = torch.load(folder / 'two.last.pt', weights_only=True)
    losses_one, losses_two = a['window_losses'], b['window_losses']
    assert losses_one.numel() == losses_two.numel() > 10
    assert torch.allclose(losses_two, losses_one, rtol=0,
                          atol=TRAINED_TOL), (losses_one - losses_two).abs().max()
    # float rounding differs (each process sums its own rows), and two epochs of Adam carry
    # it into the weights: they agree to a tolerance, not bit for bit
    for name, weight in a['model_state'].items():
        assert torch.allclose(b['model_state'][name], weight, rtol=1e-3, atol=2e-4), name
    assert len(b['rng_of_processes']) == 2


def numbers(proc, prefix):
    return [float(x) for l in proc.stdout.splitlines() if l.startswith(prefix)
            for x in re.findall(r'(?<=: )\d+\.\d+', l)]


def test_two_processes_print_what_one_process_prints(one_and_two):
    _, one, two = one_and_two
    for prefix in ('Epoch: ', 'Validation Loss without', 'Test Loss'):
        assert numbers(two, prefix) == pytest.approx(numbers(one, prefix), rel=1e-4), prefix
        assert len(numbers(two, prefix)) == len(numbers(one, prefix)) > 0
    assert 'Processes: 2 (2 of the 4 rows each)' in two.stdout
    assert two.stdout.count('Test Loss: ') == 1  # only the first process speaks


def test_checkpoints_of_a_distributed_run_are_plain(one_and_two, corpus):
    folder, _one, _ = one_and_two
    state = torch.load(folder / 'two.pt', weights_only=True)['model_state']
    assert not any(k.startswith('module.') for k in state)
    gen = run_main('generate.py', '--checkpoint', folder / 'two.pt', '--num_words', 5, '--seed',
                     1)
    assert gen.returncode == 0, gen.stderr
    # the same model, evaluated by one process and by two: every token once, the same sums
    evaluated = torchrun(2, '--eval_only', '--data_dir', corpus, '--save_path', folder / 'two.pt',
                         '--device', 'cpu')
    alone = run_main('demo_tie.py', '--eval_only', '--data_dir', corpus, '--save_path',
                       folder / 'two.pt')
    assert evaluated.returncode == 0, evaluated.stderr
    for prefix in ('Validation', 'Test Loss'):
        assert printed(evaluated, prefix) == printed(alone, prefix) != []


def test_a_batch_the_processes_cannot_share_is_refused(corpus, tmp_path):
    flags = [f if f != '4' else '3' for f in FLAGS]  # --batch_size 3 on 2 processes
    proc = torchrun(2, '--data_dir', corpus, *flags, '--save_path', tmp_path / 'm.pt')
    assert proc.returncode != 0
    assert '--batch_size 3 cannot be shared by 2 processes; use a multiple of 2' in proc.stderr


def test_a_save_path_taken_by_an_earlier_run_ends_every_process_with_one_message(one_and_two,
                                                                                 corpus):
    folder, _, _ = one_and_two
    proc = torchrun(2, '--data_dir', corpus, *FLAGS, '--save_path', folder / 'two.pt')
    assert proc.returncode != 0
    assert proc.stderr.count('are from an earlier run. Continue it with --resume') == 1
    assert '[rank1]' not in proc.stderr and 'Signal 15' not in proc.stderr, proc.stderr[-3000:]


def test_sigterm_stops_every_process_and_the_run_resumes_exactly(corpus, tmp_path):
    big = write_corpus(tmp_path / 'corpus', (corpus / 'train.txt').read_text() * 4,
                       (corpus / 'valid.txt').read_text(), (corpus / 'test.txt').read_text())
    full = torchrun(2, '--data_dir', big, *FLAGS, '--dropout', '0.2', '--epochs', 1,
                    '--save_path', tmp_path / 'full.pt')
    assert full.returncode == 0, full.stderr
    proc = torchrun(2, '--data_dir', big, *FLAGS, '--dropout', '0.2', '--epochs', 1,
                    '--save_path', tmp_path / 'cut.pt', popen=True)
    seen = b''
    while b'Epoch 1:' not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, 'the run ended before its first epoch'
        seen += chunk
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler stops a job: every process of it
    proc.communicate(timeout=120)
    last = torch.load(tmp_path / 'cut.last.pt', weights_only=True)
    assert last['position'] is not None and last['position']['hidden'][0].shape == (2, 4, 16)
    resumed = torchrun(2, '--data_dir', big, '--save_path', tmp_path / 'cut.pt', '--device', 'cpu',
                       '--resume')
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / 'cut.last.pt', weights_only=True)['model_state']
    b = torch.load(tmp_path / 'full.last.pt', weights_only=True)['model_state']
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert printed(resumed, 'Test Loss') == printed(full, 'Test Loss')


def test_a_dead_process_takes_the_job_down(corpus, tmp_path):
    big = write_corpus(tmp_path / 'corpus', (corpus / 'train.txt').read_text() * 4,
                       (corpus / 'valid.txt').read_text(), (corpus / 'test.txt').read_text())
    proc = torchrun(2, '--data_dir', big, *FLAGS, '--epochs', 50, '--save_path', tmp_path / 'm.pt',
                    popen=True)
    seen = b''
    while b'Epoch 1:' not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, 'the run ended before its first epoch'
        seen += chunk
    workers = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True,
                             text=True, check=False).stdout.split()
    assert len(workers) == 2
    os.kill(int(max(workers, key=int)), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # the survivor is not left waiting for ever
    assert proc.returncode != 0
    assert 'Signal 9 (SIGKILL)' in err or 'SIGKILL' in err, err[-2000:]


def test_the_nan_guard_stops_every_process(corpus, tmp_path):
    proc = torchrun(2, '--data_dir', corpus, *FLAGS, '--lr', '1e30', '--clip', '1e30', '--epochs',
                    2,
                    '--save_path', tmp_path / 'm.pt')
    assert proc.returncode != 0
    assert proc.stderr.count('error: the training loss became NaN or infinite in epoch 1') == 1


def test_the_regularized_recipe_trains_the_same_under_two_processes(corpus, tmp_path):
    """The preset's variable windows, layer-by-layer LSTM and activation penalties, with its
    random masks off (each process draws its own): two processes train what one trains."""
    preset = ['--recipe', 'regularized', '--dropouti', '0', '--dropouth', '0', '--dropoute', '0',
              '--wdrop', '0', '--epochs', 1]
    one = run_main('demo_tie.py', '--data_dir', corpus, *FLAGS, *preset, '--save_path',
                     tmp_path / 'one.pt')
    two = torchrun(2, '--data_dir', corpus, *FLAGS, *preset, '--save_path', tmp_path / 'two.pt')
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert 'Recipe regularized: --variational --dropout 0.0' in two.stdout
    for prefix in ('Epoch: ', 'Test Loss'):
        assert numbers(two, prefix) == pytest.approx(numbers(one, prefix), rel=1e-4), prefix
