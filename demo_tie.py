"""Train an LSTM language model, with or without weight tying, on the Penn Treebank.

    bash getdata.sh && python demo_tie.py --tied     # the reference run: 2x650, 40 epochs
    python demo_tie.py --tied --resume               # go on from the last checkpoint
    python demo_tie.py --eval_only                   # validation and test of best_model.pt

Files written beside --save_path (best_model.pt by default):
    best_model.pt        the model with the best validation loss (what generate.py reads)
    best_model.last.pt   the state at the end of the last epoch, or where a signal stopped
                         training, with optimizer, scheduler and RNG states (what --resume reads)
    best_model.csv       one row of metrics per epoch
"""
import argparse
import csv
import ctypes
import math
import os
import platform
import random
import shlex
import signal
import sys
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from checkpoint import (FORMAT, MODEL_ARGS, CheckpointError, build_model, check_writable,
                        load_checkpoint, save_checkpoint)
from model import LSTMLanguageModel, count_parameters, detach_hidden, pick_device

RULE = '-' * 41
REFRESH_EVERY = 50  # windows between reads of the training loss (each read waits for the GPU)
METRICS_COLUMNS = ['epoch', 'train_loss', 'train_ppl', 'val_loss', 'val_ppl', 'val_loss_no_sos',
                   'val_ppl_no_sos', 'lr', 'seconds', 'train_tokens_per_s']


# ---------------------------------------------------------------------------- command line

def checked_number(kind, ok, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
        if not (ok(value) and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'{text} is not {what}')
        return value
    return parse


positive_int = checked_number(int, lambda v: v > 0, 'a positive integer')
non_negative_int = checked_number(int, lambda v: v >= 0, 'an integer >= 0')
positive_float = checked_number(float, lambda v: v > 0, 'a number > 0')
non_negative_float = checked_number(float, lambda v: v >= 0, 'a number >= 0')
probability = checked_number(float, lambda v: 0 <= v < 1, 'a probability in [0, 1)')
factor = checked_number(float, lambda v: 0 < v < 1, 'a factor in (0, 1)')


def build_parser():
    parser = argparse.ArgumentParser(description='LSTM Language Model on Penn Treebank')
    parser.add_argument('--data_dir', type=str, default='./data/penn/', help='Directory containing train.txt, valid.txt, test.txt')
    parser.add_argument('--batch_size', type=positive_int, default=20, help='Batch size')
    parser.add_argument('--embed_size', type=positive_int, default=650, help='Embedding size')
    parser.add_argument('--hidden_size', type=positive_int, default=650, help='Hidden size of LSTM')
    parser.add_argument('--num_layers', type=positive_int, default=2, help='Number of LSTM layers')
    parser.add_argument('--dropout', type=probability, default=0.5, help='Dropout probability')
    parser.add_argument('--lr', type=positive_float, default=0.001, help='Learning rate')
    parser.add_argument('--epochs', type=positive_int, default=40, help='Number of training epochs')
    parser.add_argument('--clip', type=positive_float, default=5.0, help='Gradient clipping')
    parser.add_argument('--seq_length', type=positive_int, default=30, help='Sequence length')
    parser.add_argument('--save_path', type=str, default='best_model.pt', help='Path to save the best model')
    parser.add_argument('--weight_decay', type=non_negative_float, default=1e-5, help='Weight decay (L2 regularization)')
    parser.add_argument('--lr_factor', type=factor, default=0.5, help='Factor by which the learning rate will be reduced')
    parser.add_argument('--lr_patience', type=non_negative_int, default=2, help='Number of epochs with no improvement after which learning rate will be reduced')
    parser.add_argument('--tied', action='store_true', help='Enable weight tying')
    # Beyond the reference's flags:
    parser.add_argument('--seed', type=int, default=1111, help='Random seed (torch, numpy, random)')
    parser.add_argument('--device', type=str, default='auto', help='auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps')
    parser.add_argument('--resume', nargs='?', const='', default=None, metavar='PATH',
                        help='Continue training from a last checkpoint; without PATH, the one '
                             'beside --save_path (best_model.pt -> best_model.last.pt)')
    parser.add_argument('--eval_only', action='store_true', help='Only print the validation and test results of the checkpoint at --save_path')
    parser.add_argument('--amp', action='store_true', help='CUDA only: mixed precision (bfloat16, or float16 with loss scaling)')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model (first windows are slower while it compiles)')
    return parser


def companion_paths(save_path):
    """best_model.pt -> (best_model.last.pt, best_model.csv)."""
    stem = os.path.splitext(save_path)[0]
    return stem + '.last.pt', stem + '.csv'


# ---------------------------------------------------------------------------- training and evaluation

class NonFiniteLoss(Exception):
    def __init__(self, window):
        super().__init__(f'loss is not finite at window {window}')
        self.window = window


class EpochResult(NamedTuple):
    losses: torch.Tensor  # mean loss of each window, on the device; windows not run are 0
    hidden: tuple         # hidden state after the last window run
    next_window: int      # == number of windows when the epoch ran to its end


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of handing it back to the system.

    A CPU step allocates and frees tensors of tens of MB (logits, the decoder's gradient);
    by default glibc serves each from fresh pages that the kernel must fault in and zero,
    every window. Serving them from the heap and never trimming it made a 2x650 step about
    4% faster on the 2-core development machine (PyTorch's CPU tuning guide suggests
    jemalloc or tcmalloc for the same reason). Elsewhere than glibc this does nothing.
    """
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest allowed value on 64-bit
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)


def make_optimizer(model, lr, weight_decay):
    """Adam in one fused kernel where this PyTorch has it for the model's device (the same
    update, a few passes over memory fewer), else PyTorch's default (multi-tensor where
    the device supports it)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def train_epoch(model, train_data, optimizer, seq_length, clip, *, start=0, hidden=None,
                losses=None, forward=None, autocast_dtype=None, scaler=None,
                should_stop=lambda: False, on_window=lambda k, running_loss: None):
    """One pass of truncated BPTT over `train_data` (batch_size, steps), from window `start`.

    The loss stays on the device: it is read every REFRESH_EVERY windows (to check it is
    finite and to report a running mean through `on_window`) rather than after each window,
    which would make the CPU wait for the GPU. `forward` is the model, or a compiled version
    of it. Raises NonFiniteLoss naming the first window whose loss was NaN or infinite.
    """
    forward = model if forward is None else forward
    device = train_data.device
    starts = data.window_starts(train_data, seq_length)
    if losses is None:
        losses = torch.zeros(len(starts), device=device)
    if hidden is None:
        hidden = model.init_hidden(train_data.size(0))
    checked, reported_sum = start, 0.0
    model.train()
    for k in range(start, len(starts)):
        x, y = data.get_window(train_data, starts[k], seq_length)
        hidden = detach_hidden(hidden)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, hidden = forward(x, hidden)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)  # multi-tensor where supported
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        losses[k] = loss.detach()

        stopping = should_stop()
        running_loss = None
        if k + 1 - checked >= REFRESH_EVERY or k + 1 == len(starts) or stopping:
            recent = losses[checked:k + 1].tolist()  # the one read from the device
            bad = next((i for i, value in enumerate(recent) if not math.isfinite(value)), None)
            if bad is not None:
                raise NonFiniteLoss(checked + bad + 1)
            checked, reported_sum = k + 1, reported_sum + sum(recent)
            running_loss = reported_sum / (k + 1 - start)
        on_window(k, running_loss)
        if stopping:
            return EpochResult(losses, hidden, k + 1)
    return EpochResult(losses, hidden, len(starts))


def window_lengths(data_, seq_length):
    starts = data.window_starts(data_, seq_length)
    return torch.tensor([data.get_window(data_, s, seq_length)[0].size(1) for s in starts])


def epoch_loss(losses, train_data, seq_length):
    """Token-weighted mean of the per-window losses (the last window may be shorter)."""
    lengths = window_lengths(train_data, seq_length).to(losses.device, losses.dtype)
    return float((losses * lengths).sum() / lengths.sum())


@torch.no_grad()
def evaluate(model, eval_data, seq_length, *, forward=None, autocast_dtype=None,
             on_window=lambda k: None):
    """Mean cross-entropy over every target of `eval_data` (each scored once, hidden state
    carried across windows), and the same mean without `<sos>` targets.

    `<sos>` always follows `<eos>`, so it is nearly free to predict and lowers the average;
    the literature's PTB figures (Mikolov's protocol) score words and `<eos>` only.
    """
    forward = model if forward is None else forward
    model.eval()
    hidden = model.init_hidden(eval_data.size(0))
    total_all = torch.zeros((), device=eval_data.device)
    total_no_sos = torch.zeros((), device=eval_data.device)
    for k, start in enumerate(data.window_starts(eval_data, seq_length)):
        x, y = data.get_window(eval_data, start, seq_length)
        with torch.autocast(eval_data.device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits, hidden = forward(x, hidden)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction='none')
        total_all += nll.sum()
        # masked_fill, not boolean indexing, which would make the CPU wait for the GPU
        total_no_sos += nll.masked_fill(y.reshape(-1) == data.SOS, 0.0).sum()
        on_window(k)
    targets = eval_data[:, 1:]
    return (float(total_all) / targets.numel(),
            float(total_no_sos) / max(1, int((targets != data.SOS).sum())))


def perplexity(loss):
    return math.exp(loss) if loss < 700 else float('inf')


# ---------------------------------------------------------------------------- state that outlives the process

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


def model_args(args, vocab_size):
    return {'vocab_size': vocab_size, 'embed_size': args.embed_size, 'hidden_size': args.hidden_size,
            'num_layers': args.num_layers, 'dropout': args.dropout, 'tied': args.tied}


def best_checkpoint(model, vocab, args, epoch, val_loss):
    return {'format': FORMAT, 'model_state': model.state_dict(), 'vocab': vocab,
            'model_args': model_args(args, len(vocab)), 'args': vars(args),
            'epoch': epoch, 'val_loss': val_loss}


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


# ---------------------------------------------------------------------------- the run

class RunError(Exception):
    """Ends the run with a message and exit status 1."""


def speedups(args, model, device):
    """(forward, autocast dtype, GradScaler) for --amp and --compile, with a warning where
    one is unsupported and the default path instead."""
    forward, dtype, scaler = model, None, None
    if args.amp:
        if device.type != 'cuda':
            warn(f'--amp works on CUDA only; training in float32 on {device}')
        elif torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        else:
            dtype, scaler = torch.float16, torch.amp.GradScaler('cuda')
    if args.compile:
        try:
            forward = torch.compile(model)
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), \
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                x = torch.zeros(args.batch_size, args.seq_length, dtype=torch.long, device=device)
                forward(x, model.init_hidden(args.batch_size))[0].sum().backward()
            model.zero_grad(set_to_none=True)
        except Exception as e:  # compilers fail in many ways; all mean "run eagerly"
            warn(f'--compile is not supported here ({type(e).__name__}); running uncompiled')
            forward = model
    return forward, dtype, scaler


def warn(message):
    print(f'warning: {message}', file=sys.stderr, flush=True)


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


def print_test_block(model, test_data, seq_length, **kw):
    print(RULE)
    print('Testing: ', flush=True)
    with tqdm(total=len(data.window_starts(test_data, seq_length)), desc='Test Evaluation',
              file=sys.stderr) as bar:
        loss, loss_no_sos = evaluate(model, test_data, seq_length, on_window=lambda k: bar.update(), **kw)
    print(RULE)
    print(f'Test Loss: {loss:.4f}, Test Perplexity: {perplexity(loss):.4f}')
    print(f'Test Loss without <sos>: {loss_no_sos:.4f}, Test Perplexity without <sos>: '
          f'{perplexity(loss_no_sos):.4f} (Mikolov protocol: words and <eos> scored, <sos> targets not)')


def print_validation_no_sos(loss_no_sos):
    print(f'Validation Loss without <sos>: {loss_no_sos:.4f}, Validation Perplexity without <sos>: '
          f'{perplexity(loss_no_sos):.4f}')


def eval_only(args, device):
    ckpt = load_checkpoint(args.save_path)
    model = build_model(ckpt, device)
    trained = ckpt.get('args') or {}
    batch_size = trained.get('batch_size', args.batch_size)
    seq_length = trained.get('seq_length', args.seq_length)
    corpus = data.load_corpus(args.data_dir, vocab=ckpt['vocab'])
    print(f'Using device: {device}')
    print(f'Vocabulary size: {len(corpus.vocab)}')
    report_unknown(corpus)
    print(f'Evaluating {args.save_path} (epoch {ckpt.get("epoch")}, --batch_size {batch_size} '
          f'--seq_length {seq_length} as in training)')
    check_eval_sizes(corpus, batch_size)
    valid_data = data.batchify(corpus.valid, batch_size).to(device)
    test_data = data.batchify(corpus.test, batch_size).to(device)
    val_loss, val_no_sos = evaluate(model, valid_data, seq_length)
    print(f'Validation Loss: {val_loss:.4f}, Validation Perplexity: {perplexity(val_loss):.4f}')
    print_validation_no_sos(val_no_sos)
    print_test_block(model, test_data, seq_length)
    return 0


def check_eval_sizes(corpus, batch_size):
    """Valid and test need at least one target per row."""
    for name, stream in (('valid', corpus.valid), ('test', corpus.test)):
        data.check_size(name, stream, batch_size)


def report_unknown(corpus):
    unknown = {s: n for s, n in corpus.unknown.items() if n}
    if unknown:
        print('Words not in the training vocabulary, read as <unk>: '
              + ', '.join(f'{s} {n}' for s, n in unknown.items()))


def train(args, device, stop):
    best_path = args.save_path
    last_path, metrics_path = companion_paths(best_path)
    check_writable(best_path)
    resume_path = None
    if args.resume is not None:
        resume_path = args.resume or last_path
        ckpt = load_checkpoint(resume_path)  # fail early, before reading the data
    corpus = data.load_corpus(args.data_dir)
    data.check_size('train', corpus.train, args.batch_size, args.seq_length)
    check_eval_sizes(corpus, args.batch_size)

    print(f'Using device: {device}')
    print(f'Vocabulary size: {len(corpus.vocab)}')
    report_unknown(corpus)
    model = LSTMLanguageModel(**model_args(args, len(corpus.vocab))).to(device)
    print(model)
    print(f'Total parameters: {count_parameters(model)}')
    print()

    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode='min', factor=args.lr_factor, patience=args.lr_patience)
    forward, autocast_dtype, scaler = speedups(args, model, device)
    train_data = data.batchify(corpus.train, args.batch_size).to(device)
    valid_data = data.batchify(corpus.valid, args.batch_size).to(device)
    test_data = data.batchify(corpus.test, args.batch_size).to(device)
    n_windows = len(data.window_starts(train_data, args.seq_length))

    first_epoch, best_val, position = 1, math.inf, None
    if resume_path is not None:
        check_resumable(ckpt, resume_path, args, corpus.vocab)
        first_epoch, best_val, position = restore(ckpt, model, optimizer, scheduler, scaler)
        where = f'epoch {first_epoch}, window {position["window"] + 1}' if position else f'epoch {first_epoch}'
        print(f'Resuming from {resume_path} at {where}', flush=True)
    metrics = MetricsLog(metrics_path, resume_after=(first_epoch - 1) if resume_path else None)

    wrote_last = False  # a last checkpoint already on disk may be an earlier run's

    def save_last(epoch, val_loss, position):
        nonlocal wrote_last
        save_checkpoint({**best_checkpoint(model, corpus.vocab, args, epoch, val_loss),
                         'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                         'scaler': scaler.state_dict() if scaler is not None else None,
                         'best_val_loss': best_val, 'position': position, 'rng': rng_state()},
                        last_path)
        wrote_last = True

    val_loss = None
    try:
        for epoch in range(first_epoch, args.epochs + 1):
            if stop.signum:
                break
            start, hidden, losses, seconds = 0, None, None, 0.0
            if position is not None:  # resuming in mid-epoch
                start, seconds = position['window'], position['seconds']
                hidden = tuple(h.to(device) for h in position['hidden'])
                losses = position['losses'].to(device)
                position = None
            t0 = time.time()
            with tqdm(total=n_windows, initial=start, desc=f'Epoch {epoch}', file=sys.stderr,
                      leave=False, dynamic_ncols=True) as bar:
                def show(k, running_loss):
                    bar.update()
                    if running_loss is not None:
                        bar.set_postfix(loss=f'{running_loss:.3f}', ppl=f'{perplexity(running_loss):.1f}')
                try:
                    result = train_epoch(model, train_data, optimizer, args.seq_length, args.clip,
                                         start=start, hidden=hidden, losses=losses, forward=forward,
                                         autocast_dtype=autocast_dtype, scaler=scaler,
                                         should_stop=lambda: stop.signum is not None, on_window=show)
                except NonFiniteLoss as e:
                    raise RunError(
                        f'the training loss became NaN or infinite in epoch {epoch}, window '
                        f'{e.window} of {n_windows}; try a lower --lr (now {args.lr}) or --clip '
                        f'(now {args.clip}). {best_path} is unchanged.') from None
            train_seconds = seconds + time.time() - t0
            if result.next_window < n_windows:  # stopped by a signal in mid-epoch
                save_last(epoch, val_loss, {'window': result.next_window, 'losses': result.losses,
                                            'hidden': detach_hidden(result.hidden),
                                            'seconds': train_seconds})
                break

            val_loss, val_no_sos = evaluate(model, valid_data, args.seq_length, forward=forward,
                                            autocast_dtype=autocast_dtype)
            elapsed = seconds + time.time() - t0
            print(f'Epoch: {epoch}, Validation Loss: {val_loss:.4f}, Validation Perplexity: '
                  f'{perplexity(val_loss):.4f}, Time: {int(elapsed // 60)}m {int(elapsed % 60)}s')
            print_validation_no_sos(val_no_sos)
            scheduler.step(val_loss)
            lrs = [group['lr'] for group in optimizer.param_groups]
            print(f'current lr: {lrs}', flush=True)
            if val_loss < best_val:
                best_val = val_loss
                save_checkpoint(best_checkpoint(model, corpus.vocab, args, epoch, val_loss), best_path)
                print(f'Best model saved with Perplexity: {perplexity(val_loss):.4f}', flush=True)
            train_loss = epoch_loss(result.losses, train_data, args.seq_length)
            metrics.append({'epoch': epoch, 'train_loss': f'{train_loss:.6f}',
                            'train_ppl': f'{perplexity(train_loss):.4f}',
                            'val_loss': f'{val_loss:.6f}', 'val_ppl': f'{perplexity(val_loss):.4f}',
                            'val_loss_no_sos': f'{val_no_sos:.6f}',
                            'val_ppl_no_sos': f'{perplexity(val_no_sos):.4f}', 'lr': lrs[0],
                            'seconds': f'{elapsed:.2f}',
                            'train_tokens_per_s': f'{train_data.numel() / train_seconds:.1f}'})
            save_last(epoch, val_loss, None)
    except OSError as e:
        raise RunError(f'could not write {e.filename or "a checkpoint"}: {e.strerror or e}. '
                       f'The checkpoints already on disk are unchanged; resume with: '
                       f'{resume_command(last_path)}') from None

    if stop.signum:
        print(f'Training stopped by {stop.name}.', file=sys.stderr, end=' ')
        resumable = last_path if wrote_last else resume_path
        if resumable is not None:
            print(f'Resume with:\n  {resume_command(resumable)}', file=sys.stderr, flush=True)
        else:
            print('No epoch had started, so there is nothing to resume.', file=sys.stderr, flush=True)
        if stop.signum == signal.SIGTERM:
            return 128 + signal.SIGTERM
    if math.isinf(best_val):  # a best_model.pt on disk now would be some earlier run's
        raise RunError('no epoch finished, so there is no best model to test')
    model.load_state_dict(load_checkpoint(best_path, map_location=device)['model_state'])
    print_test_block(model, test_data, args.seq_length, forward=forward, autocast_dtype=autocast_dtype)
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tied and args.embed_size != args.hidden_size:
        parser.error(f'--tied needs --embed_size equal to --hidden_size '
                     f'(got {args.embed_size} and {args.hidden_size})')
    sys.stdout.reconfigure(line_buffering=True)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    seed_everything(args.seed)
    keep_freed_memory()
    stop = StopRequest()  # installed before the data is read, so no signal is lost
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return eval_only(args, device) if args.eval_only else train(args, device, stop)
    except (data.DataError, CheckpointError, RunError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('\nInterrupted.', file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == '__main__':
    sys.exit(main())
