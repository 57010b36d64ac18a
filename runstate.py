"""State that outlives the process: seeds and RNG states, the resume checks, the metrics
CSV, and the signal handler that lets a run stop at a window's edge and continue later.
"""
import csv
import os
import random
import shlex
import signal
import sys

import numpy as np
import torch

from checkpoint import MODEL_ARGS, CheckpointError, model_args

METRICS_COLUMNS = ['epoch', 'train_loss', 'train_ppl', 'val_loss', 'val_ppl', 'val_loss_no_sos',
                   'val_ppl_no_sos', 'lr', 'seconds', 'train_tokens_per_s']


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CUDA too


def rng_state():
    """Every RNG the run draws from, as tensors and Python values (weights_only can load it)."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': [torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            'random': random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    key, pos, has_gauss, cached = state['numpy']
    np.random.set_state(('MT19937', key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['random']
    random.setstate((version, tuple(internal), gauss))


def check_resumable(ckpt, path, args, vocab):
    if 'optimizer' not in ckpt:
        raise CheckpointError(f'{path} holds a model only; resume from the ".last.pt" '
                              'checkpoint written beside it')
    if ckpt['vocab'] != vocab:
        raise CheckpointError(f'{path} was trained on another vocabulary than {args.data_dir} gives')
    wanted = model_args(args, len(vocab))
    differ = [k for k in MODEL_ARGS if ckpt['model_args'][k] != wanted[k]]
    if ckpt.get('position') is not None:
        differ += [k for k in ('batch_size', 'seq_length') if ckpt['args'].get(k) != getattr(args, k)]
    if differ:
        saved = ' '.join(f'--{k} {ckpt["args"].get(k)}' for k in differ if k != 'vocab_size')
        raise CheckpointError(f'{path} was made with other settings: {saved}; pass the same ones')


def restore(ckpt, model, optimizer, scheduler, scaler):
    """Load a last checkpoint's state; returns (first epoch to run, best validation loss,
    position in that epoch or None)."""
    model.load_state_dict(ckpt['model_state'])
    optimizer.load_state_dict(ckpt['optimizer'])
    scheduler.load_state_dict(ckpt['scheduler'])
    if scaler is not None and ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    set_rng_state(ckpt['rng'])
    position = ckpt['position']
    return ckpt['epoch'] + (1 if position is None else 0), ckpt['best_val_loss'], position


class MetricsLog:
    """One CSV row per epoch. On resume, rows after the checkpoint's epoch (written before
    a crash could save that epoch's checkpoint) are dropped, so no epoch appears twice."""

    def __init__(self, path, resume_after=None):
        self.path = path
        if resume_after is None or not os.path.exists(path):
            with open(path, 'w', newline='') as f:
                csv.writer(f).writerow(METRICS_COLUMNS)
            return
        with open(path, newline='') as f:
            rows = [r for r in csv.DictReader(f) if r.get('epoch', '').isdigit()
                    and int(r['epoch']) <= resume_after]
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, METRICS_COLUMNS, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row):
        with open(self.path, 'a', newline='') as f:
            csv.DictWriter(f, METRICS_COLUMNS).writerow(row)


class StopRequest:
    """SIGINT/SIGTERM handler: training stops after the window in progress. A second
    Ctrl-C stops at once."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f'\n{signal.Signals(signum).name} received: stopping after the current window',
              file=sys.stderr, flush=True)

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum else None


def resume_command(last_path):
    """This run's command line with `--resume last_path` in place of any --resume it had."""
    argv, rest = [], iter(sys.argv[1:])
    for arg in rest:
        if arg == '--resume':
            next_arg = next(rest, None)
            if next_arg is not None and next_arg.startswith('-'):
                argv.append(next_arg)
        elif not arg.startswith('--resume='):
            argv.append(arg)
    return ' '.join(['python', 'demo_tie.py'] + [shlex.quote(a) for a in argv]
                    + ['--resume', shlex.quote(last_path)])
