"""Inan et al.'s configuration: the dropout of the hidden state (--dropout_recurrent, an LSTM
that steps through time in training) and reused embeddings with a zero output bias
(--no-decoder_bias), checked against the fused LSTM and through the real scripts."""
import pytest
import torch
from torch import nn

from conftest import (
    LOGPROB_TOL,
    TINY,
    check_the_scripts_read_it,
    printed_test_lines,
    run_main,
    run_whole_and_interrupted,
    states_equal,
)
from model import LSTMLanguageModel, lstm_steps


def test_the_stepped_lstm_without_a_mask_is_the_fused_lstm_outputs_and_gradients():
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, 1, batch_first=True)
    x = torch.randn(3, 7, 6, requires_grad=True)
    h0, c0 = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    fused, (h, c) = lstm(x, (h0, c0))
    stepped, (h_s, c_s) = lstm_steps(lstm, x, (h0[0], c0[0]), torch.ones(3, 5))
    for a, b in ((fused, stepped), (h[0], h_s), (c[0], c_s)):
        assert torch.allclose(a, b, atol=LOGPROB_TOL, rtol=0)
    grads = [torch.autograd.grad(out.pow(2).sum() + hn.sum(), [x, *lstm.parameters()])
             for out, hn in ((fused, h[0]), (stepped, h_s))]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=LOGPROB_TOL, rtol=0)


def test_each_row_keeps_one_mask_for_the_whole_window_and_each_layer_its_own():
    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 8, 16, 2, 0.0, False, dropout_recurrent=0.5)
    model.train()
    x = torch.randint(3, 30, (6, 9))
    _, _, output, dropped = model(x, model.init_hidden(6), with_outputs=True)
    zero = dropped == 0
    assert zero.any() and torch.equal(zero, zero[:, :1].expand_as(zero))  # the same each step
    assert not torch.equal(zero[0], zero[1])                              # rows differ
    kept = ~zero
    assert torch.allclose(dropped[kept], 2 * output[kept])                # scaled by 1/(1-p)
    # h(t-1) is dropped too: the output differs from the fused LSTM's on the same input
    model.eval()
    fused, _ = model(x, model.init_hidden(6))
    model.train()
    stepped, _ = model(x, model.init_hidden(6))
    assert not torch.allclose(stepped, fused, atol=1e-3)


def test_evaluation_has_no_dropout_and_runs_the_fused_kernel():
    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 8, 16, 2, 0.4, False, dropout_recurrent=0.4).eval()
    x = torch.randint(3, 30, (2, 5))
    first, _ = model(x, model.init_hidden(2))
    second, _ = model(x, model.init_hidden(2))
    assert torch.equal(first, second)


@pytest.mark.parametrize('flags', [
    ['--dropout_recurrent', '0.3', '--dropouti', '0'],
    ['--dropout_recurrent', '0.3', '--variational', '--wdrop', '0.2', '--no-decoder_bias',
     '--al_weight', '0.5', '--al_temperature', '20'],
])
def test_a_run_with_them_resumes_bit_for_bit_evaluates_generates_and_scores(tmp_path, flags):
    whole, resumed = run_whole_and_interrupted(tmp_path, *flags)
    assert printed_test_lines(resumed) == printed_test_lines(whole)
    assert states_equal(tmp_path / 'stopped' / 'model.last.pt', tmp_path / 'model.last.pt')
    ckpt = torch.load(tmp_path / 'model.pt', weights_only=True)
    assert ckpt['model_args']['dropout_recurrent'] == 0.3
    assert ('fc.bias' in ckpt['model_state']) == ('--no-decoder_bias' not in flags)
    check_the_scripts_read_it(tmp_path, whole)


def test_a_decoder_without_bias_has_none_and_the_recurrent_rate_is_checked(tmp_path):
    """Inan et al.'s reused embeddings: W = L^T and a zero output bias, for the whole run."""
    model = LSTMLanguageModel(30, 16, 16, 1, 0.0, True, decoder_bias=False)
    assert model.fc.bias is None and model.fc.weight is model.embedding.weight
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'none', *TINY, '--tied',
                    '--no-decoder_bias', '--dropout_recurrent', '1.5')
    assert proc.returncode == 2 and 'argument --dropout_recurrent' in proc.stderr
