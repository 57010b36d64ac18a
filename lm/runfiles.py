"""The files of one run beside --save_path, the lock that makes the save path one run's, and
the metrics CSV (the checkpoints' contents: lm.checkpoint; the resume rules: lm.resume).
"""
import csv
import errno
import io
import os
from typing import NamedTuple

from lm import UserError
from lm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    stale_temporaries,
    temporary_beside,
    write_atomically,
)

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
