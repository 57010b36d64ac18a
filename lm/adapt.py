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
Below the methods: score.py's flags for them (add_adaptive_flags) and --tune, which chooses
their values on a held-out text by a grid search.
"""
import contextlib
import math
import os
import sys

import torch

import data
from lm.console import progress
from lm.flags import checked_number, non_negative_float, non_negative_int, positive_int
from lm.loop import perplexity, token_losses
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


# --tune's grids: the dynamic evaluation's rate first (at the decay given), then its decay at
# the best rate, then the cache's (theta, lambda) pairs over that adapting model
DYNAMIC_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4)
DYNAMIC_DECAYS = (0.0, 1e-3, 1e-2)
CACHE_THETAS = (0.1, 0.3, 0.6, 1.0)
CACHE_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.3)


def add_adaptive_flags(parser):
    """score.py's flags of the two methods and of --tune."""
    group = parser.add_argument_group(
        'scores that adapt to the text (one stream; defaults tuned with --tune on PTB valid.txt '
        'for the regularized tied 2x650 model of docs/results.md)')
    add = group.add_argument
    add('--cache', action='store_true',
        help='Neural cache (Grave et al. 2017) over the last LSTM layer\'s outputs')
    add('--cache_window', type=positive_int, default=500, help='Positions the cache holds')
    add('--cache_theta', type=non_negative_float, default=0.6,
        help='Sharpness of the match between outputs')
    add('--cache_lambda', type=checked_number(float, lambda v: 0 <= v <= 1, 'in [0, 1]'),
        default=0.1, help='Weight of the cache in the mixture')
    add('--dynamic', action='store_true',
        help='Dynamic evaluation (Krause et al. 2018, RMS): a gradient step after each segment')
    add('--dynamic_lr', type=non_negative_float, default=5e-5, help='Step size (eta)')
    add('--dynamic_decay', type=non_negative_float, default=1e-3,
        help='Pull back towards the trained weights (lambda)')
    add('--dynamic_segment', type=positive_int, default=20, help='Tokens between steps')
    add('--dynamic_stats', metavar='FILE', default=None,
        help="Text for the gradient statistics (default: train.txt of the checkpoint's "
             '--data_dir)')
    add('--dynamic_stats_tokens', type=positive_int, default=300_000,
        help='How many of its first tokens to use')
    add('--dynamic_stats_rows', type=positive_int, default=64,
        help='Rows that text is read in, side by side (one gradient each window)')
    add('--tune', metavar='FILE', default=None,
        help='Choose the values above on FILE (valid.txt, say; the scored text itself is '
             'refused), print each grid point, then score the input with the values kept '
             '(the defaults where every point ties)')
    add('--tune_tokens', type=non_negative_int, default=0,
        help='Tune on the first this many tokens of --tune FILE (0: all)')


def stats_file(trained):
    data_dir = trained.get('data_dir')
    if not isinstance(data_dir, str):
        raise data.DataError('--dynamic needs training text for its gradient statistics; give '
                             'it with --dynamic_stats FILE')
    return os.path.join(data_dir, 'train.txt')


def method_values(args):
    """The adaptive methods in use and their values, for the summary and the JSON."""
    method = {}
    if args.cache:
        method['cache'] = {'window': args.cache_window, 'theta': args.cache_theta,
                           'lambda': args.cache_lambda}
    if args.dynamic:
        method['dynamic'] = {'lr': args.dynamic_lr, 'decay': args.dynamic_decay,
                             'segment': args.dynamic_segment,
                             'stats_tokens': args.dynamic_stats_tokens,
                             'stats_rows': args.dynamic_stats_rows}
    return method


def describe_method(args):
    names = {'cache': 'neural cache', 'dynamic': 'dynamic evaluation'}
    return ' + '.join(f'{names[m]} (' + ', '.join(f'{k} {v:g}' for k, v in values.items()) + ')'
                      for m, values in method_values(args).items())


def tune(args, model, rms, seq_length, text):
    """Set the method's values to those that score `text` (--tune FILE) best, without <sos>
    (the papers' protocol), printing each grid point on stderr."""
    device = next(model.parameters()).device
    stream = text.stream[:args.tune_tokens + 1] if args.tune_tokens else text.stream
    batched = stream.view(1, -1).to(device)

    def run(lr, decay, record=None, desc='tune'):
        dynamic = DynamicEval(model, rms, lr, decay) if args.dynamic else None
        windows = len(data.window_starts(batched, seq_length))
        with cudnn_backward_in_eval(device, needed=dynamic is not None), \
                progress(windows, desc, hide_below=20) as bar:
            result = token_losses(model, batched, seq_length,
                                  scorer=adaptive_scorer(model, dynamic=dynamic, record=record),
                                  on_window=lambda k: bar.update())
        if dynamic is not None:
            dynamic.reset()
        return result.sum_no_sos / max(1, result.count_no_sos)

    def keep_best(name, grid, loss_of, current):
        losses = {}
        for value in grid:  # each point said as it is scored: a grid takes minutes
            losses[value] = loss = loss_of(value, f'tune {name} {value:g}')
            print(f'tune: {name} {value:g}: perplexity without <sos> {perplexity(loss):.4f}',
                  file=sys.stderr, flush=True)
        return best_of(losses, current, lambda value: f'{name} {value:g}')

    print(f'tune: {stream.numel() - 1} targets of {args.tune}', file=sys.stderr)
    if args.dynamic:
        args.dynamic_lr = keep_best('--dynamic_lr', DYNAMIC_LRS,
                                    lambda lr, desc: run(lr, args.dynamic_decay, desc=desc),
                                    args.dynamic_lr)
        args.dynamic_decay = keep_best('--dynamic_decay', DYNAMIC_DECAYS,
                                       lambda decay, desc: run(args.dynamic_lr, decay, desc=desc),
                                       args.dynamic_decay)
    if args.cache:
        recorded = []
        run(args.dynamic_lr, args.dynamic_decay, record=recorded, desc='tune the cache')
        pairs = [(theta, lam) for theta in CACHE_THETAS for lam in CACHE_LAMBDAS]
        losses = {pair: replay_cache(recorded, args.cache_window, *pair,
                                     lambda y: y != data.SOS) for pair in pairs}
        for (theta, lam), loss in losses.items():
            print(f'tune: --cache_theta {theta:g} --cache_lambda {lam:g}: perplexity without '
                  f'<sos> {perplexity(loss):.4f}', file=sys.stderr)
        args.cache_theta, args.cache_lambda = best_of(
            losses, (args.cache_theta, args.cache_lambda),
            lambda pair: f'--cache_theta {pair[0]:g} --cache_lambda {pair[1]:g}')


def best_of(losses, current, describe):
    """The grid point of `losses` that scored best, or `current` where every point ties (a
    tuning text too short to tell them apart), saying on stderr which is kept."""
    if len(set(losses.values())) == 1:
        print(f'tune: every grid point scores the same on this text, too short to tell them '
              f'apart; keeping {describe(current)}', file=sys.stderr, flush=True)
        return current
    best = min(losses, key=losses.get)
    print(f'tune: keeping {describe(best)}', file=sys.stderr, flush=True)
    return best
