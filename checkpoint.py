"""Checkpoints: plain dicts of tensors and Python values, written atomically, read safely.

A checkpoint holds everything needed to rebuild the model (`model_args`, `vocab`,
`model_state`), so generate.py needs nothing but the file. A "last" checkpoint, written each
epoch to resume from, also holds the optimizer, scheduler, RNG states and the position in
the epoch (see demo_tie.py).
"""
import errno
import os
import pickle
import pickletools
import tempfile
import zipfile

import torch

from data import SPECIALS, UNK
from model import LSTMLanguageModel
from recipe import MODEL_REGULARIZERS

FORMAT = 'lstm-tied-lm/1'
MODEL_ARGS = ('vocab_size', 'embed_size', 'hidden_size', 'num_layers', 'dropout', 'tied')


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, unsafe or not ours, worded for the user."""


def write_atomically(path, write):
    """Call `write(f)` on a temporary file beside `path` (opened in binary), flush it to disk,
    then rename it over `path`: a crash or a full disk never leaves a half-written file there,
    only the previous version. The temporary file is removed on any failure."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=folder)
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


def save_checkpoint(obj, path):
    """Write `obj` to `path` atomically (see write_atomically). Every failure is raised as an
    OSError naming `path` (torch.save reports a full disk as a RuntimeError from its zip
    writer)."""
    try:
        write_atomically(path, lambda f: torch.save(obj, f))
    except RuntimeError as e:
        raise OSError(errno.EIO, f'write failed ({str(e).splitlines()[0][:120]}); is the disk '
                                 'full?', path) from None
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise


def check_writable(path):
    """Fail now, not after hours of training, if checkpoints cannot be written at `path`."""
    if os.path.isdir(path):
        raise CheckpointError(f'cannot write checkpoint {path}: it is a folder')
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CheckpointError(f'cannot write checkpoint {path}: {e.strerror or e}') from None


TRAIN_FIRST = ('; train a model first (python demo_tie.py --tied writes best_model.pt; the '
               "README's Quick start has a ten-minute run) or pass --checkpoint PATH")


def load_checkpoint(path, map_location='cpu', missing_hint=''):
    """Open a checkpoint with weights_only=True (no arbitrary code runs) and check it is ours."""
    if os.path.isdir(path):
        raise CheckpointError(f'{path} is a folder, not a checkpoint')
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}{missing_hint}')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not carries_code(path):
            raise CheckpointError(f'{path} is not a checkpoint (not a PyTorch file)') from None
        # torch's message is long; keep its one line that names what was refused
        reason = next((line.strip() for line in str(e).splitlines() if 'Unsupported global' in line), '')
        reason = reason.split('. ')[0][:200]
        raise CheckpointError(f'{path} is not a checkpoint that can be opened safely: it asks to '
                              f'run code when loaded, which weights_only loading refuses'
                              + (f' ({reason})' if reason else '')) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError, MemoryError) as e:
        raise CheckpointError(f'{path} is not a checkpoint: it is truncated, corrupt or not a '
                              f'PyTorch file ({type(e).__name__})') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
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
    except Exception:  # not a pickle at all: genops stops at the first byte it cannot read
        return False


def _check_model_fields(path, ckpt):
    args, vocab = ckpt.get('model_args'), ckpt.get('vocab')
    ok = (isinstance(args, dict) and isinstance(vocab, list)
          and all(isinstance(w, str) for w in vocab)
          and vocab[:len(SPECIALS)] == SPECIALS and UNK in vocab
          and isinstance(ckpt.get('model_state'), dict)
          and all(isinstance(args.get(k), int) and args[k] > 0 for k in MODEL_ARGS[:4])
          and isinstance(args.get('dropout'), float) and isinstance(args.get('tied'), bool)
          and args['vocab_size'] == len(vocab)
          and all(_is_regularizer(k, args[k]) for k in MODEL_REGULARIZERS if k in args))
    if not ok:
        raise CheckpointError(f'{path} is damaged: its model description or vocabulary is missing '
                              'or inconsistent')


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
    return model.to(device)


def model_args(args, vocab_size):
    """The model's description, as LSTMLanguageModel's arguments. Regularisers appear only
    when set, so a reference model's description is the reference's."""
    described = {'vocab_size': vocab_size, 'embed_size': args.embed_size, 'hidden_size': args.hidden_size,
                 'num_layers': args.num_layers, 'dropout': args.dropout, 'tied': args.tied}
    described.update({k: getattr(args, k) for k, off in MODEL_REGULARIZERS.items()
                      if getattr(args, k, off) != off})
    return described


def best_checkpoint(model, vocab, args, epoch, val_loss):
    return {'format': FORMAT, 'model_state': model.state_dict(), 'vocab': vocab,
            'model_args': model_args(args, len(vocab)), 'args': vars(args),
            'epoch': epoch, 'val_loss': val_loss}
