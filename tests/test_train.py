"""demo_tie.py run as a user runs it, on tiny corpora: what it prints, the files it writes,
--eval_only, --amp, and the data and flags it refuses."""
import csv
import os
import re
import signal
import stat

import pytest
import torch

from conftest import (
    PATTERN,
    TINY,
    copy_run,
    fails,
    pattern_corpus,
    printed_test_lines,
    run_main,
    signal_at,
    snapshot,
    train,
    write_corpus,
)
from lm.device import cpu_has_native_bfloat16
from lm.runfiles import read_metrics


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
    err = trained['proc'].stderr
    assert 'Test Evaluation' in err and 'Validation' in err  # the progress bars


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
    proc = run_main('demo_tie.py', '--eval_only', '--data_dir', trained['corpus'],
                    '--save_path', trained['checkpoint'])
    assert proc.returncode == 0, proc.stderr
    test_lines = [l for l in trained['proc'].stdout.splitlines() if l.startswith('Test Loss')]
    assert test_lines == [l for l in proc.stdout.splitlines() if l.startswith('Test Loss')]
    assert 'Validation Perplexity: ' in proc.stdout


def test_amp_on_the_cpu_trains_learns_and_saves_float32(tmp_path):
    proc, save = train(tmp_path, '--amp', epochs=2)
    assert proc.returncode == 0, proc.stderr
    emulated = 'no native bfloat16' in proc.stderr
    assert emulated == (not cpu_has_native_bfloat16())  # float32, with a warning, only there
    # elsewhere the measured choice is printed, whichever it is
    assert emulated or "--amp: " in proc.stderr and "matrix products ran" in proc.stderr
    ppl = float(re.findall(r'Validation Perplexity: (\d+\.\d+)', proc.stdout)[-1])
    assert ppl < 2.0  # the pattern corpus is learnt
    for path in (save, tmp_path / 'model.last.pt'):
        state = torch.load(path, weights_only=True)['model_state']
        assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    # the checkpoint is interchangeable: resumed without --amp
    resumed, _ = train(tmp_path, '--resume', epochs=3)
    assert resumed.returncode == 0, resumed.stderr
    assert 'Epoch: 3,' in resumed.stdout


def test_nan_loss_stops_with_advice_and_leaves_the_best_checkpoint_alone(tmp_path, one_epoch):
    save = copy_run(one_epoch, tmp_path)
    before = save.read_bytes()
    proc, _ = train(tmp_path, '--resume', '--lr', '1e30', '--clip', '1e30', epochs=2)
    assert proc.returncode == 1
    assert re.search(r'NaN or infinite in epoch 2, window \d+ of \d+\. The files on disk are '
                     r'unchanged; resume from the last checkpoint with a lower --lr', proc.stderr)
    assert save.read_bytes() == before


@pytest.mark.parametrize('lr, loss', [('1e38', 'nan'), ('1e30', r'\d\S*e\+\d+')])
def test_a_divergence_in_the_last_step_of_an_epoch_keeps_the_last_good_checkpoint(tmp_path, lr,
                                                                                loss):
    """One window an epoch (36 tokens): the step after it ruins the weights, and no training
    loss sees it. At --lr 1e38 they turn infinite and validation is NaN; at 1e30 they stay
    finite, and the validation loss is near 1e30, whose perplexity overflows: a ruined model
    too, which saved would be the checkpoint that every later advice resumes from. The run
    stops before anything of the epoch is saved (no row, no checkpoint) and prints the
    command that goes on with another --lr."""
    corpus = write_corpus(tmp_path / 'corpus', (PATTERN + '\n') * 3 + 'one two three four\n')
    first, _ = train(tmp_path, epochs=1, corpus=corpus)
    assert first.returncode == 0, first.stderr
    files = snapshot(tmp_path)
    diverged, _ = train(tmp_path, '--resume', '--lr', lr, epochs=2, corpus=corpus)
    assert diverged.returncode == 1, diverged.stderr
    assert 'Traceback' not in diverged.stderr and 'inf' not in diverged.stdout
    assert re.search(f'the model diverged: its validation loss is {loss} at the end',
                     diverged.stderr), diverged.stderr
    assert snapshot(tmp_path) == files  # the epoch-1 checkpoints and CSV, untouched
    command = diverged.stderr.split(': python demo_tie.py ')[1].split()
    assert command[-4:] == ['--resume', str(tmp_path / 'model.last.pt'), '--lr',
                            f'{float(lr) / 2:g}']
    # in this process the command line is empty: the flags given above are added back
    resumed = run_main('demo_tie.py', '--data_dir', corpus, '--epochs', 2, *command[:-2],
                       '--lr', '0.01')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Epoch: 2,' in resumed.stdout


def test_missing_data_folder_says_run_getdata(tmp_path):
    fails(run_main('demo_tie.py', '--data_dir', tmp_path / 'nope', '--save_path',
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


def test_a_validation_split_smaller_than_the_batch_names_the_flags_given(tmp_path):
    write_corpus(tmp_path / 'c', (PATTERN + '\n') * 100, PATTERN + '\n')  # valid: 10 tokens
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'c', '--save_path', tmp_path / 'm.pt',
                    '--batch_size', '8', '--seq_length', '5')
    fails(proc, r'valid split is too small: 10 tokens, but its --batch_size 8 rows need 16 '
                r'\(two tokens each\); use a smaller --batch_size')
    assert '--seq_length 1' not in proc.stderr


def test_untied_model_trains_too(tmp_path):
    pattern_corpus(tmp_path / 'c')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'c', '--embed_size', '8',
                    '--hidden_size', '16', '--num_layers', '2', '--batch_size', '4',
                    '--seq_length', '8', '--epochs', '1', '--save_path', tmp_path / 'u.pt')
    assert proc.returncode == 0, proc.stderr
    assert 'LSTM(8, 16, num_layers=2, batch_first=True, dropout=0.5)' in proc.stdout
    assert not torch.load(tmp_path / 'u.pt', weights_only=True)['model_args']['tied']


def test_vocabulary_options_print_how_many_training_words_became_unk(tmp_path):
    write_corpus(tmp_path / 'c', (PATTERN + '\n') * 200 + 'rare words here\n')
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'c', *TINY, '--tied', '--epochs', '1',
                    '--min_count', '2', '--save_path', tmp_path / 'm.pt')
    assert proc.returncode == 0, proc.stderr
    assert 'Vocabulary size: 12' in proc.stdout  # the 8 pattern words, 3 specials, <unk>
    assert re.search(r'Words not in the vocabulary, read as <unk>: train 3 \(0\.\d+% of its '
                     r'tokens\)', proc.stdout)
    vocab = torch.load(tmp_path / 'm.pt', weights_only=True)['vocab']
    assert 'rare' not in vocab and '<unk>' in vocab


def test_a_vocabulary_cap_with_no_room_for_words_is_refused(tmp_path):
    fails(run_main('demo_tie.py', '--max_vocab', '3', '--data_dir', tmp_path),
          r'--max_vocab 3 leaves no room for words', status=2)


@pytest.mark.parametrize('flags, named', [
    (['--al_weight', '1e30', '--al_temperature', '20'], '--al_weight 1e+30 --al_temperature 20'),
    (['--init_range', '1'], '--init_range 1'),
])
def test_the_advice_after_a_divergence_names_the_flags_that_scale_the_loss(tmp_path, flags,
                                                                           named):
    proc, _ = train(tmp_path, *flags, '--lr', '1e30', epochs=1)
    assert proc.returncode == 1, proc.stderr
    assert f'this run also has {named}, which can make the loss diverge' in proc.stderr
    assert proc.stderr.count('\n') == 1 and 'Traceback' not in proc.stderr


FROZEN = ['--optimizer', 'sgd', '--lr', '1e-30']  # steps too small to move a float32 weight:
# every epoch validates exactly as the first, so none betters it


def test_early_stopping_ends_after_n_epochs_without_a_better_validation_and_tests(tmp_path):
    proc, _ = train(tmp_path, *FROZEN, '--early_stop', '2', epochs=6)
    assert proc.returncode == 0, proc.stderr
    assert 'Epoch: 3,' in proc.stdout and 'Epoch: 4,' not in proc.stdout
    assert re.search(r'^Early stopping: 2 epochs without a better validation perplexity than '
                     r'\d+\.\d{4}$', proc.stdout, re.MULTILINE)
    assert printed_test_lines(proc)  # the best model is tested, as at a normal end
    assert [row['epoch'] for row in read_metrics(tmp_path / 'model.csv')] == [1, 2, 3]


def test_early_stopping_counts_on_exactly_across_a_stop_in_mid_epoch(tmp_path):
    whole, _ = train(tmp_path / 'whole', *FROZEN, '--early_stop', '2', epochs=6)
    stopped, _ = train(tmp_path / 'stopped', *FROZEN, '--early_stop', '2', epochs=6,
                       on_window=signal_at(3, 20))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    resumed = run_main('demo_tie.py', '--data_dir', tmp_path / 'stopped' / 'corpus',
                       '--save_path', tmp_path / 'stopped' / 'model.pt', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    early = [line for line in whole.stdout.splitlines() if line.startswith('Early stopping')]
    assert early and early == [line for line in resumed.stdout.splitlines()
                               if line.startswith('Early stopping')]
    assert 'Epoch: 3,' in resumed.stdout and 'Epoch: 4,' not in resumed.stdout
    assert printed_test_lines(resumed) == printed_test_lines(whole)


def test_without_early_stop_every_epoch_runs(tmp_path):
    proc, _ = train(tmp_path, *FROZEN, epochs=4)
    assert proc.returncode == 0 and 'Epoch: 4,' in proc.stdout
    assert 'Early stopping' not in proc.stdout
