"""Press & Wolf's projection (--projection) and its regularisation (--proj_reg): a tied
model of any two sizes, through the real scripts, and the penalty's gradient by formula."""
import copy

import pytest
import torch

import data
from conftest import (
    TINY,
    check_the_scripts_read_it,
    printed_test_lines,
    run_main,
    run_whole_and_interrupted,
    states_equal,
)
from lm.loop import Stepping, train_epoch
from lm.loss import Objective
from model import LSTMLanguageModel, count_parameters

UNEQUAL = ['--embed_size', '8', '--projection']  # after TINY's --hidden_size 16


def test_a_tied_model_of_unequal_sizes_trains_resumes_evaluates_generates_and_scores(tmp_path):
    whole, resumed = run_whole_and_interrupted(tmp_path, *UNEQUAL, '--proj_reg', '0.01')
    assert printed_test_lines(resumed) == printed_test_lines(whole)
    assert states_equal(tmp_path / 'stopped' / 'model.last.pt', tmp_path / 'model.last.pt')
    assert '(projection): Linear(in_features=16, out_features=8, bias=True)' in whole.stdout
    ckpt = torch.load(tmp_path / 'model.pt', weights_only=True)
    assert ckpt['model_args']['projection'] and ckpt['model_state']['fc.weight'].shape[1] == 8
    check_the_scripts_read_it(tmp_path, whole)


def test_the_projection_adds_its_matrix_and_bias_to_the_parameters():
    plain = LSTMLanguageModel(30, 16, 16, 1, 0.0, True)
    projected = LSTMLanguageModel(30, 16, 16, 1, 0.0, True, projection=True)
    assert count_parameters(projected) == count_parameters(plain) + 16 * 16 + 16
    assert count_parameters(LSTMLanguageModel(30, 8, 16, 1, 0.0, True, projection=True)) == (
        30 * 8 + 4 * 16 * (8 + 16 + 2) + 16 * 8 + 8 + 30)  # embedding, LSTM, P and b_P, bias


def test_proj_reg_adds_twice_its_weight_times_p_to_the_gradient():
    """One SGD step of rate 1 with --proj_reg r and without: P differs by exactly 2 r P."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(20, 8, 16, 1, 0.0, True, projection=True)
    batched = data.batchify(torch.randint(3, 20, (4 * 9,)), 4)
    windows = data.fixed_windows(batched, 8)
    before = model.projection.weight.detach().clone()
    stepped = {}
    for reg in (0.0, 0.05):
        copy_ = copy.deepcopy(model)
        opt = torch.optim.SGD(copy_.parameters(), lr=1.0)
        train_epoch(copy_, batched, windows,
                    Stepping(opt, clip=1e9, objective=Objective(proj_reg=reg)))
        stepped[reg] = copy_.projection.weight.detach()
    assert torch.allclose(stepped[0.0] - stepped[0.05], 2 * 0.05 * before, atol=1e-6)


@pytest.mark.parametrize('flags, message', [
    (['--embed_size', '8'], 'or --projection'),
    (['--proj_reg', '0.1'], '--proj_reg penalises the matrix of --projection'),
    (['--proj_reg', '-1', '--projection'], "--proj_reg: -1"),
])
def test_flags_that_cannot_hold_are_refused_in_one_line(tmp_path, flags, message):
    proc = run_main('demo_tie.py', *TINY, '--tied', *flags, '--save_path', tmp_path / 'm.pt')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert message in proc.stderr.splitlines()[-1]


def test_a_model_without_the_projection_is_described_and_printed_as_before(trained):
    ckpt = torch.load(trained['checkpoint'], weights_only=True)
    assert 'projection' not in ckpt['model_args'] and '(projection)' not in trained['proc'].stdout
