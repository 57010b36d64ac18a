"""lm/loop.py: one epoch of training and evaluation, as the trainer, the scorer and the bench
run them."""
import contextlib
import copy
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

import data
from bench import example_train
from conftest import LOGPROB_TOL, TRAINED_TOL
from lm.device import cpu_has_native_bfloat16
from lm.loop import Stepping, evaluate, perplexity, train_epoch
from lm.loss import activation_penalty
from lm.optim import WeightAverage, make_optimizer, window_lr_factors
from lm.rng import seed_everything
from model import LSTMLanguageModel


def small_model(seed=0):
    torch.manual_seed(seed)
    return LSTMLanguageModel(vocab_size=20, embed_size=8, hidden_size=8, num_layers=2,
                             dropout=0.0, tied=True)


@pytest.mark.parametrize('tied', [True, False])
def test_optimised_loop_gives_the_losses_of_the_plain_loop(tied):
    seed_everything(0)
    stream = torch.randint(3, 60, (4 * 61,))
    batched = data.batchify(stream, 4)  # 60 steps: 10 windows of 6
    fast = LSTMLanguageModel(60, 16, 16, 2, 0.3, tied)
    plain = copy.deepcopy(fast)
    fast_opt = make_optimizer(fast, 0.01, 1e-5)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=0.01, weight_decay=1e-5, foreach=True)

    torch.manual_seed(7)  # the same dropout masks for both
    fast_losses = train_epoch(fast, batched, data.fixed_windows(batched, 6),
                              Stepping(fast_opt, clip=0.5)).losses.tolist()
    torch.manual_seed(7)
    plain_losses = example_train(plain, batched, plain_opt, 6, 0.5)

    assert len(fast_losses) == len(plain_losses) == 10
    assert fast_losses == pytest.approx(plain_losses, abs=TRAINED_TOL)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    assert (fast.fc.weight is fast.embedding.weight) == tied


def test_bfloat16_autocast_losses_stay_close_to_float32():
    """bfloat16 keeps 8 significant bits, so each product's inputs are rounded by up to
    2**-9 (0.2%) relative; the loss, an average over the window, moves by much less than
    that in relative terms as long as training has not diverged. 1% over the first 12
    windows is a bound that a wrong cast (float16 overflow, an unscaled gradient, weights
    kept in bfloat16) would break, while rounding noise stays well inside it.

    Where the CPU lacks native bfloat16, oneDNN has no bfloat16 LSTM at all ("could not
    create a primitive descriptor"), which is one more reason --amp trains in float32 there;
    the test then turns oneDNN off, so that the LSTM runs in float32 and the decoder's
    products in (emulated) bfloat16."""
    seed_everything(0)
    stream = torch.arange(3, 23).repeat(60)[:8 * 145]  # a learnable sequence: losses fall
    batched = data.batchify(stream, 8)  # 145 steps: 12 windows of 12
    reference = LSTMLanguageModel(23, 32, 32, 2, 0.0, True)
    amp = copy.deepcopy(reference)
    losses = {}
    onednn = (contextlib.nullcontext() if cpu_has_native_bfloat16()
              else torch.backends.mkldnn.flags(enabled=False))
    with onednn:
        for name, model, dtype in (('float32', reference, None), ('bfloat16', amp, torch.bfloat16)):
            opt = make_optimizer(model, 0.01, 1e-5)
            losses[name] = train_epoch(model, batched, data.fixed_windows(batched, 12),
                                       Stepping(opt, clip=0.5,
                                                autocast_dtype=dtype)).losses.tolist()
            assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    assert losses['float32'][-1] < losses['float32'][0] - 0.1  # it learns: the check means a lot
    assert losses['bfloat16'] == pytest.approx(losses['float32'], rel=0.01)
    assert losses['bfloat16'] != losses['float32']  # autocast did change the arithmetic


def test_the_weight_average_is_the_mean_of_the_weights_after_each_step():
    """SGD + WeightAverage through train_epoch: the average is the plain mean of the weights
    the model held after each of the epoch's steps (recorded here after every window)."""
    stream = data.batchify(torch.randint(0, 20, (4 * 61,)), 4)
    model = small_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=1e-4)
    average = WeightAverage(model)
    after_each_step = []
    train_epoch(model, stream, data.fixed_windows(stream, 6),
                Stepping(sgd, clip=5.0, weight_average=average),
                on_window=lambda k, loss: after_each_step.append(
                    copy.deepcopy(dict(model.named_parameters()))))
    assert average.count == len(after_each_step) == len(data.fixed_windows(stream, 6)) == 10
    for name, p in model.named_parameters():
        mean = torch.stack([weights[name].detach() for weights in after_each_step]).mean(0)
        assert torch.allclose(average.mean[name], mean, atol=1e-6), name
    assert any(not torch.allclose(average.mean[name], p, atol=1e-3)  # a mean, not the last
               for name, p in model.named_parameters())


def test_each_step_takes_its_windows_learning_rate_factor():
    """The learning rate the optimizer actually steps with, seen from inside its step."""
    stream = data.batchify(torch.randint(0, 20, (4 * 25,)), 4)
    model = small_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    sgd.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]['lr']))
    train_epoch(model, stream, data.fixed_windows(stream, 6), Stepping(sgd, clip=5.0),
                lr_factors=[0.5, 1.0, 0.25, 2.0])
    assert seen == pytest.approx([0.05, 0.1, 0.025, 0.2])
    assert sgd.param_groups[0]['lr'] == 0.1  # the optimizer's own rate is left as it was


def test_a_variable_window_steps_with_the_learning_rate_scaled_by_its_length():
    """Plain SGD makes the step visible: after one window of length 12 with --seq_length 8,
    every weight moved by lr x 12/8 x its gradient, and the optimizer's lr is left as it was."""
    torch.manual_seed(6)
    model = LSTMLanguageModel(20, 6, 6, 1, 0.0, True)
    stream = torch.randint(0, 20, (3, 13))
    reference = LSTMLanguageModel(20, 6, 6, 1, 0.0, True)
    reference.load_state_dict(model.state_dict())
    x, y = data.get_window(stream, 0, 12)
    logits, _ = reference(x, reference.init_hidden(3))
    F.cross_entropy(logits.reshape(-1, 20), y.reshape(-1)).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, stream, [(0, 12)], Stepping(optimizer, clip=1e9),
                lr_factors=window_lr_factors([(0, 12)], 8, epoch=1, epochs=1, by_length=True))
    assert optimizer.param_groups[0]['lr'] == 0.1
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q - 0.1 * 12 / 8 * q.grad, atol=1e-6), name


def test_activation_penalties_are_ar_and_tar():
    output = torch.tensor([[[1.0, 2.0], [3.0, 2.0], [3.0, 4.0]]])   # (1 sequence, 3 steps, 2 units)
    dropped = torch.tensor([[[0.0, 4.0], [6.0, 0.0], [6.0, 8.0]]])
    ar = (16 + 36 + 36 + 64) / 6
    tar = ((2 ** 2 + 0 ** 2) + (0 ** 2 + 2 ** 2)) / 4
    assert activation_penalty(output, dropped, 2.0, 0.0).item() == pytest.approx(2 * ar)
    assert activation_penalty(output, dropped, 0.0, 3.0).item() == pytest.approx(3 * tar)
    assert activation_penalty(output, dropped, 2.0, 3.0).item() == pytest.approx(2 * ar + 3 * tar)


def test_evaluation_scores_every_token_once_whatever_the_window():
    """Hidden state is carried across windows, so cutting the stream into windows of any
    length must give the same loss as one window over the whole stream."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(20, 8, 8, 2, 0.0, True)
    batched = data.batchify(torch.randint(3, 20, (4 * 37,)), 4)
    whole = evaluate(model, batched, 36)
    for seq_length in (5, 7, 35):
        assert evaluate(model, batched, seq_length) == pytest.approx(whole, abs=LOGPROB_TOL)


def test_loss_without_sos_leaves_out_exactly_the_sos_targets():
    torch.manual_seed(0)
    model = LSTMLanguageModel(10, 8, 8, 1, 0.0, False)
    batched = data.batchify(torch.tensor([1, 4, 5, 2, 1, 6, 2, 1, 7, 8, 9, 2] * 3), 2)
    loss_all, loss_no_sos = evaluate(model, batched, 4)
    logits, _ = model(batched[:, :-1], model.init_hidden(2))
    nll = F.cross_entropy(logits.reshape(-1, 10), batched[:, 1:].reshape(-1), reduction='none')
    keep = batched[:, 1:].reshape(-1) != data.SOS
    assert loss_all == pytest.approx(nll.mean().item(), abs=LOGPROB_TOL)
    assert loss_no_sos == pytest.approx(nll[keep].mean().item(), abs=LOGPROB_TOL)


def test_perplexity_is_infinite_past_overflow_and_nan_stays_nan():
    assert perplexity(math.log(120.0)) == pytest.approx(120.0)
    assert perplexity(800.0) == float('inf')
    assert math.isnan(perplexity(float('nan')))  # a NaN loss is never shown as inf


def test_the_scores_are_freed_before_the_backward_pass():
    """The window's scores (batch x window x vocabulary floats, the largest tensor of a step)
    are not kept through the backward pass, which makes gradients as large again: the loss
    keeps what it needs (its log-probabilities) and the scores go before backward starts."""
    model = small_model()
    batched = data.batchify(torch.randint(3, 20, (4 * 25,)), 4)
    scores, alive_in_backward = [], []

    def forward(x, hidden):
        logits, hidden = model(x, hidden)
        scores.append(weakref.ref(logits))
        return logits, hidden
    model.fc.bias.register_hook(lambda grad: alive_in_backward.append(scores[-1]() is not None))
    train_epoch(model, batched, data.fixed_windows(batched, 6),
                Stepping(make_optimizer(model, 0.01, 0.0), clip=1.0, forward=forward))
    assert alive_in_backward == [False] * 4
