"""Scores that adapt to the text being read: a neural cache and dynamic evaluation.

Both read the text as one stream (batch 1) in windows, each window scored before anything
learns from it, so a token's score depends on the text before it alone:

    neural cache (Grave, Joulin & Usunier 2017): the last LSTM layer's output h_t (what the
        decoder reads) is compared with those of the previous W positions i; each of them
        votes for the word that followed it:
            p(w) = (1 - lambda) p_model(w) + lambda p_cache(w)
            p_cache(w) ~ sum over i in [t - W, t) of [x_{i+1} = w] exp(theta h_t . h_i)
        Only the target's probability is needed, so nothing vocabulary-sized is built: memory is
        (window length) x (W + window length) weights.
    dynamic evaluation (Krause et al. 2018, the RMS variant): after each segment is scored,
        one gradient step on its loss,
            theta <- theta - eta g / (sqrt(MS) + eps) + lambda r (theta0 - theta),
        MS being each weight's mean squared gradient on training text (gradient_rms), r its
        decay rate: sqrt(MS) normalised to mean 1, capped at 1 / lambda. The model is changed in
        memory only; reset() puts the checkpoint's weights back.

lm.loop.token_losses runs the windows; `adaptive_scorer` is what it calls for each of them.
"""
import contextlib
import math

import torch

import data
from lm.loss import cross_entropy
from model import detach_hidden

EPSILON = 1e-5  # Krause et al.'s: keeps weights whose gradients were ~0 on training text still


class NeuralCache:
    """The memory of the last `window` positions: their outputs and the words that followed."""

    def __init__(self, window, theta, lam):
        self.window, self.theta, self.lam = window, theta, lam
        self.outputs = self.targets = None

    def mix(self, outputs, targets, nll_model):
        """Loss of each target under the cache mixture. outputs (T, hidden) of the window's
        positions, targets (T,) the words that follow them, nll_model (T,) the model's loss of
        each. Position t sees the memory and the window's positions before t, at most `window`."""
        if self.outputs is None:
            self.outputs, self.targets = outputs[:0], targets[:0]
        memory = self.outputs.size(0)
        keys = torch.cat([self.outputs, outputs])                # (M + T, hidden)
        values = torch.cat([self.targets, targets])              # (M + T,)
        t = torch.arange(outputs.size(0), device=outputs.device)[:, None]
        j = torch.arange(keys.size(0), device=outputs.device)[None, :]
        seen = (j < memory + t) & (j >= memory + t - self.window)   # strictly before t
        scores = (self.theta * outputs.float() @ keys.float().T).masked_fill(~seen, -math.inf)
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)    # a row with nothing seen: 0
        p_cache = (weights * (values[None, :] == targets[:, None])).sum(1)
        p_model = torch.exp(-nll_model)
        mixed = (1 - self.lam) * p_model + self.lam * p_cache
        has_memory = seen.any(1)  # the very first position has no cache: the model alone
        nll = torch.where(has_memory, -torch.log(mixed.clamp_min(1e-300)), nll_model)
        self.outputs, self.targets = keys[-self.window:], values[-self.window:]
        return nll


def gradient_rms(model, stream, segment, max_tokens, rows, on_window=lambda k, total: None):
    """Each parameter's root mean squared gradient of the loss on the first `max_tokens` of
    `stream` (ids): the MS of dynamic evaluation, square-rooted. The text is laid out in `rows`
    rows (data.batchify) and read in windows of `segment` columns, hidden state carried, one
    gradient per window (`on_window(k, windows)` after each), as Krause et al. collect it
    over training batches. Averaged over many
    rows, each gradient is mostly the weights' signal rather than one segment's noise: on PTB
    that scaled the steps better than one row did (docs/results.md), and it is faster. A text
    too short for `rows` rows of one window each is read in fewer rows."""
    model.eval()
    stream = stream[:max_tokens]
    text = data.batchify(stream, max(1, min(rows, stream.numel() // (segment + 1))))
    sums = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    hidden, windows = model.init_hidden(text.size(0)), 0
    starts = data.window_starts(text, segment)
    with cudnn_backward_in_eval(stream.device):
        for start in starts:
            x, y = data.get_window(text, start, segment)
            model.zero_grad(set_to_none=True)
            logits, hidden = model(x, detach_hidden(hidden))
            cross_entropy(logits, y).backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
                    sums[name].addcmul_(grad, grad)
            on_window(windows, len(starts))
            windows += 1
    model.zero_grad(set_to_none=True)
    return {name: (total / max(1, windows)).sqrt() for name, total in sums.items()}


class DynamicEval:
    """One RMS-scaled gradient step after each scored segment, with a decay towards the
    checkpoint's weights."""

    def __init__(self, model, rms, lr, decay):
        self.model = model
        self.start = {name: p.detach().clone() for name, p in model.named_parameters()}
        mean = torch.cat([r.flatten() for r in rms.values()]).mean().clamp_min(1e-30)
        cap = 1 / decay if decay > 0 else math.inf
        # Per weight, computed once: the step is eta / (sqrt(MS) + eps), the pull towards
        # the checkpoint lambda * r. A step then costs one fused multiply-add per tensor.
        self.step_size = {name: lr / (r + EPSILON) for name, r in rms.items()}
        self.pull = {name: decay * (r / mean).clamp(max=cap) for name, r in rms.items()} \
            if decay > 0 else None

    @torch.no_grad()
    def step(self):
        """Apply the gradients that the segment's backward left in the parameters."""
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
            p.addcmul_(grad, self.step_size[name], value=-1)
            if self.pull is not None:
                p.lerp_(self.start[name], self.pull[name])  # p += pull * (start - p)
        self.model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def reset(self):
        for name, p in self.model.named_parameters():
            p.copy_(self.start[name])


def cudnn_backward_in_eval(device, needed=True):
    """cuDNN's LSTM has no backward in eval mode, and dropout must stay off: use PyTorch's own
    LSTM kernels there, where a backward is `needed` (dynamic evaluation; the cache alone
    has none, and keeps cuDNN)."""
    if device.type == 'cuda' and needed:
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def adaptive_scorer(model, cache=None, dynamic=None, record=None):
    """lm.loop.token_losses' `scorer`: (x, y, hidden) -> (loss of each target, hidden). The
    window is scored by the model as it stands, mixed with the `cache` (a NeuralCache), and
    only then does `dynamic` (a DynamicEval) learn from it. With `record` (a list), each
    window's (outputs, targets, model loss) is appended, for replaying other caches."""
    def score(x, y, hidden):
        with torch.enable_grad() if dynamic is not None else contextlib.nullcontext():
            logits, hidden, output, _ = model(x, detach_hidden(hidden), with_outputs=True)
            nll = cross_entropy(logits, y, reduction='none')
            if dynamic is not None:
                nll.mean().backward()
                dynamic.step()
        nll, output = nll.detach(), output.detach().reshape(-1, output.size(-1))
        if record is not None:
            record.append((output, y.reshape(-1), nll))
        if cache is not None:
            nll = cache.mix(output, y.reshape(-1), nll)
        return nll, detach_hidden(hidden)
    return score


def replay_cache(recorded, window, theta, lam, is_scored):
    """Mean loss of the recorded windows under a fresh NeuralCache(window, theta, lam), over
    the targets `is_scored(targets)` keeps: tuning the cache costs no forward pass."""
    cache, total, count = NeuralCache(window, theta, lam), 0.0, 0
    for outputs, targets, nll in recorded:
        mixed = cache.mix(outputs, targets, nll)
        keep = is_scored(targets)
        total += float(mixed[keep].double().sum())
        count += int(keep.sum())
    return total / max(1, count)
