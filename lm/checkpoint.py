"""The checkpoint format, built, written, read and checked here alone (what a resume restores
from a last checkpoint: lm.resume).

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
import errno
import glob
import hashlib
import os
import pickle
import pickletools
import re
import sys
import tempfile
import warnings
import zipfile

import torch

from data import SPECIALS, UNK
from lm import UserError
from model import MODEL_REGULARIZERS, LSTMLanguageModel

FORMAT_NAME, FORMAT_VERSION = 'lstm-tied-lm/', 1
FORMAT = f'{FORMAT_NAME}{FORMAT_VERSION}'
MODEL_ARGS = ('vocab_size', 'embed_size', 'hidden_size', 'num_layers', 'dropout', 'tied')


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe or not ours, worded for the user."""


def temporary_beside(path):
    """A new temporary file beside `path`, hidden and named after it (`.NAME.XXXXXXXX.tmp`,
    which stale_temporaries finds again): (file descriptor, its path)."""
    folder, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=folder)


def stale_temporaries(path):
    """The temporary files of `path` that writes which were killed left behind."""
    folder, name = os.path.split(os.path.abspath(path))
    return glob.glob(os.path.join(glob.escape(folder), f'.{glob.escape(name)}.*.tmp'))


def write_atomically(path, write):
    """Call `write(f)` on a temporary file beside `path` (opened in binary), flush it to disk,
    then rename it over `path`: a crash or a full disk never leaves a half-written file there,
    only the previous version. The temporary file is removed on any failure."""
    fd, tmp = temporary_beside(path)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _KeepsWriteErrors:
    """The file torch.save writes to, keeping the OSError of a write that failed: PyTorch's
    zip writer turns it into a RuntimeError without its errno (EFBIG under ulimit -f, ENOSPC
    on a full disk), which write_failure needs to say what to change."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, chunk):
        try:
            return self.f.write(chunk)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        return self.f.flush()


def save_checkpoint(obj, path):
    """Write `obj` to `path` atomically (see write_atomically). Every failure is raised as an
    OSError naming `path`, with the errno of the write that failed where there was one."""
    writer = None

    def save(f):
        nonlocal writer
        writer = _KeepsWriteErrors(f)
        torch.save(obj, writer)
    try:
        write_atomically(path, save)
    except RuntimeError as e:
        if writer is not None and writer.error is not None:
            raise OSError(writer.error.errno, writer.error.strerror, path) from None
        raise OSError(errno.EIO, f'write failed ({str(e).splitlines()[0][:120]}); is the disk '
                                 'full?', path) from None
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise


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
    described = ckpt['model_args']
    model = LSTMLanguageModel(**{k: described[k] for k in MODEL_ARGS},
                              **{k: described[k] for k in MODEL_REGULARIZERS if k in described})
    return load_weights(model, ckpt).to(device)


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


def model_args(args, vocab_size):
    """The model's description, as LSTMLanguageModel's arguments. Regularisers appear only
    when set, so a reference model's description is the reference's."""
    described = {'vocab_size': vocab_size, 'embed_size': args.embed_size,
                 'hidden_size': args.hidden_size, 'num_layers': args.num_layers,
                 'dropout': args.dropout, 'tied': args.tied}
    described.update({k: getattr(args, k) for k, off in MODEL_REGULARIZERS.items()
                      if getattr(args, k, off) != off})
    return described


def best_checkpoint(model, vocab, args, epoch, val_loss, run_id):
    """What generate.py, score.py and --eval_only read. `run_id` tells the run that wrote
    it, so that a run tests only a best model of its own."""
    return {'format': FORMAT, 'model_state': model.state_dict(), 'vocab': vocab,
            'model_args': model_args(args, len(vocab)), 'args': vars(args),
            'epoch': epoch, 'val_loss': val_loss, 'run_id': run_id}


def last_checkpoint(best, *, optimizer, scheduler, scaler, best_val_loss, val_losses,
                    weight_average, rngs, position, window_losses, fingerprint):
    """The best checkpoint's fields (`best`, for the newest weights) and the training state
    that --resume restores (lm.resume.restore_training). `rngs`: each process's rng_state();
    `position`: None at an epoch's end, else {'window', 'losses', 'hidden', 'seconds'} of
    the window to run next, the hidden state laid out as one process's batch."""
    return {**best, 'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
            'scaler': scaler.state_dict() if scaler is not None else None,
            'best_val_loss': best_val_loss, 'val_losses': val_losses,
            'weight_average': weight_average and weight_average.state_dict(),
            'position': position, 'rng': rngs[0], 'rng_of_processes': rngs,
            'window_losses': window_losses.cpu(), 'data_fingerprint': fingerprint}


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
