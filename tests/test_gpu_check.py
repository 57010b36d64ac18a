"""gpu_check.sh's long-run modes, run for real on a CPU with a tiny model (DEVICE=cpu): they
keep every checkpoint a user needs to resume or to `finish`, go on where they stopped, pass
the trainer's exit status on, and refuse a mode they do not know."""
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import ROOT, TINY, pattern_corpus

pytestmark = pytest.mark.skipif(os.name != 'posix', reason='a bash script')


def gpu_check(tmp_path, *args, epochs=1, corpus=None, **kw):
    """`bash gpu_check.sh ARGS` with the tiny model on the CPU, its logs in tmp_path/out and
    its checkpoints in tmp_path/checkpoints."""
    corpus = corpus or tmp_path / 'corpus'
    size = ' '.join(f for f in TINY if f not in ('--device', 'cpu'))
    env = dict(os.environ, DEVICE='cpu', EPOCHS=str(epochs), OUT=str(tmp_path / 'out'),
               CHECKPOINTS=str(tmp_path / 'checkpoints'), SIZE=f'{size} --data_dir {corpus}')
    return subprocess.Popen(['bash', str(ROOT / 'gpu_check.sh'), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finished(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_a_long_run_keeps_its_checkpoints_and_goes_on_when_run_again(tmp_path):
    pattern_corpus(tmp_path / 'corpus')
    status, out, err = finished(gpu_check(tmp_path, 'ref40'))
    assert status == 0, err
    kept = tmp_path / 'checkpoints'
    assert (kept / 'ref40.pt').exists() and (kept / 'ref40.last.pt').exists()
    assert 'Test Perplexity' in (tmp_path / 'out' / 'ref40.log').read_text()
    # run again with more epochs: it continues the same run instead of refusing or deleting
    status, out, err = finished(gpu_check(tmp_path, 'ref40', epochs=2))
    assert status == 0, err
    assert 'Resuming from' in out and 'Epoch: 2,' in out and 'Epoch: 1,' not in out
    assert torch.load(kept / 'ref40.last.pt', weights_only=True)['epoch'] == 2
    # finish fine-tunes from the kept best model; its two phases keep their own checkpoints
    status, out, err = finished(gpu_check(tmp_path, 'finish', kept / 'ref40.pt'))
    assert status == 0, err
    assert out.count('Fine-tuning') == 2
    assert (kept / 'finish_adam.last.pt').exists() and (kept / 'finish_ntasgd.last.pt').exists()


def test_ctrl_c_leaves_the_checkpoint_that_the_resume_line_names(tmp_path):
    """Ctrl-C reaches the whole process group (bash, the trainer, tee): the trainer saves
    and prints its resume line, and the file it names is still there afterwards."""
    corpus = pattern_corpus(tmp_path / 'corpus', train_lines=3000)
    proc = gpu_check(tmp_path, 'ref40', epochs=50, corpus=corpus, start_new_session=True)
    log = tmp_path / 'out' / 'ref40.log'
    deadline = time.monotonic() + 120
    while 'Epoch: 1,' not in (log.read_text() if log.exists() else ''):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    status, out, err = finished(proc)
    assert 'Traceback' not in err
    assert 'Training stopped by SIGINT. Resume with: python demo_tie.py' in out
    assert status == 0  # Ctrl-C tests the best model and ends normally
    last = tmp_path / 'checkpoints' / 'ref40.last.pt'
    assert f'--resume {last}' in out and last.exists()
    assert 'Training stopped by SIGINT' in log.read_text()  # the log has it too


def test_a_failed_run_fails_the_script_and_leaves_earlier_files_alone(tmp_path):
    kept = tmp_path / 'checkpoints'
    kept.mkdir()
    (kept / 'untied.pt').write_bytes(b'a model of an earlier run')
    status, _, err = finished(gpu_check(tmp_path, 'untied'))  # the trainer refuses the path
    assert status == 1 and 'are from an earlier run' in err
    assert 'are from an earlier run' in (tmp_path / 'out' / 'untied.err').read_text()
    assert (kept / 'untied.pt').read_bytes() == b'a model of an earlier run'


@pytest.mark.parametrize('args', [['ref4O'], ['finish'], ['finish', 'no/such/model.pt']])
def test_an_unknown_mode_or_a_missing_model_is_refused_with_the_usage(tmp_path, args):
    status, out, err = finished(gpu_check(tmp_path, *args))
    assert status == 2 and out == ''
    assert 'gpu_check.sh' in err and not (tmp_path / 'checkpoints').exists()
    if args == ['ref4O']:
        assert "unknown mode 'ref4O'" in err and 'bash gpu_check.sh ref40' in err
