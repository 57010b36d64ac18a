"""The loop: one epoch of truncated BPTT, and evaluation. Shared by the trainer, the scorer,
the benchmark and the tests, so all of them run exactly the same loop (the loss: lm/loss.py).
"""
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

import data
from lm.loss import Objective, cross_entropy
from lm.optim import scaled_lr
from model import detach_hidden

REFRESH_EVERY = 50  # windows between reads of the training loss (each read waits for the GPU)


class NonFiniteLoss(Exception):
    def __init__(self, window):
        super().__init__(f'loss is not finite at window {window}')
        self.window = window


class EpochResult(NamedTuple):
    losses: torch.Tensor  # mean loss of each window, on the device; windows not run are 0
    hidden: tuple         # hidden state after the last window run
    next_window: int      # == number of windows when the epoch ran to its end


def perplexity(loss):
    return float('inf') if loss >= 700 else math.exp(loss)  # NaN stays NaN


@dataclass(frozen=True)
class Stepping:
    """How train_epoch takes each step: what stays the same for a whole epoch."""
    optimizer: torch.optim.Optimizer
    clip: float                       # largest gradient norm
    forward: Callable = None          # the model, or its compiled or DistributedDataParallel
                                      # wrapper (default: the model)
    autocast_dtype: torch.dtype = None  # bfloat16 or float16 under --amp
    scaler: object = None             # GradScaler, with float16
    objective: Objective = field(default_factory=Objective)  # the loss and its terms
    weight_average: object = None     # an lm.optim.WeightAverage: takes in each step's weights
    average_losses: Callable = None   # several processes: their window losses -> the batch's


@dataclass(frozen=True)
class EpochStart:
    """Where an epoch starts: its first window, or where a stopped run left it."""
    window: int = 0
    hidden: tuple = None              # the LSTM state before that window (default: zeros)
    losses: torch.Tensor = None       # the windows' losses so far (default: zeros)


def train_epoch(model, train_data, windows, stepping, start=EpochStart(), lr_factors=None,
                should_stop=lambda: False, on_window=lambda k, running_loss: None):
    """One pass of truncated BPTT over `train_data` (batch_size, steps): window k is the
    columns windows[k] = (start, length) (data.fixed_windows, or data.variable_windows),
    from window `start.window` on. `lr_factors[k]`, where given, multiplies the learning rate
    of window k's step (lm.optim.window_lr_factors); the optimizer's own rate stays as it was.

    The loss stays on the device: it is read every REFRESH_EVERY windows (to check it is
    finite and to report a running mean through `on_window`) rather than after each window,
    which would make the CPU wait for the GPU. The losses reported and returned are the
    cross-entropy alone, without the activation penalties that are minimised with it.
    Raises NonFiniteLoss naming the first window whose loss was NaN or infinite.
    """
    forward = model if stepping.forward is None else stepping.forward
    device = train_data.device
    losses = start.losses if start.losses is not None else torch.zeros(len(windows), device=device)
    hidden = start.hidden if start.hidden is not None else model.init_hidden(train_data.size(0))
    checked, reported_sum = start.window, 0.0
    model.train()
    for k in range(start.window, len(windows)):
        x, y = data.get_window(train_data, *windows[k])
        hidden = detach_hidden(hidden)
        with torch.autocast(device.type, dtype=stepping.autocast_dtype,
                            enabled=stepping.autocast_dtype is not None):
            loss, objective, hidden = stepping.objective(model, forward, x, y, hidden)
        take_step(model, objective, stepping, 1 if lr_factors is None else lr_factors[k])
        losses[k] = loss.detach()
        del objective  # freed before the next window's forward makes its own

        stopping = should_stop()
        running_loss = None
        if k + 1 - checked >= REFRESH_EVERY or k + 1 == len(windows) or stopping:
            if stepping.average_losses is not None:
                losses[checked:k + 1] = stepping.average_losses(losses[checked:k + 1].clone())
            recent = losses[checked:k + 1].tolist()  # the one read from the device
            bad = next((i for i, value in enumerate(recent) if not math.isfinite(value)), None)
            if bad is not None:
                raise NonFiniteLoss(checked + bad + 1)
            checked, reported_sum = k + 1, reported_sum + sum(recent)
            running_loss = reported_sum / (k + 1 - start.window)
        on_window(k, running_loss)
        if stopping:
            return EpochResult(losses, hidden, k + 1)
    return EpochResult(losses, hidden, len(windows))


def take_step(model, objective, stepping, lr_factor):
    """Backward, clip, and one optimizer step at the learning rate times `lr_factor`."""
    optimizer, scaler = stepping.optimizer, stepping.scaler
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(objective).backward()
        scaler.unscale_(optimizer)
    else:
        objective.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), stepping.clip)  # multi-tensor kernel
    with scaled_lr(optimizer, lr_factor):
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    if stepping.weight_average is not None:
        stepping.weight_average.update(model)


def epoch_loss(losses, windows):
    """Token-weighted mean of the per-window losses (windows differ in length)."""
    lengths = torch.tensor([length for _, length in windows]).to(losses.device, losses.dtype)
    return float((losses * lengths).sum() / lengths.sum())


class TokenLosses(NamedTuple):
    sum_all: float         # summed cross-entropy of every target
    sum_no_sos: float      # the same without the `<sos>` targets
    count_all: int
    count_no_sos: int
    nll: torch.Tensor      # (batch, steps - 1) loss of each target, on the CPU; or None


@torch.no_grad()
def token_losses(model, batched, seq_length, *, forward=None, autocast_dtype=None,
                 keep_tokens=False, on_window=lambda k: None, add_across=None, scorer=None):
    """Cross-entropy of every target of `batched` (batch, steps), each scored once, with the
    hidden state carried across windows. The sums are kept on the device in float64 (float32
    on MPS, which has no float64), so that splitting the rows among processes
    (`add_across` adds their sums) or the windows differently gives the same figure to the
    last printed digit. With keep_tokens, also each target's loss, laid out like
    `batched[:, 1:]`. A `scorer(x, y, hidden) -> (loss of each target, hidden)` replaces the
    model's plain forward (lm/adapt.py's cache and dynamic evaluation)."""
    forward = model if forward is None else forward
    model.eval()
    device = batched.device
    dtype = torch.float32 if device.type == 'mps' else torch.float64
    totals = torch.zeros(4, dtype=dtype, device=device)  # all, no <sos>, and their counts
    kept = []
    hidden = model.init_hidden(batched.size(0))
    for k, start in enumerate(data.window_starts(batched, seq_length)):
        x, y = data.get_window(batched, start, seq_length)
        if scorer is not None:
            nll, hidden = scorer(x, y, hidden)
        else:
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                logits, hidden = forward(x, hidden)
            nll = cross_entropy(logits, y, reduction='none')
            del logits  # freed before the next window's forward makes its own
        totals[0] += nll.sum(dtype=dtype)
        # masked_fill, not boolean indexing, which would make the CPU wait for the GPU
        totals[1] += nll.masked_fill(y.reshape(-1) == data.SOS, 0.0).sum(dtype=dtype)
        if keep_tokens:  # on the device: one copy to the host at the end, not one a window
            kept.append(nll.view(y.shape))
        on_window(k)
    targets = batched[:, 1:]
    totals[2] += targets.numel()
    totals[3] += int((targets != data.SOS).sum())
    if add_across is not None:
        totals = add_across(totals)
    sum_all, sum_no_sos, count_all, count_no_sos = totals.tolist()
    return TokenLosses(sum_all, sum_no_sos, int(count_all), int(count_no_sos),
                       torch.cat(kept, 1).cpu() if keep_tokens else None)


def evaluate(model, eval_data, seq_length, *, forward=None, autocast_dtype=None,
             on_window=lambda k: None, add_across=None):
    """Mean cross-entropy over every target of `eval_data`, and the same mean without
    `<sos>` targets.

    `<sos>` always follows `<eos>`, so it is nearly free to predict and lowers the average;
    the literature's PTB figures (Mikolov's protocol) score words and `<eos>` only.
    """
    t = token_losses(model, eval_data, seq_length, forward=forward, autocast_dtype=autocast_dtype,
                     on_window=on_window, add_across=add_across)
    return t.sum_all / t.count_all, t.sum_no_sos / max(1, t.count_no_sos)
