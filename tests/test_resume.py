"""--resume (lm/resume.py, lm/trainer.py): a stopped run continues to exactly the weights of
one that never stopped; flags come from the checkpoint or change as lm.flags says; a
checkpoint or data that does not fit the run is refused."""
import csv
import signal

import pytest
import torch

from conftest import (
    STOPPED_AT,
    TINY,
    copy_run,
    pattern_corpus,
    printed_test_lines,
    run_main,
    snapshot,
    states_equal,
    train,
)


def csv_epochs(path):
    with open(path) as f:
        return [row['epoch'] for row in csv.DictReader(f)]


def test_resuming_after_an_epoch_matches_the_uninterrupted_run_bit_for_bit(tmp_path, trained):
    # trained: the same settings run for 3 epochs without a stop
    pattern_corpus(tmp_path / 'corpus')
    first, save = train(tmp_path, epochs=1)
    assert first.returncode == 0, first.stderr
    resumed, _ = train(tmp_path, '--resume', epochs=3)
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resuming from' in resumed.stdout and 'at epoch 2' in resumed.stdout
    assert printed_test_lines(resumed) == printed_test_lines(trained['proc'])
    assert states_equal(save, trained['checkpoint'])
    assert states_equal(tmp_path / 'model.last.pt', trained['folder'] / 'model.last.pt')
    assert csv_epochs(tmp_path / 'model.csv') == ['1', '2', '3']  # appended, not duplicated


def test_a_position_saved_in_float16_by_a_gpu_amp_run_resumes_on_a_cpu(tmp_path, stopped_run):
    """cuDNN's LSTM under autocast keeps a float16 hidden state, which an --amp run on a GPU
    saved in its position before it was cast; a float32 or CPU resume continues from it."""
    copy_run(stopped_run, tmp_path)
    last = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    last['position']['hidden'] = tuple(h.half() for h in last['position']['hidden'])
    torch.save(last, tmp_path / 'model.last.pt')
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                       tmp_path / 'model.pt', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'at epoch 1, window 43' in resumed.stdout and printed_test_lines(resumed)
    saved = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert saved['epoch'] == 3


@pytest.mark.parametrize('change', [
    None,
    # only shown: a negative time (an older version's wall clock stepped back an hour)
    lambda last: last['position'].update(seconds=-3597.0),
    # a run on an 8-GPU node, resumed where there are fewer GPUs, or none
    lambda last: last['rng'].update(cuda=[torch.zeros(16, dtype=torch.uint8)] * 8),
], ids=['as saved', 'clock stepped back', 'cuda states of 8 gpus'])
def test_a_run_stopped_in_mid_epoch_resumes_bit_for_bit(tmp_path, trained, stopped_run, change):
    """stopped_run: the trained fixture's settings, stopped by SIGTERM in epoch 1."""
    copy_run(stopped_run, tmp_path)
    last = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert last['epoch'] == 1 and last['position']['window'] == STOPPED_AT
    if change is not None:
        change(last)
        torch.save(last, tmp_path / 'model.last.pt')
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                       tmp_path / 'model.pt', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Resuming from' in resumed.stdout and 'at epoch 1, window 43' in resumed.stdout
    assert printed_test_lines(resumed) == printed_test_lines(trained['proc'])
    assert states_equal(tmp_path / 'model.last.pt', trained['folder'] / 'model.last.pt')
    assert states_equal(tmp_path / 'model.pt', trained['checkpoint'])
    assert csv_epochs(tmp_path / 'model.csv') == ['1', '2', '3']


def test_the_csv_is_created_with_its_first_row(stopped_run):
    assert (stopped_run / 'model.last.pt').exists() and not (stopped_run / 'model.csv').exists()


def test_resume_takes_the_model_flags_from_the_checkpoint(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                    tmp_path / 'model.pt', '--epochs', 2, '--resume')
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


def test_proj_reg_on_resuming_a_model_without_projection_is_refused_in_one_line(tmp_path,
                                                                               one_epoch):
    copy_run(one_epoch, tmp_path)
    before = snapshot(tmp_path)
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                    tmp_path / 'model.pt', '--proj_reg', '0.1', '--resume')
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, proc.stderr
    assert '--proj_reg penalises the matrix of --projection, and the model of' in proc.stderr
    assert snapshot(tmp_path) == before


def test_resume_refuses_a_best_model_checkpoint_and_other_settings(tmp_path, trained):
    common = ['--data_dir', trained['corpus'], '--save_path', tmp_path / 'm.pt', '--tied']
    proc = run_main('demo_tie.py', *common, *TINY, '--resume', trained['checkpoint'])
    assert proc.returncode == 1 and 'holds a model only' in proc.stderr
    other = [a if a != '16' else '24' for a in TINY]
    proc = run_main('demo_tie.py', *common, *other, '--resume',
                    trained['folder'] / 'model.last.pt')
    assert proc.returncode == 1
    assert 'made with --embed_size 16, --hidden_size 16; leave these flags out' in proc.stderr


def test_optimizer_flags_given_on_resume_are_applied_said_and_recorded(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    proc, _ = train(tmp_path, '--resume', '--lr', '0.005', '--clip', '0.25', epochs=2)
    assert proc.returncode == 0, proc.stderr
    assert 'Changed on resume: --lr 0.01 -> 0.005' in proc.stdout
    assert 'Changed on resume: --clip 5.0 -> 0.25' in proc.stdout
    assert 'current lr: [0.005]' in proc.stdout
    ckpt = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert ckpt['args']['lr'] == 0.005 and ckpt['args']['clip'] == 0.25
    assert ckpt['optimizer']['param_groups'][0]['lr'] == 0.005


def test_a_seed_given_on_resume_is_ignored_with_a_warning(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path)
    proc, _ = train(tmp_path, '--resume', '--seed', '7', epochs=2)
    assert proc.returncode == 0, proc.stderr
    assert '--seed is ignored on resume' in proc.stderr
    assert torch.load(tmp_path / 'model.last.pt', weights_only=True)['args']['seed'] == 1111


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
def test_a_damaged_but_loadable_last_checkpoint_is_refused_cleanly(tmp_path, damage, stopped_run):
    copy_run(stopped_run, tmp_path)
    last = tmp_path / 'model.last.pt'
    ckpt = torch.load(last, weights_only=True)
    if damage == 'hidden shape':
        ckpt['position']['hidden'] = tuple(h[:, :2] for h in ckpt['position']['hidden'])
    elif damage == 'no rng':
        del ckpt['rng']
    elif damage == 'partial position':
        del ckpt['position']['losses']
    else:
        ckpt['optimizer']['state'][0]['exp_avg'] = torch.zeros(3)
    torch.save(ckpt, last)
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                       tmp_path / 'model.pt', '--resume')
    assert resumed.returncode == 1, resumed.stderr
    assert 'is damaged and cannot be resumed' in resumed.stderr


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


def test_a_finished_run_resumed_into_a_new_save_path_tests_its_best_model(tmp_path, one_epoch):
    copy_run(one_epoch, tmp_path / 'r4')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'r4' / 'corpus', '--save_path',
                    tmp_path / 'r15' / 'm.pt', '--resume', tmp_path / 'r4' / 'model.last.pt')
    assert proc.returncode == 0, proc.stderr
    assert 'Nothing to train' in proc.stdout and 'Test Loss:' in proc.stdout


def test_epochs_already_done_says_so_and_tests(tmp_path, trained):
    copy_run(trained['folder'], tmp_path)
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--epochs', 3,
                    '--save_path', tmp_path / 'model.pt', '--resume')
    assert proc.returncode == 0, proc.stderr
    assert 'Nothing to train: 3 epochs are done and --epochs is 3.' in proc.stdout
    assert printed_test_lines(proc) == printed_test_lines(trained['proc'])


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
    assert 'left no last checkpoint' in resumed.stderr and '--overwrite' in resumed.stderr


def test_resume_where_no_run_has_saved_says_so_and_how_to_start(tmp_path):
    """Nothing at --save_path: no --overwrite advice (there is nothing to overwrite)."""
    pattern_corpus(tmp_path / 'corpus')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', '--save_path',
                    tmp_path / 'model.pt', '--resume')
    assert proc.returncode == 1 and proc.stderr.count('\n') == 1, proc.stderr
    assert 'nothing is there to resume' in proc.stderr
    assert 'the same command without --resume' in proc.stderr
    assert '--overwrite' not in proc.stderr
    assert not (tmp_path / 'model.pt').exists()


def test_ctrl_c_before_any_epoch_ends_saves_and_exits_130_with_the_resume_hint(tmp_path):
    proc, _ = train(tmp_path, on_window=lambda e, k: k == 10 and signal.raise_signal(
        signal.SIGINT))
    assert proc.returncode == 130, proc.stderr
    assert 'no epoch finished' not in proc.stderr and 'Test Loss' not in proc.stdout
    assert 'Resume with' in proc.stdout  # the position in epoch 1 was saved
    assert torch.load(tmp_path / 'model.last.pt', weights_only=True)['position'] is not None


def test_ctrl_c_stops_training_and_still_tests_the_best_model(tmp_path):
    proc, _ = train(tmp_path, epochs=50, on_window=lambda e, k: (e, k) == (2, 10)
                    and signal.raise_signal(signal.SIGINT))
    assert proc.returncode == 0, proc.stderr
    assert 'Training stopped by SIGINT' in proc.stdout
    assert 'Testing: \n' + '-' * 41 + '\nTest Loss: ' in proc.stdout
    last = torch.load(tmp_path / 'model.last.pt', weights_only=True)
    assert last['epoch'] == 2 and last['position']['window'] == 12
