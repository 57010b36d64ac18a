"""What a resume agrees on with its checkpoint: which flags it takes from it (the rules are
lm.flags'), the save path claimed, the training state and each process's random state
restored, and the command that resumes.
"""
import os
import random
import shlex
import sys
from typing import NamedTuple

import numpy as np
import torch

from lm import flags
from lm.checkpoint import CheckpointError, load_checkpoint
from lm.optim import WeightAverage
from lm.runfiles import LockError, RunFiles, SavePathError, hold_lock


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CUDA too


def rng_state():
    """Every RNG the run draws from, as tensors and Python values (weights_only can load it)."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': [torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            'random': random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if torch.cuda.is_available():  # the GPUs there are: a run resumes on fewer, or on none
        for index, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    key, pos, has_gauss, cached = state['numpy']
    np.random.set_state(('MT19937', key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['random']
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------ what a resume agrees on

# The rules of lm.flags, by name. FIXED: from the checkpoint, a contradicting value refused;
# LAYOUT: fixed inside an epoch (its position is a window of this layout), free between epochs;
# CHANGEABLE: applied from the next window on, and said; FROM_THE_MODEL: under --finetune, the
# fine-tuned model's unless given (those that define it must agree).
FIXED_ON_RESUME = flags.names(resume='fixed')
LAYOUT = flags.names(resume='layout')
CHANGEABLE_ON_RESUME = flags.names(resume='changeable')
IGNORED_ON_RESUME = flags.names(resume='ignored')
FROM_THE_MODEL = flags.names(from_model=True)
# Flags added after checkpoints existed: a checkpoint without one is read as having this value.
BEFORE_THE_FLAG = {f.name: f.before for f in flags.FLAGS if f.before is not flags.NOT_SET}


def saved_flags(ckpt):
    """The flags a checkpoint was made with, those it predates at their earlier values."""
    return {**BEFORE_THE_FLAG, **(ckpt.get('args') or {})}


def flag_syntax(name, value):
    if isinstance(value, bool):
        return f'--{name}' if value else f'no --{name}'
    return f'--{name} {value}'


def merge_resume_args(args, given, saved, mid_epoch, source='the run being resumed'):
    """Settle `args` for a resume: flags not `given` on the command line take the
    checkpoint's values (`saved`); given ones must agree with it where they define the model,
    data or layout. Returns the changed flags as (name, old, new)."""
    conflicts, changes = [], []
    for name in FIXED_ON_RESUME + LAYOUT + CHANGEABLE_ON_RESUME:
        if name not in saved:
            continue  # a checkpoint from before the flag existed
        if name not in given:
            setattr(args, name, saved[name])
        elif getattr(args, name) != saved[name]:
            if name in CHANGEABLE_ON_RESUME or (name in LAYOUT and not mid_epoch):
                changes.append((name, saved[name], getattr(args, name)))
            else:
                conflicts.append(name)
    if conflicts:
        wanted = ', '.join(flag_syntax(n, saved[n]) for n in conflicts)
        raise CheckpointError(f'{source} was made with {wanted}; leave these flags '
                              'out (they come from the checkpoint) or give those values'
                              + (' (batch size and window length can change between epochs, not '
                                 'inside one)' if set(conflicts) & set(LAYOUT) else ''))
    return changes


def merge_finetune_args(args, given, ckpt, path):
    """Settle `args` for --finetune, as for a resume but over the model's own flags alone
    (FROM_THE_MODEL): the optimizer, its schedule, --lr and --epochs are this command's."""
    saved = saved_flags(ckpt)
    return merge_resume_args(args, given, {n: saved[n] for n in FROM_THE_MODEL if n in saved},
                             mid_epoch=False, source=f'the model in {path}')


def earlier_run_message(files):
    """Why a fresh run is refused where an earlier run left files, and what to do, as the
    files that exist allow: --resume only where there is a last checkpoint."""
    found = ', '.join(files.existing())
    if os.path.exists(files.last):
        return (f'{found} are from an earlier run. Continue it with --resume, or start afresh '
                'with --overwrite (which deletes them)')
    return (f'{found} are from an earlier run that left no last checkpoint ({files.last}) to '
            'continue from. Start afresh with --overwrite (which deletes them), or use another '
            '--save_path')


def claim_save_path(args, given, group):
    """Before anything is read: the run's files, and on resume the checkpoint with the flags
    settled from it. Only the first process checks and locks the files; all read the
    checkpoint. Returns (files, checkpoint or None, resume path or None, changed flags).
    A refusal by the first process ends every process with its message (rather than leaving
    the others to fail at their next exchange, with a traceback each)."""
    files = RunFiles.beside(args.save_path)
    refusal = None
    if group.is_main:
        try:
            files.check_writable()
            hold_lock(files)
            files.remove_stale_temporaries()
            if args.resume is None and files.existing():
                if not args.overwrite:
                    raise SavePathError(earlier_run_message(files))
                files.check_ours()
        except (SavePathError, LockError) as e:
            refusal = e
    refusal = group.gather_objects(refusal)[0]  # the first process's, on every process
    if refusal:
        raise refusal
    if args.resume is None:
        return files, None, None, []
    resume_path = args.resume or files.last
    ckpt = load_last_checkpoint(resume_path, nothing_to_resume_hint(files, resume_path))
    changes = merge_resume_args(args, given, saved_flags(ckpt),
                                mid_epoch=ckpt.get('position') is not None)
    return files, ckpt, resume_path, changes


def nothing_to_resume_hint(files, resume_path):
    """What to do when --resume finds no last checkpoint, as the files at --save_path allow:
    --overwrite only where an earlier run left files to delete."""
    if os.path.abspath(resume_path) != os.path.abspath(files.last):
        return ' (a run\'s last checkpoint is the ".last.pt" file beside its --save_path)'
    if files.existing():
        return f'; {earlier_run_message(files)}'
    return (f'; nothing is there to resume: no run has saved at --save_path {files.best} yet. '
            'Start one with the same command without --resume')


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
    by lm.resume.restore_random_state."""
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


def seed_process(seed, rank):
    """Dropout differs from process to process: each draws from its own seed."""
    if rank:
        seed_everything(seed + 1_000_003 * rank)


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


def resume_command(last_path, command_line=None, lr=None):
    """This run's command line (`command_line`, default sys.argv[1:]) with `--resume last_path`
    in place of any --resume, --overwrite or --finetune PATH it had: a stopped fine-tuning run
    resumes like any other, and --resume refuses --finetune. With `lr`, `--lr lr` replaces
    the --lr it had."""
    dropped = ('--resume', '--finetune') + (('--lr',) if lr is not None else ())
    argv, rest = [], iter(sys.argv[1:] if command_line is None else command_line)
    for arg in rest:
        if arg in dropped:
            next_arg = next(rest, None)
            if arg == '--resume' and next_arg is not None and next_arg.startswith('-'):
                argv.append(next_arg)  # --resume took no path: that was the next flag
        elif not arg.startswith(tuple(f'{flag}=' for flag in dropped)) and arg != '--overwrite':
            argv.append(arg)
    extra = ['--lr', f'{lr:g}'] if lr is not None else []
    return ' '.join(['python', 'demo_tie.py'] + [shlex.quote(a) for a in argv]
                    + ['--resume', shlex.quote(last_path)] + extra)
