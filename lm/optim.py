"""The optimizer and its learning-rate schedule, built and changed here alone: Adam (the
reference's), SGD and NT-ASGD's weight average; the plateau schedule, cosine and warm-up.
"""
import contextlib
import math

import torch


def make_optimizer(model, lr, weight_decay, name='adam'):
    """`name` 'adam' (the reference's): Adam in one fused kernel where this PyTorch has it for
    the model's device (the same update, a few passes over memory fewer), else PyTorch's
    default (multi-tensor where the device supports it). 'sgd' and 'ntasgd': plain SGD (for
    'ntasgd' the trainer also keeps a WeightAverage once averaging_should_start says so)."""
    if name in ('sgd', 'ntasgd'):
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer, lr_factor, lr_patience):
    """The reference's schedule: the rate times `lr_factor` after `lr_patience` epochs without
    a better validation loss (under --schedule cosine it is kept, and never stepped)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode='min', factor=lr_factor,
                                                      patience=lr_patience)


def apply_changes(changes, optimizer, scheduler):
    """Put the flags changed on resume, (name, old, new), into the optimizer and schedule
    (--clip and the regularisers are read from the flags and the model's construction)."""
    for name, _, new in changes:
        if name in ('lr', 'weight_decay'):
            for group in optimizer.param_groups:
                group[name] = new
        elif name == 'lr_factor':
            scheduler.factor = new
        elif name == 'lr_patience':
            scheduler.patience = new


def averaging_should_start(val_losses, val_loss, nonmono):
    """NT-ASGD's trigger (Merity et al. 2017): start averaging once the validation loss
    `val_loss` is worse than the best of the epochs before the last `nonmono` ones
    (`val_losses`, the earlier epochs' losses, oldest first). A few bad epochs in a row
    start it; one noisy epoch does not."""
    return len(val_losses) > nonmono and val_loss > min(val_losses[:-nonmono])


def epochs_since_best(val_losses):
    """Epochs since the best of `val_losses` (every finished epoch's validation loss, oldest
    first; a tie is no improvement): 0 when the newest is the best, or there is none. Derived
    from the losses that the last checkpoint keeps, so a resumed run counts on exactly."""
    if not val_losses:
        return 0
    best = min(range(len(val_losses)), key=val_losses.__getitem__)  # the first of equal ones
    return len(val_losses) - 1 - best


class WeightAverage:
    """The mean of the model's weights after each step since averaging started (the "A" of
    NT-ASGD; torch.optim.ASGD with t0=0, lambd=0, which AWD-LSTM switches to, keeps nearly
    the same mean in its `ax`, leaving out the first step's weights). The optimizer stays
    what it was. The model trains on its own weights; validation, the best checkpoint and
    the test use the mean:

        with average.in_use(model):
            evaluate(model, ...)
    """

    def __init__(self, model):
        self.mean = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.count = 0  # steps averaged; the first update replaces the copy above

    @torch.no_grad()
    def update(self, model):
        self.count += 1
        for name, p in model.named_parameters():
            self.mean[name].lerp_(p.detach(), 1 / self.count)

    @contextlib.contextmanager
    def in_use(self, model):
        """The model holds the mean inside the block and its own weights again after it."""
        params = dict(model.named_parameters())
        own = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.mean[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(own[name])

    def state_dict(self):
        return {'mean': {name: t.cpu() for name, t in self.mean.items()}, 'count': self.count}

    def load_state_dict(self, state):
        """Refuses (ValueError) a state that does not fit the model."""
        mean, count = state['mean'], int(state['count'])
        if set(mean) != set(self.mean) or count < 0 or any(
                not torch.is_tensor(mean[n]) or mean[n].shape != t.shape
                for n, t in self.mean.items()):
            raise ValueError('its weight average does not fit the model')
        for name, t in self.mean.items():
            t.copy_(mean[name])
        self.count = count


@contextlib.contextmanager
def scaled_lr(optimizer, scale):
    """The learning rate times `scale` for one step."""
    if scale == 1:
        yield
        return
    base = [g['lr'] for g in optimizer.param_groups]
    for g, lr in zip(optimizer.param_groups, base):
        g['lr'] = lr * scale
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, base):
            g['lr'] = lr


def schedule_factor(start, end, epochs, schedule='plateau', warmup=0.0, *, lr_factor=0.5,
                    decay_start=1):
    """The multiplier of the learning rate for a step taken from `start` to `end` epochs into
    training (fractions: window k of n in epoch e runs from e - 1 + k/n to e - 1 + (k+1)/n).

        warm-up   end / warmup, until it reaches 1: a linear rise over the first `warmup`
                  epochs (0: none); the first step already moves
        cosine    (1 + cos(pi * start / epochs)) / 2: from 1 at the first step down towards
                  0 at the last, over the run's `epochs`
        step      lr_factor ** (epochs ended since the end of epoch `decay_start`): Zaremba's
                  schedule, which both papers use (epoch e runs at lr_factor ** (e - K))
        plateau   1: the plateau schedule acts on the optimizer's rate between epochs

    A function of the position alone, so that a resumed run takes the same steps."""
    factor = min(1.0, end / warmup) if warmup > 0 else 1.0
    if schedule == 'cosine':
        factor *= (1 + math.cos(math.pi * min(start, epochs) / epochs)) / 2
    elif schedule == 'step':
        factor *= lr_factor ** max(0, math.floor(start) + 1 - decay_start)
    return factor


def window_lr_factors(windows, seq_length, epoch, epochs, schedule='plateau', warmup=0.0,
                      by_length=False, **step):
    """The learning-rate multiplier of each of epoch `epoch`'s `windows` (start, length): the
    schedule's (schedule_factor, given `step`'s lr_factor and decay_start), times
    length / seq_length with `by_length` (variable-length windows, AWD-LSTM's), so that every
    token weighs the same."""
    n = len(windows)
    return [schedule_factor(epoch - 1 + k / n, epoch - 1 + (k + 1) / n, epochs, schedule, warmup,
                            **step)
            * (length / seq_length if by_length else 1) for k, (_, length) in enumerate(windows)]


def step_flags(args):
    """What --schedule step takes from the flags."""
    return {'lr_factor': args.lr_factor, 'decay_start': args.decay_start}
