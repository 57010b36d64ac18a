"""The CUDA path, on a GPU: skipped without one; `bash gpu_check.sh` runs them there. What a
CPU can check of that path (float16 hidden states and CUDA random states in checkpoints,
--cuda and cuda:N refused where they cannot hold) is tested beside the CPU tests."""
import pytest
import torch

from conftest import SIGNALLED, TINY, run_main, signal_at, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]
ON_CUDA = [*TINY[:-2], '--device', 'cuda']  # TINY pins the CPU in its last two words


def test_amp_on_cuda_trains_with_float16_and_a_scaler_and_saves_float32(tmp_path):
    proc, save = train(tmp_path, *ON_CUDA, '--amp', epochs=2)
    assert proc.returncode == 0, proc.stderr
    assert 'Using device: cuda' in proc.stdout
    last = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert last.get('scaler') is not None  # float16 autocast with loss scaling
    state = torch.load(save, weights_only=True)['model_state']
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())


def test_a_gpu_amp_run_stopped_in_mid_epoch_resumes_on_the_cpu(tmp_path):
    stopped, _ = train(tmp_path, *ON_CUDA, '--amp', epochs=2, on_window=signal_at(1, SIGNALLED))
    assert stopped.returncode == 143, stopped.stderr
    hidden = torch.load(tmp_path / 'model.last.pt', weights_only=True)['position']['hidden']
    assert all(h.dtype == torch.float32 and h.device.type == 'cpu' for h in hidden)
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                       tmp_path / 'model.pt', '--device', 'cpu', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Epoch: 2,' in resumed.stdout


def test_generate_and_score_run_with_cuda(tmp_path):
    proc, save = train(tmp_path, *ON_CUDA, epochs=1)
    assert proc.returncode == 0, proc.stderr
    generated = run_main('generate.py', '--checkpoint', save, '--cuda', '--num_words', 5)
    assert generated.returncode == 0, generated.stderr
    scored = run_main('score.py', '--checkpoint', save, '--cuda', '--amp',
                      tmp_path / 'corpus' / 'test.txt')
    assert scored.returncode == 0 and 'Perplexity' in scored.stdout, scored.stderr


def test_a_device_index_past_the_gpus_gets_one_line():
    index = torch.cuda.device_count()
    proc = run_main('generate.py', '--device', f'cuda:{index}')
    assert proc.returncode == 2 and f'has {index} CUDA device(s)' in proc.stderr
