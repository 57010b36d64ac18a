"""Inan et al.'s augmented loss (--al_weight, --al_temperature): the term against its formula,
off when its weight is 0, and through the real trainer."""
import re

import pytest
import torch

from conftest import printed_test_lines, run_main, states_equal, train
from lm.loss import augmented_loss


def test_the_augmented_loss_and_its_gradient_are_the_formula():
    """tau x mean KL(y~ || y^), whose gradient with respect to the logits is (y^ - y~) / N;
    by default the gradient reaches the embedding through y~ too, else y~ is a constant.
    More targets than words, so that words repeat, as they do in every window."""
    torch.manual_seed(0)
    n, vocab, dim, tau = 12, 7, 4, 3.0
    bias, targets = torch.randn(vocab), torch.randint(0, vocab, (n,))
    logits, embedding = torch.randn(n, vocab), torch.randn(vocab, dim)

    def direct(logits, embedding):
        predicted = torch.softmax((logits - bias) / tau, dim=1)
        estimated = torch.softmax(embedding[targets] @ embedding.t() / tau, dim=1)
        return tau * (estimated * (estimated.log() - predicted.log())).sum(1).mean()

    expected_logits, expected_embedding = torch.autograd.functional.jacobian(
        direct, (logits, embedding))
    for through in (True, False):
        z, table = logits.clone().requires_grad_(), embedding.clone().requires_grad_()
        call = {} if through else {'through_target': False}  # through by default
        value = augmented_loss(z, bias, table, targets, tau, **call)
        assert value.item() == pytest.approx(direct(logits, embedding).item(), rel=1e-5)
        value.backward()
        assert torch.allclose(z.grad, expected_logits, atol=1e-6)
        if through:
            assert torch.allclose(table.grad, expected_embedding, atol=1e-6)
        else:
            assert table.grad is None


def test_an_al_weight_of_0_trains_exactly_as_without_the_flag(tmp_path, trained):
    proc, save = train(tmp_path, '--al_weight', '0', '--al_temperature', '3')
    assert proc.returncode == 0, proc.stderr
    assert printed_test_lines(proc) == printed_test_lines(trained['proc'])
    assert states_equal(save, trained['checkpoint'])


def test_the_augmented_loss_trains_learns_and_is_recorded(tmp_path, trained):
    proc, save = train(tmp_path, '--al_weight', '0.5', '--al_temperature', '2')
    assert proc.returncode == 0, proc.stderr
    ppl = float(re.findall(r'Validation Perplexity: (\d+\.\d+)', proc.stdout)[-1])
    assert ppl < 2.0  # the pattern corpus is learnt
    assert not states_equal(save, trained['checkpoint'])  # the term changed the steps
    args = torch.load(save, weights_only=True)['args']
    assert (args['al_weight'], args['al_temperature']) == (0.5, 2.0)
    assert args['al_through_target']  # y~ passes the gradient unless told not to
    refused = run_main('demo_tie.py', '--tied', '--al_temperature', '0', '--save_path',
                       tmp_path / 'x.pt')
    assert refused.returncode == 2 and '--al_temperature' in refused.stderr


def test_the_augmented_loss_gradient_repeats_bit_for_bit_on_two_threads():
    """Runs with AL repeat exactly: the gradient that reaches the embedding through the target
    sums in the same order every time. Many targets of one word, so that two threads adding
    into one row in any order would show."""
    torch.manual_seed(0)
    n, vocab, dim, tau = 4096, 8, 32, 2.0
    logits, bias, embedding = torch.randn(n, vocab), torch.randn(vocab), torch.randn(vocab, dim)
    targets = torch.zeros(n, dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(20):
            table = embedding.clone().requires_grad_()
            augmented_loss(logits, bias, table, targets, tau).backward()
            grads.append(table.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], grad) for grad in grads[1:])
