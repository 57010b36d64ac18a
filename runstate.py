"""What outlives the process, but for the checkpoints' contents (checkpoint.py): the run's
files and their lock, seeds and RNG states, which flags a resume takes from the checkpoint,
the metrics CSV, and the command that resumes (signals: stopping.py).
"""
import csv
import glob
import io
import os
import random
import shlex
import sys
from typing import NamedTuple

import numpy as np
import torch

from checkpoint import (
    NOT_RESUMABLE,
    CheckpointError,
    check_writable,
    damaged,
    load_checkpoint,
    load_last_checkpoint,
    write_atomically,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two runs on one path are not detected there
    fcntl = None

METRICS_COLUMNS = ['epoch', 'train_loss', 'train_ppl', 'val_loss', 'val_ppl', 'val_loss_no_sos',
                   'val_ppl_no_sos', 'lr', 'seconds', 'train_tokens_per_s']


class RunFiles(NamedTuple):
    """The files of one run, beside --save_path (best_model.pt by default)."""
    best: str     # best_model.pt: the model with the best validation loss
    last: str     # best_model.last.pt: all that --resume needs (checkpoint.last_checkpoint)
    metrics: str  # best_model.csv: one row of metrics per epoch (MetricsLog)
    lock: str     # best_model.lock: held while the run lives (hold_lock)

    @classmethod
    def beside(cls, save_path):
        """best_model.pt -> best_model.pt, best_model.last.pt, best_model.csv, best_model.lock;
        refuses a path whose files would be one another (m.csv), that names no file, or that
        is something other than a regular file (/dev/null). A symbolic link is followed: the
        run's files are named after, and written to, what it points to (a dangling link
        included), so that --resume finds them through the link or the target alike."""
        if not save_path or save_path.endswith(('/', os.sep)) or os.path.isdir(save_path):
            raise CheckpointError(f'--save_path {save_path!r} names no file; give one such as '
                                  'runs/model.pt')
        if os.path.islink(save_path):
            save_path = os.path.realpath(save_path)
        stem = os.path.splitext(save_path)[0]
        files = cls(save_path, stem + '.last.pt', stem + '.csv', stem + '.lock')
        if len({os.path.abspath(p) for p in files}) < len(files):
            raise CheckpointError(f'--save_path {save_path} would make the checkpoint and its '
                                  f'companions ({files.last}, {files.metrics}) the same file; use '
                                  f'a name ending in .pt')
        for path in files:
            if os.path.exists(path) and not os.path.isfile(path):
                raise CheckpointError(f'{path} is not a regular file (a device, a pipe or a '
                                      'socket); give a --save_path where the run can write its '
                                      'own files')
        return files

    def existing(self):
        return [p for p in (self.best, self.last, self.metrics) if os.path.exists(p)]

    def check_ours(self):
        """--overwrite deletes only what this project wrote: checkpoints it can read and a
        metrics CSV with its header. Refuses (CheckpointError) naming anything else."""
        for path in self.existing():
            try:
                if path == self.metrics:
                    read_metrics(path)
                else:
                    load_checkpoint(path)
            except CheckpointError:
                raise CheckpointError(
                    f'{path} is not a file this trainer wrote, and --overwrite deletes only '
                    'those; move it away or use another --save_path') from None

    def delete_earlier_run(self):
        """--overwrite: called once the new run's data has been read, so that a typo in
        --data_dir does not cost the earlier run's files (check_ours has vetted them)."""
        for path in self.existing():
            os.remove(path)

    def remove_stale_temporaries(self):
        """Temporary files left by a write that was killed (save_checkpoint's `.NAME.*.tmp`);
        called while holding the lock, so none of them can be another live run's."""
        for path in (self.best, self.last, self.metrics):
            folder, name = os.path.split(os.path.abspath(path))
            for tmp in glob.glob(os.path.join(glob.escape(folder), f'.{glob.escape(name)}.*.tmp')):
                try:
                    os.remove(tmp)
                except OSError:
                    pass


_held_locks = {}  # lock path -> the open file holding the OS lock


def hold_lock(files):
    """Take an exclusive OS lock on files.lock until release_lock, or the process's end. A
    second trainer on the same --save_path is refused; the OS drops the lock when a process
    dies, even by kill -9, so a lock file left behind holds nothing."""
    if fcntl is None:
        return
    try:
        handle = open(files.lock, 'a+')  # noqa: SIM115  held open while the run lives
    except OSError as e:
        raise CheckpointError(f'cannot write {files.lock}: {e.strerror or e}') from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or 'another process'
        handle.close()
        raise CheckpointError(f'another trainer ({holder}) is writing {files.best} and its '
                              'companions; wait for it to end, or use another '
                              '--save_path') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()}\n')
    handle.flush()
    _held_locks[files.lock] = handle


def check_lock(files):
    """Before writing a run's file: refuse (CheckpointError) if files.lock is no longer the
    file this process locked (deleted or replaced), since another run may then have taken the
    save path, whatever was done to the lock file."""
    handle = _held_locks.get(files.lock)
    if handle is None:
        return
    try:
        same = os.path.samestat(os.stat(files.lock), os.fstat(handle.fileno()))
    except OSError:
        same = False
    if not same:
        raise CheckpointError(f'{files.lock} was deleted or replaced while this run held it, so '
                              f'another run may be writing {files.best}; this run stopped '
                              'without writing. Give each run its own --save_path')


def release_locks():
    """At the run's end: remove each lock file this process holds, if it is still the one it
    locked, and release the lock."""
    while _held_locks:
        path, handle = _held_locks.popitem()
        try:
            if os.path.samestat(os.stat(path), os.fstat(handle.fileno())):
                os.remove(path)
        except OSError:
            pass
        handle.close()


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
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    key, pos, has_gauss, cached = state['numpy']
    np.random.set_state(('MT19937', key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['random']
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------ what a resume agrees on

# Flags that define the model or the data: on resume they come from the checkpoint, and one
# given that says otherwise is refused.
FIXED_ON_RESUME = ('embed_size', 'hidden_size', 'num_layers', 'tied', 'max_vocab', 'min_count',
                   'recipe', 'variational', 'optimizer', 'schedule')
# Flags that may change on resume: the new value is applied from the next window on, and said.
CHANGEABLE_ON_RESUME = ('epochs', 'lr', 'weight_decay', 'lr_factor', 'lr_patience', 'clip',
                        'dropout', 'dropouti', 'dropouth', 'dropoute', 'wdrop', 'alpha', 'beta',
                        'nonmono', 'warmup')
# Fixed in the middle of an epoch (the position is a window of this layout); free between epochs.
LAYOUT = ('batch_size', 'seq_length', 'variable_bptt')
# Under --finetune: the flags of the model being fine-tuned, from its checkpoint unless given
# (those that define it must agree; its regularisers and data layout may change).
FROM_THE_MODEL = ('embed_size', 'hidden_size', 'num_layers', 'tied', 'max_vocab', 'min_count',
                  'recipe', 'variational', 'dropout', 'dropouti', 'dropouth', 'dropoute',
                  'wdrop', 'alpha', 'beta') + LAYOUT
# Flags above added after checkpoints existed, with the value every run before them had: a
# checkpoint without them is read as having these.
BEFORE_THE_FLAG = {'recipe': 'reference', 'variational': False, 'variable_bptt': False,
                   'optimizer': 'adam', 'schedule': 'plateau', 'warmup': 0.0}


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
    saved = {**BEFORE_THE_FLAG, **(ckpt.get('args') or {})}
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
            for path in files:  # makes their folder, so that the lock can be taken there
                check_writable(path)
            hold_lock(files)
            files.remove_stale_temporaries()
            if args.resume is None and files.existing():
                if not args.overwrite:
                    raise CheckpointError(earlier_run_message(files))
                files.check_ours()
        except CheckpointError as e:
            refusal = str(e)
    refusal = group.gather_objects(refusal)[0]  # the first process's, on every process
    if refusal:
        raise CheckpointError(refusal)
    if args.resume is None:
        return files, None, None, []
    resume_path = args.resume or files.last
    ckpt = load_last_checkpoint(resume_path)
    saved = {**BEFORE_THE_FLAG, **(ckpt.get('args') or {})}
    changes = merge_resume_args(args, given, saved,
                                mid_epoch=ckpt.get('position') is not None)
    return files, ckpt, resume_path, changes


def apply_changes(changes, optimizer, scheduler):
    """Put the flags changed on resume into effect (--clip and --dropout are read from `args`
    and the model's construction)."""
    for name, _, new in changes:
        if name in ('lr', 'weight_decay'):
            for group in optimizer.param_groups:
                group[name] = new
        elif name == 'lr_factor':
            scheduler.factor = new
        elif name == 'lr_patience':
            scheduler.patience = new


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


# ---------------------------------------------------------------------------- metrics CSV

class MetricsLog:
    """One CSV row per epoch, the whole file rewritten atomically at each row (a kill or a
    full disk leaves the previous version). Created with its first row. On resume, rows after
    the checkpoint's epoch (written before a crash could save that epoch's checkpoint) are
    dropped, so no epoch appears twice; a file that cannot be read whole is refused, not
    silently shortened."""

    def __init__(self, path, resume_after=None):
        self.path, self.rows = path, []
        if resume_after is not None and os.path.exists(path):
            self.rows = [r for r in read_metrics(path) if int(r['epoch']) <= resume_after]
            self._write()

    def append(self, row):
        self.rows.append(row)
        self._write()

    def _write(self):
        out = io.StringIO()
        writer = csv.DictWriter(out, METRICS_COLUMNS, extrasaction='ignore', lineterminator='\n')
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomically(self.path, lambda f: f.write(out.getvalue().encode('utf-8')))


def read_metrics(path):
    """The rows of a metrics CSV, read as a spreadsheet may have saved it (a UTF-8 byte-order
    mark, `;` between fields, CRLF). Raises CheckpointError, leaving the file as it is, when
    the header is not ours or a row has no integer epoch."""
    try:
        with open(path, encoding='utf-8-sig', newline='') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f'cannot read the metrics file {path} ({e}); it was left as '
                              'it is') from None
    first = text.splitlines()[0] if text.strip() else ''
    delimiter = ';' if first.count(';') > first.count(',') else ','
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if reader.fieldnames is None or 'epoch' not in reader.fieldnames \
            or not set(reader.fieldnames) <= set(METRICS_COLUMNS):
        raise CheckpointError(f'{path} is not a metrics file this trainer wrote (its header is '
                              f'{first[:80]!r}); it was left as it is. Move it away to resume')
    rows = list(reader)
    bad = [i + 2 for i, r in enumerate(rows) if not (r.get('epoch') or '').strip().isdigit()]
    if bad:
        raise CheckpointError(f'{path}, line {bad[0]}: no epoch number; it was left as it is. '
                              'Fix or remove that line to resume')
    return [{k: (v or '').strip() for k,
             v in r.items() if k} | {'epoch': int(r['epoch'])} for r in rows]


# ---------------------------------------------------------------------------- signals

def resume_command(last_path, command_line=None):
    """This run's command line (`command_line`, default sys.argv[1:]) with `--resume last_path`
    in place of any --resume, --overwrite or --finetune PATH it had: a stopped fine-tuning run
    resumes like any other, and --resume refuses --finetune."""
    argv, rest = [], iter(sys.argv[1:] if command_line is None else command_line)
    for arg in rest:
        if arg in ('--resume', '--finetune'):
            next_arg = next(rest, None)
            if arg == '--resume' and next_arg is not None and next_arg.startswith('-'):
                argv.append(next_arg)  # --resume took no path: that was the next flag
        elif not arg.startswith(('--resume=', '--finetune=')) and arg != '--overwrite':
            argv.append(arg)
    return ' '.join(['python', 'demo_tie.py'] + [shlex.quote(a) for a in argv]
                    + ['--resume', shlex.quote(last_path)])
