"""The checkpoint format, built, read, checked and restored here alone: the model, the
optimizer, the position in an epoch, the random state, the data's digest (written atomically
by lm.runfiles.save_checkpoint; which flags a resume takes: lm.resume).

Checkpoints are plain dicts of tensors and Python values, written atomically and read with
weights_only=True. Two kinds, both beside --save_path:

    best (m.pt)       the model with the best validation loss: `model_args`, `vocab` and
                      `model_state` rebuild it, so generate.py and score.py need nothing else;
                      also the run's `args`, `epoch`, `val_loss` and `run_id`
    last (m.last.pt)  the best's fields for the newest weights, plus all that --resume needs
                      to continue exactly: optimizer, scheduler and scaler states, the best
                      validation loss so far, every epoch's validation loss and NT-ASGD's
                      mean, each process's RNG state, the position in the epoch (None at an
                      epoch's end) and a digest of the data
"""
import argparse
import hashlib
import math
import os
import pickle
import pickletools
import re
import sys
import time
import warnings
import zipfile
from typing import NamedTuple

import torch

from data import SPECIALS, UNK
from lm import UserError
from lm.loop import EpochStart
from lm.optim import WeightAverage
from lm.rng import seed_process, set_rng_state
from model import MODEL_ARGS, MODEL_REGULARIZERS, build, model_args

FORMAT_NAME, FORMAT_VERSION = 'lstm-tied-lm/', 1
FORMAT = f'{FORMAT_NAME}{FORMAT_VERSION}'


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe or not ours, worded for the user."""


TRAIN_FIRST = ('; train a model first (python demo_tie.py --tied writes best_model.pt; the '
               "README's Quick start has a ten-minute run) or pass --checkpoint PATH")


def load_checkpoint(path, map_location='cpu', missing_hint=''):
    """Open a checkpoint with weights_only=True (no arbitrary code runs) and check it is ours."""
    if os.path.isdir(path):
        raise CheckpointError(f'{path} is a folder, not a checkpoint')
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint not found: {path}{missing_hint}')
    if not os.path.isfile(path):
        raise CheckpointError(f'{path} is not a regular file (a device, a pipe or a socket), '
                              'not a checkpoint')
    try:
        open(path, 'rb').close()
    except OSError as e:
        raise CheckpointError(f'cannot read {path}: {e.strerror or e}') from None
    try:
        with warnings.catch_warnings():  # a raw pickle gets torch's two-line protocol notice
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not carries_code(path):
            raise CheckpointError(f'{path} is not a checkpoint (not a PyTorch file)') from None
        # torch's message is long; keep its one line that names what was refused
        reason = next((line.strip() for line in str(e).splitlines()
                       if 'Unsupported global' in line), '')
        reason = reason.split('. ')[0][:200]
        raise CheckpointError(f'{path} is not a checkpoint that can be opened safely: it asks to '
                              f'run code when loaded, which weights_only loading refuses'
                              + (f' ({reason})' if reason else '')) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError, MemoryError) as e:
        raise CheckpointError(f'{path} is not a checkpoint: it is truncated, corrupt or not a '
                              f'PyTorch file ({type(e).__name__})') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        found = ckpt.get('format') if isinstance(ckpt, dict) else None
        version = found.removeprefix(FORMAT_NAME) if isinstance(found, str) else ''
        if found != version and version.isdigit() and int(version) > FORMAT_VERSION:
            raise CheckpointError(f'{path} was written by a newer version of this project (its '
                                  f'format is {found}, this version reads {FORMAT}); update '
                                  'this code to read it')
        raise CheckpointError(f'{path} is not a checkpoint made by demo_tie.py')
    _check_model_fields(path, ckpt)
    return ckpt


def carries_code(path):
    """Whether a file that weights_only loading refused is a pickle that imports callables
    (what a malicious checkpoint does), rather than text or random bytes. The opcodes are
    listed, never executed."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                raw = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
        else:
            with open(path, 'rb') as f:
                raw = f.read(2**24)
        opcodes = [op.name for op, _, _ in pickletools.genops(raw)]  # the whole pickle parses
        return any(name in ('GLOBAL', 'STACK_GLOBAL', 'INST', 'OBJ') for name in opcodes)
    except Exception:  # noqa: BLE001  not a pickle: genops stops at the first byte it cannot read
        return False


def check_stored_args(ckpt, path, parser):
    """Refuse (CheckpointError, one line naming the field) a checkpoint whose stored training
    arguments (`args`) would not pass `parser`'s own types, ranges and choices: they are read
    as if typed on the command line. Arguments the parser does not know are left alone."""
    stored = ckpt.get('args')
    if stored is None:
        return
    if not isinstance(stored, dict):
        raise CheckpointError(f'{path} is damaged: its training arguments are not a dict')
    for action in parser._actions:
        if action.dest in stored and action.dest != 'help':
            problem = _flag_problem(action, stored[action.dest])
            if problem:
                raise CheckpointError(f'{path} is damaged: its stored --{action.dest} '
                                      f'{stored[action.dest]!r} {problem}')


def _flag_problem(action, value):
    """Why `value` is not what the command line could have given `action` ('' if it is)."""
    if action.nargs == 0:  # store_true, --flag/--no-flag
        return '' if isinstance(value, bool) else 'is not true or false'
    if value is None:
        return '' if action.default is None or action.const is None else 'is missing'
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return f'is a {type(value).__name__}'
    if action.type is not None:
        try:
            parsed = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            return f'is out of range ({e})'
        if parsed != value or type(parsed) is not type(value) and isinstance(value, str):
            return 'is not of the right type'
    elif not isinstance(value, str):
        return 'is not text'
    if action.choices is not None and value not in action.choices:
        return f'is not one of {", ".join(map(str, action.choices))}'
    return ''


def _check_model_fields(path, ckpt):
    args, vocab = ckpt.get('model_args'), ckpt.get('vocab')
    ok = (isinstance(args, dict) and isinstance(vocab, list)
          and all(isinstance(w, str) for w in vocab)
          and vocab[:len(SPECIALS)] == SPECIALS and UNK in vocab
          and isinstance(ckpt.get('model_state'), dict)
          and all(isinstance(args.get(k), int) and args[k] > 0 for k in MODEL_ARGS[:4])
          and isinstance(args.get('dropout'), float) and 0 <= args['dropout'] < 1
          and isinstance(args.get('tied'), bool)
          and args['vocab_size'] == len(vocab)
          and all(_is_regularizer(k, args[k]) for k in MODEL_REGULARIZERS if k in args))
    if not ok:
        raise CheckpointError(f'{path} is damaged: its model description or vocabulary is missing '
                              'or inconsistent')
    unknown = sorted(map(str, set(args) - set(MODEL_ARGS) - set(MODEL_REGULARIZERS)))
    if unknown:  # a later version's option, say: the model is built without it
        print(f'warning: {path} describes its model with {", ".join(unknown)}, which '
              'this version does not know; building the model without it, which may not be '
              'the model that was trained', file=sys.stderr)
    _check_weights(path, args, ckpt['model_state'])


def _check_weights(path, args, state):
    """The sizes in the description must be the weights' own, and the weights real numbers,
    before anything is built from them (a lying hidden_size of 10**6 would otherwise ask for
    terabytes, a num_layers of 10**6 take hours)."""
    odd = [name for name, t in state.items() if not torch.is_tensor(t)
           or not t.is_floating_point() or t.layout != torch.strided]
    if odd:
        raise CheckpointError(f'{path} is damaged: its weights must be dense floating-point '
                              f'tensors, and {odd[0]} is not')
    vocab, embed, hidden = args['vocab_size'], args['embed_size'], args['hidden_size']
    projected = args.get('projection', False)
    expected = {'embedding.weight': (vocab, embed), 'fc.weight': (vocab, embed if projected
                                                                   else hidden)}
    if args.get('decoder_bias', True):
        expected['fc.bias'] = (vocab,)
    if projected:
        expected['projection.weight'] = (embed, hidden)
    recurrent = [name for name in state if re.fullmatch(r'lstm\.(\d+\.)?weight_hh_l\d+', name)]
    expected.update({name: (4 * hidden, hidden) for name in recurrent})
    for name, shape in expected.items():
        if name not in state or tuple(state[name].shape) != shape:
            found = tuple(state[name].shape) if name in state else 'missing'
            raise CheckpointError(f'{path} is damaged: its model description does not match its '
                                  f'weights ({name}: {found}, where the description makes it '
                                  f'{shape})')
    if len(recurrent) != args['num_layers']:
        raise CheckpointError(f'{path} is damaged: its model description says '
                              f'{args["num_layers"]} LSTM layers, its weights hold '
                              f'{len(recurrent)}')


def _is_regularizer(name, value):
    """A value of the kind the flag takes: a bool, or a rate in [0, 1) (None where the rate
    defaults to --dropout's)."""
    off = MODEL_REGULARIZERS[name]
    if isinstance(off, bool):
        return isinstance(value, bool)
    return (value is None and off is None) or (isinstance(value, float) and 0 <= value < 1)


def build_model(ckpt, device='cpu'):
    """The model a checkpoint describes, with its weights loaded, on `device`."""
    return load_weights(build(ckpt['model_args']), ckpt).to(device)


def load_weights(model, ckpt):
    """Put the checkpoint's weights into `model`, refusing weights that do not fit it or are
    not finite. Returns the model."""
    try:
        model.load_state_dict(ckpt['model_state'])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f'checkpoint weights do not fit its model description '
                              f'({str(e).splitlines()[0][:200]})') from None
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f'the checkpoint holds NaN or infinite weights ({", ".join(bad)}): '
                              'it was saved from a run that diverged and cannot be used')
    return model


def best_checkpoint(model, vocab, args, epoch, val_loss, run_id):
    """What generate.py, score.py and --eval_only read. `run_id` tells the run that wrote
    it, so that a run tests only a best model of its own."""
    return {'format': FORMAT, 'model_state': model.state_dict(), 'vocab': vocab,
            'model_args': model_args(args, len(vocab)), 'args': vars(args),
            'epoch': epoch, 'val_loss': val_loss, 'run_id': run_id}


def last_checkpoint(best, *, optimizer, scheduler, scaler, best_val_loss, val_losses,
                    weight_average, rngs, position, window_losses, fingerprint):
    """The best checkpoint's fields (`best`, for the newest weights) and the training state
    that --resume restores (restore_training). `rngs`: each process's rng_state();
    `position`: None at an epoch's end, else {'window', 'losses', 'hidden', 'seconds'} of
    the window to run next, the hidden state laid out as one process's batch."""
    return {**best, 'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
            'scaler': scaler.state_dict() if scaler is not None else None,
            'best_val_loss': best_val_loss, 'val_losses': val_losses,
            'weight_average': weight_average and weight_average.state_dict(),
            'position': position, 'rng': rngs[0], 'rng_of_processes': rngs,
            'window_losses': window_losses.cpu(), 'data_fingerprint': fingerprint}


def stopped_position(result, started, gather_rows):
    """Where a signal stopped an epoch (`result`, lm.loop.EpochResult, of an epoch begun at
    time.monotonic() `started`), as last_checkpoint keeps it. Every process calls this: the
    hidden state is gathered into one process's batch (`gather_rows`), in float32 on the CPU
    whatever ran (cuDNN's LSTM under autocast keeps float16 states, which a float32 or CPU
    resume would refuse)."""
    return {'window': result.next_window, 'losses': result.losses,
            'hidden': tuple(gather_rows(h.detach()).float().cpu() for h in result.hidden),
            'seconds': time.monotonic() - started}


def data_fingerprint(corpus):
    """A digest of each split's token ids: a resume on other data is refused, naming the split."""
    return {split: hashlib.sha256(getattr(corpus, split).contiguous().numpy()).hexdigest()
            for split in ('train', 'valid', 'test')}


def check_same_data(ckpt, path, corpus, data_dir):
    if ckpt['vocab'] != corpus.vocab:
        raise CheckpointError(f'{path} was trained on another vocabulary than {data_dir} gives '
                              '(train.txt has changed, or --data_dir is another corpus)')
    saved = ckpt.get('data_fingerprint')
    if saved:
        now = data_fingerprint(corpus)
        changed = [f'{split}.txt' for split in now if saved.get(split) != now[split]]
        if changed:
            raise CheckpointError(f'{", ".join(changed)} in {data_dir} differ from the data this '
                                  'run started with; resume with the same data, or start a new run')


def load_best_of_run(path, run_id):
    """The best checkpoint at `path`, refused where another run than `run_id` wrote it."""
    best = load_checkpoint(path)
    if best.get('run_id') != run_id:
        raise CheckpointError(f'{path} is not this run\'s best model (another run wrote it); '
                              'this run\'s best model was saved beside the --save_path it '
                              'started with. Test it with: python demo_tie.py --eval_only '
                              '--save_path PATH')
    return best


def load_last_checkpoint(path, missing_hint=''):
    """A last checkpoint, refused with advice when it is missing or a best one."""
    ckpt = load_checkpoint(path, missing_hint=missing_hint)
    if 'optimizer' not in ckpt:
        raise CheckpointError(f'{path} holds a model only; resume from the ".last.pt" '
                              'checkpoint written beside it')
    return ckpt


class Restored(NamedTuple):
    first_epoch: int         # the epoch to run next (the stopped one, from `position`)
    best_val: float
    position: dict           # where in that epoch, or None to start it afresh
    val_losses: list         # every finished epoch's validation loss
    weight_average: object   # NT-ASGD's WeightAverage, or None before it started


NOT_RESUMABLE = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError)


def restore_training(ckpt, path, model, optimizer, scheduler, scaler, n_windows_of, batch_size):
    """Load a last checkpoint's training state into the model, optimizer, scheduler and
    scaler. `n_windows_of(epoch)` is the number of an epoch's training windows. A checkpoint
    that loads but does not fit is refused (CheckpointError); the RNG states are restored
    by restore_random_state."""
    try:
        model.load_state_dict(ckpt['model_state'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        if scaler is not None and ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
        epoch, best_val = int(ckpt['epoch']), float(ckpt['best_val_loss'])
        position = ckpt['position']
        if position is not None:
            _check_position(position, n_windows_of(epoch), (model.num_layers, batch_size,
                                                            model.hidden_size))
        _check_optimizer_state(optimizer)
        val_losses = [float(v) for v in ckpt.get('val_losses', [])]
        weight_average = None
        if ckpt.get('weight_average') is not None:
            weight_average = WeightAverage(model)
            weight_average.load_state_dict(ckpt['weight_average'])
    except NOT_RESUMABLE as e:
        raise damaged(path, e) from None
    first_epoch = epoch + (1 if position is None else 0)
    return Restored(first_epoch, best_val, position, val_losses, weight_average)


def _check_position(position, n_windows, hidden_shape):
    ok = (0 < int(position['window']) < n_windows
          and tuple(position['losses'].shape) == (n_windows,)
          and len(position['hidden']) == 2
          and all(tuple(h.shape) == hidden_shape for h in position['hidden']))
    if not ok:
        raise ValueError('its position in the epoch does not fit this model and data')


def _check_optimizer_state(optimizer):
    for group in optimizer.param_groups:
        for p in group['params']:
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError('its optimizer state does not fit the model')


def damaged(path, error):
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return CheckpointError(f'{path} is damaged and cannot be resumed ({reason}); resume from '
                           'another last checkpoint, or start afresh with --overwrite')


def restore_random_state(ckpt, path, group, seed):
    """Each process's random state as the last checkpoint at `path` left it. With another
    number of processes than the checkpoint's: the first process's, fresh streams for the
    others, and a warning (returned) that the run is no longer bit-identical to an
    uninterrupted one."""
    try:
        first = ckpt['rng']
        states = ckpt.get('rng_of_processes') or [first]
        if len(states) == group.world_size:
            set_rng_state(states[group.rank])
            return None
        set_rng_state(first)
    except NOT_RESUMABLE as e:
        raise damaged(path, e) from None
    seed_process(seed, group.rank)
    return (f'the checkpoint was written by {len(states)} process(es), this job has '
            f'{group.world_size}: training continues correctly, but the dropout masks of processes '
            'after the first start afresh, so the run is not bit-identical to an uninterrupted one')


def resumed_start(position, rows, device):
    """A stopped epoch's `position` read back: (lm.loop.EpochStart on `device`, with this
    process's `rows` of the hidden state, the seconds the epoch had run)."""
    hidden = tuple(rows(h, dim=1).contiguous().to(device, torch.float32)
                   for h in position['hidden'])  # float16 in checkpoints written before a cast
    return (EpochStart(position['window'], hidden, position['losses'].to(device)),
            elapsed_before(position))


def elapsed_before(position):
    """The seconds an epoch had run before it was stopped: only shown and logged, so a value
    that makes no sense (an older version's wall clock stepped back) counts as 0, never as
    a reason to refuse the resume."""
    try:
        seconds = float(position.get('seconds', 0.0))
    except (TypeError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds >= 0 else 0.0
