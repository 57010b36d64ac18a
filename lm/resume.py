"""The rules of a resume and the advice on how a run goes on: which flags a resume takes from
its checkpoint and which it may change (declared in lm.flags), the same for --finetune, and
what to tell the user after a stop, a divergence or a failed write, with the command that
resumes. (The files at --save_path: lm.runfiles; what a checkpoint holds: lm.checkpoint.)
"""
import os
import shlex
import sys

from lm import flags
from lm.checkpoint import CheckpointError, load_last_checkpoint
from lm.runfiles import nothing_to_resume_hint

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


def keep_ignored(args, given, ckpt):
    """The flags a resume ignores (IGNORED_ON_RESUME: --seed, from which --variable_bptt
    draws each epoch's windows) take the checkpoint's values. Returns a warning for each
    given otherwise."""
    saved, notes = ckpt.get('args') or {}, []
    for name in IGNORED_ON_RESUME:
        kept = saved.get(name, getattr(args, name))
        if name in given and getattr(args, name) != kept:
            notes.append(f'--{name} is ignored on resume: the random state continues from the '
                         'checkpoint')
        setattr(args, name, kept)
    return notes


def settle_resume(args, given, files):
    """--resume: the last checkpoint (--resume PATH, else the one at the save path), with
    `args` settled from it. Returns (checkpoint, its path, the changed flags)."""
    path = args.resume or files.last
    ckpt = load_last_checkpoint(path, nothing_to_resume_hint(files, path))
    changes = merge_resume_args(args, given, saved_flags(ckpt),
                                mid_epoch=ckpt.get('position') is not None)
    return ckpt, path, changes


# ------------------------------------------------------------------ how a run goes on

def after_divergence(args, last):
    """What is on disk after a divergence, and the command that goes on from `last` (the
    last checkpoint, or None); the flags beyond --lr and --clip that can make a run diverge
    are named where this run set them."""
    others = divergent_flags(args)
    also = (f' (this run also has {others}, which can make the loss diverge whatever the '
            'rate: where a lower --lr does not help, change those)' if others else '')
    if last is None:
        return (f'Nothing was saved; start again with a lower --lr (now {args.lr:g}) or '
                f'--clip (now {args.clip:g}){also}.')
    return (f'The files on disk are unchanged; resume from the last checkpoint with a lower '
            f'--lr (now {args.lr:g}), or --clip (now {args.clip:g}){also}: '
            f'{resume_command(last, lr=args.lr / 2)}')


def divergent_flags(args):
    """The flags besides --lr and --clip set in this run that scale the loss or the weights
    (a large --al_weight or --init_range, an extreme --al_temperature), as 'and'-joined
    text; '' where none is set."""
    named = []
    if args.al_weight:
        named.append(f'--al_weight {args.al_weight:g} --al_temperature {args.al_temperature:g}')
    for name in ('proj_reg', 'alpha', 'beta', 'init_range'):
        if getattr(args, name):
            named.append(f'--{name} {getattr(args, name):g}')
    return ' and '.join(named)


def how_to_go_on(last, best):
    """After a failed write: the command that resumes from `last`, where a last checkpoint
    exists; otherwise how to start again without losing the best model so far (`best`)."""
    if last is not None and os.path.exists(last):
        return f'The files already on disk are unchanged; resume with: {resume_command(last)}'
    if os.path.exists(best):
        return (f'There is no last checkpoint to resume from; the best model so far is '
                f'{best}. Copy it elsewhere to keep it, then start again with '
                f'--overwrite, or with another --save_path')
    return 'Nothing was saved; start again once the file can be written'


def after_stop(last):
    """After a signal stopped training: how to go on from `last`, or why nothing can."""
    if last is None:
        return 'No epoch had started, so there is nothing to resume.'
    return f'Resume with: {resume_command(last)}'


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
