"""Everything about the files of one run beside --save_path: their names, atomic writes and
the temporaries they leave, the lock that makes the save path one run's, the claim of the path
with the messages about an earlier run, and the metrics CSV (what a checkpoint holds:
lm.checkpoint; the resume rules: lm.resume).
"""
import csv
import errno
import glob
import io
import os
import tempfile
from typing import NamedTuple

import torch

from lm import UserError
from lm.checkpoint import CheckpointError, load_checkpoint
from lm.loop import perplexity

try:
    import resource
except ImportError:  # Windows
    resource = None

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two runs on one path are not detected there
    fcntl = None


class SavePathError(UserError):
    """A --save_path that cannot hold a run's files, or holds another run's."""


class LockError(UserError):
    """The save path is, or may be, another live run's."""


class MetricsError(UserError):
    """A metrics CSV the trainer cannot read back; it is left as it is."""


METRICS_COLUMNS = ['epoch', 'train_loss', 'train_ppl', 'val_loss', 'val_ppl', 'val_loss_no_sos',
                   'val_ppl_no_sos', 'lr', 'seconds', 'train_tokens_per_s']


LAST_SUFFIX = '.last.pt'


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


class RunFiles(NamedTuple):
    """The files of one run, beside --save_path (best_model.pt by default)."""
    best: str     # best_model.pt: the model with the best validation loss
    last: str     # best_model.last.pt: all that --resume needs (checkpoint.last_checkpoint)
    metrics: str  # best_model.csv: one row of metrics per epoch (MetricsLog)
    lock: str     # best_model.lock: held while the run lives (hold_lock)

    @classmethod
    def beside(cls, save_path):
        """best_model.pt -> best_model.pt, best_model.last.pt, best_model.csv, best_model.lock;
        refuses a path whose files would be one another (m.csv) or another run's (m.last.pt),
        that names no file, or that is something other than a regular file (/dev/null). Any
        two save paths with a file in common share the lock. A symbolic link is followed: the
        run's files are named after, and written to, what it points to (a dangling link
        included), so that --resume finds them through the link or the target alike."""
        if not save_path or save_path.endswith(('/', os.sep)) or os.path.isdir(save_path):
            raise SavePathError(f'--save_path {save_path!r} names no file; give one such as '
                                  'runs/model.pt')
        if os.path.islink(save_path):
            save_path = os.path.realpath(save_path)
        if save_path.endswith(LAST_SUFFIX):  # its best model would be another run's last
            raise SavePathError(f'--save_path {save_path} is the name of a last checkpoint, '
                                f'the companion of the run at {save_path[:-len(LAST_SUFFIX)]}.pt; '
                                f'give the best model\'s name, such as that one, or another')
        stem = os.path.splitext(save_path)[0]
        files = cls(save_path, stem + LAST_SUFFIX, stem + '.csv', stem + '.lock')
        if len({os.path.abspath(p) for p in files}) < len(files):
            raise SavePathError(f'--save_path {save_path} would make the checkpoint and its '
                                  f'companions ({files.last}, {files.metrics}) the same file; use '
                                  f'a name ending in .pt')
        for path in files:
            if os.path.exists(path) and not os.path.isfile(path):
                raise SavePathError(f'{path} is not a regular file (a device, a pipe or a '
                                      'socket); give a --save_path where the run can write its '
                                      'own files')
        return files

    def check_writable(self):
        """Fail now, not after hours of training, if the run's files cannot be written: each
        one's temporary file, the longest name the run writes, gets a byte (so a file-size
        limit of 0 or a name too long shows now). Their folder is made here, so that the lock
        can be taken there."""
        for path in self:
            if os.path.isdir(path):
                raise SavePathError(f'cannot write checkpoint {path}: it is a folder')
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                if path == self.lock:
                    continue  # a shorter name than the others' temporaries, written by hold_lock
                fd, tmp = temporary_beside(path)
                try:
                    os.write(fd, b'0')
                finally:
                    os.close(fd)
                    os.remove(tmp)
            except OSError as e:
                raise SavePathError(f'cannot write checkpoint {path}: {write_failure(e)}') \
                    from None

    def existing(self):
        return [p for p in (self.best, self.last, self.metrics) if os.path.exists(p)]

    def best_of_run(self, resumed_from):
        """Where a run's best model is: `best`, or, for a run resumed (from the last
        checkpoint `resumed_from`) into a new --save_path that has not improved on it yet,
        beside the last checkpoint it resumed."""
        if os.path.exists(self.best) or not resumed_from:
            return self.best
        earlier = resumed_from.removesuffix(LAST_SUFFIX) + '.pt'
        return earlier if os.path.exists(earlier) else self.best

    def check_ours(self):
        """--overwrite deletes only what this project wrote: checkpoints it can read and a
        metrics CSV with its header. Refuses (SavePathError) naming anything else."""
        for path in self.existing():
            try:
                if path == self.metrics:
                    read_metrics(path)
                else:
                    load_checkpoint(path)
            except (CheckpointError, MetricsError):
                raise SavePathError(
                    f'{path} is not a file this trainer wrote, and --overwrite deletes only '
                    'those; move it away or use another --save_path') from None

    def delete_earlier_run(self):
        """--overwrite: called once the new run's data has been read, so that a typo in
        --data_dir does not cost the earlier run's files (check_ours has vetted them)."""
        for path in self.existing():
            os.remove(path)

    def remove_stale_temporaries(self):
        """Temporary files left by a write that was killed; called while holding the lock, so
        none of them can be another live run's."""
        for path in (self.best, self.last, self.metrics):
            for tmp in stale_temporaries(path):
                try:
                    os.remove(tmp)
                except OSError:
                    pass


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


def claim_save_path(save_path, resuming, overwrite, group):
    """Before anything is read: the run's files at `save_path`, checked writable and locked.
    A fresh run is refused where an earlier run left files, unless `overwrite`. Only the
    first process checks and locks; a refusal by it ends every process with its message
    (rather than leaving the others to fail at their next exchange, a traceback each)."""
    files = RunFiles.beside(save_path)
    refusal = None
    if group.is_main:
        try:
            files.check_writable()
            hold_lock(files)
            files.remove_stale_temporaries()
            if not resuming and files.existing():
                if not overwrite:
                    raise SavePathError(earlier_run_message(files))
                files.check_ours()
        except (SavePathError, LockError) as e:
            refusal = e
    refusal = group.gather_objects(refusal)[0]  # the first process's, on every process
    if refusal:
        raise refusal
    return files


def nothing_to_resume_hint(files, resume_path):
    """What to do when --resume finds no last checkpoint, as the files at --save_path allow:
    --overwrite only where an earlier run left files to delete."""
    if os.path.abspath(resume_path) != os.path.abspath(files.last):
        return ' (a run\'s last checkpoint is the ".last.pt" file beside its --save_path)'
    if files.existing():
        return f'; {earlier_run_message(files)}'
    return (f'; nothing is there to resume: no run has saved at --save_path {files.best} yet. '
            'Start one with the same command without --resume')


def write_failure(error):
    """Why a write failed, in words that say what to change."""
    reason = error.strerror or str(error)
    if error.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else None
        if limit not in (None, getattr(resource, 'RLIM_INFINITY', None)):
            return f'{reason}: this process may write files of {limit} bytes at most (ulimit -f)'
    if error.errno == errno.ENAMETOOLONG:
        return (f'{reason}: the run writes temporary files named .NAME.XXXXXXXX.tmp beside '
                'each of its files; give a shorter --save_path')
    return reason


_held_locks = {}  # lock path -> the open file holding the OS lock


def hold_lock(files):
    """Take an exclusive OS lock on files.lock until release_lock, or the process's end. A
    second trainer on the same --save_path is refused; the OS drops the lock when a process
    dies, even by kill -9, so a lock file left behind holds nothing."""
    if fcntl is None:
        return
    if os.path.islink(files.lock):  # O_NOFOLLOW below refuses it too, with a vaguer errno
        raise LockError(f'{files.lock} is a symbolic link, and the run would write its lock '
                        'through it into the file it points to; remove the link, or use '
                        'another --save_path')
    try:
        fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0), 0o666)
        handle = os.fdopen(fd, 'r+')  # held open while the run lives
    except OSError as e:
        raise LockError(f'cannot write {files.lock}: {e.strerror or e}') from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or 'another process'
        handle.close()
        raise LockError(f'another trainer ({holder}) is writing {files.best} and its '
                              'companions; wait for it to end, or use another '
                              '--save_path') from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()}\n')
        handle.flush()
    except OSError as e:
        handle.close()
        raise LockError(f'cannot write {files.lock}: {write_failure(e)}') from None
    _held_locks[files.lock] = handle


def check_lock(files):
    """Before writing a run's file: refuse (LockError) if files.lock is no longer the
    file this process locked (deleted or replaced), since another run may then have taken the
    save path, whatever was done to the lock file."""
    handle = _held_locks.get(files.lock)
    if handle is None:
        return
    folder = os.path.dirname(os.path.abspath(files.lock))
    if not os.path.isdir(folder):
        raise LockError(f'the folder {folder} was removed while this run trained in it (its '
                        'lock, checkpoints and CSV with it); this run stopped without writing. '
                        'Start it again with a --save_path in a folder that stays')
    try:
        same = os.path.samestat(os.stat(files.lock), os.fstat(handle.fileno()))
    except OSError:
        same = False
    if not same:
        raise LockError(f'{files.lock} was deleted or replaced while this run held it, so '
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

    def append_epoch(self, epoch, train_loss, val_loss, val_no_sos, lr, seconds, tokens_per_s):
        self.rows.append({
            'epoch': epoch, 'train_loss': f'{train_loss:.6f}',
            'train_ppl': f'{perplexity(train_loss):.4f}', 'val_loss': f'{val_loss:.6f}',
            'val_ppl': f'{perplexity(val_loss):.4f}', 'val_loss_no_sos': f'{val_no_sos:.6f}',
            'val_ppl_no_sos': f'{perplexity(val_no_sos):.4f}', 'lr': lr,
            'seconds': f'{seconds:.2f}', 'train_tokens_per_s': f'{tokens_per_s:.1f}'})
        self._write()

    def _write(self):
        out = io.StringIO()
        writer = csv.DictWriter(out, METRICS_COLUMNS, extrasaction='ignore', lineterminator='\n')
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomically(self.path, lambda f: f.write(out.getvalue().encode('utf-8')))


def read_metrics(path):
    """The rows of a metrics CSV, read as a spreadsheet may have saved it (a UTF-8 byte-order
    mark, `;` between fields, CRLF). Raises MetricsError, leaving the file as it is, when
    the header is not ours or a row has no integer epoch."""
    try:
        with open(path, encoding='utf-8-sig', newline='') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsError(f'cannot read the metrics file {path} ({e}); it was left as '
                              'it is') from None
    first = text.splitlines()[0] if text.strip() else ''
    delimiter = ';' if first.count(';') > first.count(',') else ','
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if reader.fieldnames is None or 'epoch' not in reader.fieldnames \
            or not set(reader.fieldnames) <= set(METRICS_COLUMNS):
        raise MetricsError(f'{path} is not a metrics file this trainer wrote (its header is '
                              f'{first[:80]!r}); it was left as it is. Move it away to resume')
    rows = list(reader)
    bad = [i + 2 for i, r in enumerate(rows) if not (r.get('epoch') or '').strip().isdigit()]
    if bad:
        raise MetricsError(f'{path}, line {bad[0]}: no epoch number; it was left as it is. '
                              'Fix or remove that line to resume')
    return [{k: (v or '').strip() for k,
             v in r.items() if k} | {'epoch': int(r['epoch'])} for r in rows]
