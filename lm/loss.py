"""The training objective, here alone: the cross-entropy of the next word plus the opt-in
terms that are minimised with it. The trainer, the benchmark and the tests all step on
`Objective`; the scorer, the evaluator and the adaptive methods use `cross_entropy`, the one
token loss of all of them.
"""
from dataclasses import dataclass, fields

import torch.nn.functional as F


@dataclass(frozen=True)
class Objective:
    """What one training window minimises, built once from the flags (`from_flags`). Each
    field is the flag of the same name in lm/flags.py, and each term is off at 0. A new term
    is a flag there, a field here and one branch in __call__."""
    alpha: float = 0.0                # AR and TAR (AWD-LSTM; see activation_penalty)
    beta: float = 0.0
    proj_reg: float = 0.0             # the projection's squared norm (Press & Wolf)
    al_weight: float = 0.0            # Inan et al.'s augmented loss (see augmented_loss)
    al_temperature: float = 10.0
    al_through_target: bool = True

    @classmethod
    def from_flags(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def __call__(self, model, forward, x, y, hidden):
        """(cross-entropy, the objective to minimise, the next hidden state) of the window
        x -> y; `forward` is the model or a wrapper of it (compiled, DDP). The logits are not
        returned: the graph keeps the log-probabilities it needs, so that the logits are freed
        before backward makes the gradient (a logits' size off the peak)."""
        regularize = bool(self.alpha or self.beta)
        if regularize:
            logits, hidden, output, dropped = forward(x, hidden, with_outputs=True)
        else:
            logits, hidden = forward(x, hidden)
        loss = cross_entropy(logits, y)
        objective = loss
        if regularize:
            objective = objective + activation_penalty(output, dropped, self.alpha, self.beta)
        if self.proj_reg:
            objective = objective + self.proj_reg * model.projection.weight.pow(2).sum()
        if self.al_weight:
            objective = objective + self.al_weight * augmented_loss(
                logits, model.fc.bias, model.embedding.weight, y, self.al_temperature,
                self.al_through_target)
        return loss, objective, hidden


def cross_entropy(logits, targets, reduction='mean'):
    """The loss of each target (`reduction` 'none'), or their mean: logits (..., vocab) and
    targets (...) of the same leading shape, computed in float32 whatever precision autocast
    gave the logits."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           reduction=reduction)


def activation_penalty(output, dropped, alpha, beta):
    """AWD-LSTM's activation regularisation on the last LSTM layer's output (batch, time,
    hidden): AR, alpha x the mean square of the output after dropout (keeps activations
    small), plus TAR, beta x the mean square of the step-to-step change of the output before
    dropout (keeps the hidden state slow)."""
    penalty = output.new_zeros(())
    if alpha:
        penalty = penalty + alpha * dropped.float().pow(2).mean()
    if beta:
        penalty = penalty + beta * (output[:, 1:] - output[:, :-1]).float().pow(2).mean()
    return penalty


def augmented_loss(logits, bias, embedding, targets, tau, through_target=True):
    """Inan et al.'s augmented loss (AL), averaged over the targets: tau x KL(y~ || y^), with
    y^ = softmax((logits - bias) / tau), the prediction tempered without the decoder bias,
    and y~ = softmax(L u / tau), the target estimated from the input embedding L (the rows of
    `embedding`) by inner products with the target word's own vector u. Their gradient
    analysis scales the term by tau, so that tau does not shrink its gradient.

    With `through_target` the gradient also reaches L through y~, which keeps L in check: y~
    sharpens as a word's vector grows (u.u / tau), and a y~ held constant is a target that
    recedes as the prediction chases it, so the vectors of frequent, predictable targets keep
    growing (docs/papers.md). Only (targets x vocabulary) tensors, never vocabulary x
    vocabulary."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    if bias is not None:  # None: a decoder without a bias (--no-decoder_bias)
        flat = flat - bias.float()
    log_predicted = F.log_softmax(flat / tau, dim=-1)
    table = embedding if through_target else embedding.detach()
    # y~ depends on the target word alone, and a window holds each word about twice (PTB,
    # 20 x 35): it is computed once per distinct word and looked up for each target. Lookups,
    # not indexing: indexing's gradient is summed by atomic adds from several CPU threads in
    # any order, and runs with AL would not repeat bit for bit.
    words, which = targets.reshape(-1).unique(return_inverse=True)
    u = F.embedding(words, table)
    log_estimated = F.embedding(which, F.log_softmax((u @ table.t()).float() / tau, dim=-1))
    return tau * F.kl_div(log_predicted, log_estimated, log_target=True, reduction='batchmean')
