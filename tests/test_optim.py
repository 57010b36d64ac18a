"""The optimiser options beyond the reference's Adam (lm/optim.py): --optimizer sgd and ntasgd
(SGD, then the mean of the weights from the epoch NT-ASGD's trigger picks), and the
learning-rate schedules (--schedule cosine, --warmup)."""
import copy
import csv
import itertools
import math
import random

import pytest
import torch

import data
from conftest import (
    printed_test_lines,
    run_main,
    run_whole_and_interrupted,
    states_equal,
    tiny_flags,
    write_corpus,
)
from lm.checkpoint import build_model
from lm.loop import evaluate
from lm.optim import WeightAverage, averaging_should_start, window_lr_factors
from model import LSTMLanguageModel

# the trainer's own rate and dropout
SMALL = [*tiny_flags(num_layers=2, lr=0.001, dropout=0.5), '--tied']


def test_in_use_puts_the_mean_in_and_the_weights_back():
    torch.manual_seed(0)
    model = LSTMLanguageModel(20, 8, 8, 2, 0.0, True)
    own = copy.deepcopy(model.state_dict())
    average = WeightAverage(model)
    for name in average.mean:
        average.mean[name] = torch.randn_like(average.mean[name])
    with average.in_use(model):
        for name, p in model.named_parameters():
            assert torch.equal(p, average.mean[name])
    for name, t in model.state_dict().items():
        assert torch.equal(t, own[name])


@pytest.mark.parametrize('val_losses, val_loss, nonmono, starts', [
    ([5.0, 4.0, 3.0], 2.9, 1, False),       # still improving
    ([5.0, 4.0, 3.0], 4.5, 1, True),        # worse than 4.0, the best before the last epoch
    ([3.0, 4.0, 5.0], 4.5, 2, True),        # worse than epoch 1, the best before the last 2
    ([5.0, 3.0, 4.0], 4.5, 2, False),       # the best (epoch 2) is within the last 2: wait
    ([3.0, 4.0], 5.0, 2, False),            # not yet more than 2 earlier epochs
])
def test_averaging_starts_when_the_last_nonmono_epochs_brought_nothing(val_losses, val_loss,
                                                                       nonmono, starts):
    assert averaging_should_start(val_losses, val_loss, nonmono) == starts


@pytest.fixture(scope='module')
def overfitting_corpus(tmp_path_factory):
    """Training text that repeats one 12-word cycle, validation text of random words: with a
    large learning rate the validation loss soon rises, and NT-ASGD's trigger fires."""
    rng = random.Random(0)
    words = [f'w{i}' for i in range(12)]
    train = ''.join(' '.join(words[(j + k) % 12] for k in range(8)) + '\n' for j in range(300))
    valid = ''.join(' '.join(rng.choice(words) for _ in range(8)) + '\n' for _ in range(40))
    return write_corpus(tmp_path_factory.mktemp('overfit'), train, valid, valid)


@pytest.fixture(scope='module')
def ntasgd_runs(overfitting_corpus, tmp_path_factory):
    """NT-ASGD with a trigger after one bad epoch: 5 epochs whole, and 4 epochs (averaging
    under way) that tests resume."""
    folder = tmp_path_factory.mktemp('ntasgd')
    flags = ['--data_dir', overfitting_corpus, *SMALL, '--optimizer', 'ntasgd', '--lr', '2',
             '--nonmono', '1']
    whole = run_main('demo_tie.py', *flags, '--epochs', '5', '--save_path', folder / 'whole.pt')
    assert whole.returncode == 0, whole.stderr
    part = run_main('demo_tie.py', *flags, '--epochs', '4', '--save_path', folder / 'part.pt')
    assert part.returncode == 0, part.stderr
    return folder, whole


def test_ntasgd_averages_from_the_epoch_its_trigger_picks_and_resumes_exactly(
        overfitting_corpus, ntasgd_runs, tmp_path):
    folder, whole = ntasgd_runs
    with open(folder / 'whole.csv') as f:
        vals = [float(row['val_loss']) for row in csv.DictReader(f)]
    trigger = next(e for e in range(1, 6) if averaging_should_start(vals[:e - 1], vals[e - 1], 1))
    assert trigger < 5
    assert f'Averaging the weights from epoch {trigger + 1} on' in whole.stdout

    last = torch.load(folder / 'whole.last.pt', weights_only=True)
    corpus = data.load_corpus(overfitting_corpus)
    windows_per_epoch = len(data.fixed_windows(data.batchify(corpus.train, 4), 8))
    assert last['weight_average']['count'] == windows_per_epoch * (5 - trigger)
    assert last['val_losses'] == pytest.approx(vals, abs=1e-6)
    # the validation printed after averaging began is the mean's, not the weights'
    model = build_model(last)
    average = WeightAverage(model)
    average.load_state_dict(last['weight_average'])
    valid = data.batchify(corpus.valid, 4)
    with average.in_use(model):
        assert evaluate(model, valid, 8)[0] == pytest.approx(vals[-1], abs=1e-5)
    assert evaluate(model, valid, 8)[0] != pytest.approx(vals[-1], abs=1e-3)

    # cut after epoch 4 (averaging under way), resumed: the same run
    for name in ('part.pt', 'part.last.pt', 'part.csv'):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    assert torch.load(tmp_path / 'part.last.pt', weights_only=True)['weight_average'] is not None
    rest = run_main('demo_tie.py', '--resume', '--epochs', '5', '--data_dir', overfitting_corpus,
                    '--save_path', tmp_path / 'part.pt')
    assert rest.returncode == 0, rest.stderr
    resumed = torch.load(tmp_path / 'part.last.pt', weights_only=True)
    for name, t in last['model_state'].items():
        assert torch.equal(resumed['model_state'][name], t), name
    for name, t in last['weight_average']['mean'].items():
        assert torch.equal(resumed['weight_average']['mean'][name], t), name
    assert resumed['weight_average']['count'] == last['weight_average']['count']


def test_a_damaged_weight_average_is_refused_on_resume(tmp_path, overfitting_corpus, ntasgd_runs):
    folder, _ = ntasgd_runs
    for name in ('part.pt', 'part.csv'):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    ckpt = torch.load(folder / 'part.last.pt', weights_only=True)
    name = next(iter(ckpt['weight_average']['mean']))
    ckpt['weight_average']['mean'][name] = torch.zeros(3)
    torch.save(ckpt, tmp_path / 'part.last.pt')
    refused = run_main('demo_tie.py', '--resume', '--epochs', '5', '--data_dir',
                       overfitting_corpus, '--save_path', tmp_path / 'part.pt')
    assert refused.returncode == 1 and 'is damaged' in refused.stderr, refused.stderr
    assert 'Traceback' not in refused.stderr


def test_sgd_needs_a_learning_rate_of_its_own(tmp_path):
    proc = run_main('demo_tie.py', '--optimizer', 'sgd', '--tied', '--save_path',
                    tmp_path / 'm.pt')
    assert proc.returncode == 2
    assert '--optimizer sgd needs an --lr' in proc.stderr and 'Traceback' not in proc.stderr


def test_the_optimizer_cannot_change_on_resume(tmp_path, overfitting_corpus):
    flags = ['--data_dir', overfitting_corpus, *SMALL, '--save_path', tmp_path / 'm.pt']
    first = run_main('demo_tie.py', *flags, '--epochs', '1')
    assert first.returncode == 0, first.stderr
    refused = run_main('demo_tie.py', *flags, '--epochs', '2', '--resume', '--optimizer', 'sgd',
                       '--lr', '1')
    assert refused.returncode == 1 and 'made with --optimizer adam' in refused.stderr
    assert 'Traceback' not in refused.stderr


def test_warm_up_rises_linearly_and_cosine_falls_from_one_towards_zero():
    four = [(4 * k, 4) for k in range(4)]  # an epoch of four windows of length 4
    assert window_lr_factors(four, 4, epoch=1, epochs=3) == [1.0] * 4  # the reference: plateau
    # warm-up over half an epoch of four windows: 1/2, 2/2, then the full rate
    assert window_lr_factors(four, 4, epoch=1, epochs=3, warmup=0.5) == [0.5, 1.0, 1.0, 1.0]
    assert window_lr_factors(four, 4, epoch=2, epochs=3, warmup=0.5) == [1.0] * 4
    # cosine over 2 epochs: the first step at the full rate, a quarter of the way (1/2 epoch)
    # (1 + cos(pi/4))/2, half way 1/2, then down towards 0 without reaching it
    first = window_lr_factors(four, 4, epoch=1, epochs=2, schedule='cosine')
    second = window_lr_factors(four, 4, epoch=2, epochs=2, schedule='cosine')
    assert first[0] == 1.0 and first[2] == pytest.approx(0.853553, abs=1e-6)
    assert second[0] == pytest.approx(0.5)
    steps = first + second
    assert all(a > b for a, b in itertools.pairwise(steps)) and steps[-1] > 0
    # both, and variable-length windows on top: a window of 6 takes 6/4 of its factor
    both = window_lr_factors([(0, 6), (6, 2)], 4, epoch=1, epochs=2, schedule='cosine', warmup=1,
                             by_length=True)
    assert both == pytest.approx([0.5 * 1.0 * 6 / 4, 1.0 * (1 + math.cos(math.pi / 4)) / 2 * 2 / 4])


def test_a_cosine_run_prints_its_rate_and_resumes_bit_for_bit_from_mid_epoch(tmp_path):
    """Through the script: each epoch's printed rate is where the schedule stands at its end,
    and a run stopped by SIGTERM in mid-epoch and resumed takes exactly the same steps."""
    whole, resumed = run_whole_and_interrupted(tmp_path, '--schedule', 'cosine', '--warmup', '0.5')
    printed = [line for line in whole.stdout.splitlines() if line.startswith('current lr')]
    assert printed == ['current lr: [0.005]', 'current lr: [0.0]']  # --lr 0.01: half, then 0
    with open(tmp_path / 'model.csv') as f:
        assert [float(row['lr']) for row in csv.DictReader(f)] == [0.005, 0.0]
    assert printed_test_lines(resumed) == printed_test_lines(whole)
    assert states_equal(tmp_path / 'stopped' / 'model.last.pt', tmp_path / 'model.last.pt')


def test_the_step_schedule_multiplies_the_rate_at_the_end_of_each_epoch_from_decay_start():
    """Zaremba's small model: --lr_factor 0.5 from the end of epoch 4 on."""
    two = [(0, 4), (4, 4)]
    per_epoch = [window_lr_factors(two, 4, epoch=e, epochs=13, schedule='step', lr_factor=0.5,
                                   decay_start=4) for e in range(1, 8)]
    assert per_epoch == [[1.0] * 2] * 4 + [[0.5] * 2, [0.25] * 2, [0.125] * 2]


def test_a_step_schedule_run_prints_its_rate_and_resumes_bit_for_bit_from_mid_epoch(tmp_path):
    whole, resumed = run_whole_and_interrupted(tmp_path, '--optimizer', 'sgd', '--lr', '1',
                                               '--schedule', 'step', '--decay_start', '1',
                                               '--lr_factor', '0.5')
    printed = [line for line in whole.stdout.splitlines() if line.startswith('current lr')]
    assert printed == ['current lr: [0.5]', 'current lr: [0.25]']  # what the next epoch runs at
    assert printed_test_lines(resumed) == printed_test_lines(whole)
    assert states_equal(tmp_path / 'stopped' / 'model.last.pt', tmp_path / 'model.last.pt')


@pytest.mark.parametrize('flags, message', [
    (['--schedule', 'step', '--lr_patience', '3'], '--lr_patience belongs to --schedule plateau'),
    (['--decay_start', '4'], '--decay_start belongs to --schedule step'),
    (['--schedule', 'step', '--decay_start', '0'], '--decay_start: 0 is not a positive integer'),
])
def test_flags_of_another_schedule_are_refused(tmp_path, flags, message):
    proc = run_main('demo_tie.py', '--tied', *flags, '--save_path', tmp_path / 'm.pt')
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr


def test_plateau_flags_are_refused_under_the_cosine_schedule(tmp_path):
    proc = run_main('demo_tie.py', '--tied', '--schedule', 'cosine', '--lr_patience', '3',
                    '--save_path', tmp_path / 'm.pt')
    assert proc.returncode == 2
    assert '--lr_factor and --lr_patience belong to --schedule plateau' in proc.stderr
    assert 'Traceback' not in proc.stderr
