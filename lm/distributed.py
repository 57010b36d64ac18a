"""Training on several processes (GPUs or CPU processes, one machine or several), launched by
torchrun, with PyTorch's DistributedDataParallel. Everything that differs from a single
process lives here; without torchrun, `setup()` returns a `Single` that does nothing.

    torchrun --standalone --nproc_per_node 4 demo_tie.py --tied

How the batch is shared. --batch_size B stays the number of parallel streams of the whole
job. With N processes, process r holds rows r*B/N ... (r+1)*B/N - 1 of the batched stream
(data.batchify) and carries the LSTM state of those rows from window to window:

    rows 0..9    -> process 0         (B = 20, N = 2)
    rows 10..19  -> process 1

Each process's loss is the mean over its rows; DDP averages the gradients, so the update is
the one a single process would make on all B rows. Evaluation scores each process's rows and
adds the sums across processes, so every token counts once. Rank 0 alone prints and writes
files; a last checkpoint gathers every process's hidden state (back into the single-process
layout of B rows) and random state, so a CPU run resumes exactly on the same number of
processes (on GPUs, cuDNN's dropout state and kernels are outside it: see docs/resuming.md).
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist

from lm import UserError
from lm.device import pick_device

# A process that waits longer than this for the others (one of them died or hangs) fails,
# and torchrun then ends the whole job, rather than leaving it blocked forever.
TIMEOUT = datetime.timedelta(minutes=10)


class ShareError(UserError, ValueError):
    """A batch that the processes cannot share evenly."""


class Single:
    """One process: the distributed operations are the identity."""
    world_size, rank, is_main = 1, 0, True

    def rows(self, tensor, dim=0):
        return tensor

    def wrap(self, model):
        return model

    def sum(self, tensor):
        return tensor

    def mean(self, tensor):
        return tensor

    def gather_rows(self, tensor):
        return tensor

    def gather_objects(self, obj):
        return [obj]

    def stop_agreed(self, local, now=False):
        return local

    def finish(self):
        pass

    def close(self, status):
        pass


class Distributed(Single):
    def __init__(self, device):
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.is_main = self.rank == 0
        self.device = device
        # NCCL needs a device read to see a stop flag, so on GPUs the processes compare
        # theirs every 50 windows (a few seconds); on CPUs (gloo) at every window.
        self.stop_every = 1 if device.type == 'cpu' else 50
        self.calls = 0

    def rows(self, tensor, dim=0):
        """This process's share of the batch rows (dimension `dim` of `tensor`)."""
        if tensor.size(dim) % self.world_size:
            raise ShareError(f'--batch_size {tensor.size(dim)} cannot be shared by '
                             f'{self.world_size} processes; use a multiple of {self.world_size}')
        per = tensor.size(dim) // self.world_size
        return tensor.narrow(dim, self.rank * per, per)

    def wrap(self, model):
        # The tied embedding's sparse gradient (a CPU speed-up) would meet DDP's dense
        # all-reduce; under DDP the gradient stays dense.
        model.sparse_tied_grad = False
        ids = [self.device.index] if self.device.type == 'cuda' else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sum(self, tensor):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, tensor):
        return self.sum(tensor) / self.world_size

    def gather_rows(self, tensor):
        """(layers, rows, hidden) pieces of every process, joined along the rows in rank order."""
        pieces = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(pieces, tensor.contiguous())
        return torch.cat(pieces, dim=1)

    def gather_objects(self, obj):
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def stop_agreed(self, local, now=False):
        """True on every process as soon as one of them was asked to stop: all of them compare
        their flags at the same window (every `stop_every` calls, or `now`)."""
        self.calls += 1
        if self.calls % self.stop_every and not now:
            return False
        flag = torch.tensor([int(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def finish(self):
        """Called by every process once its work has ended normally: none tears down its
        connections while another is still receiving the last sums (gloo aborts a process
        whose peer leaves in mid-exchange: "terminate called without an active exception")."""
        dist.barrier()

    def close(self, status):
        """Leave the group. After a normal end (`status` not None) the process also ends here,
        with `status`: at interpreter exit, gloo's C++ teardown sometimes aborts a process
        whose work is complete ("terminate called without an active exception", SIGABRT, on
        busy CPUs) and torchrun then fails the whole job. os._exit skips
        that teardown; every file this process wrote is already closed, and the OS drops its
        lock. With an unexpected error (`status` None) Python exits as usual, with its traceback."""
        if dist.is_initialized():
            dist.destroy_process_group()
        if status is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


def launched_by_torchrun():
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def setup(device_name):
    """(Single or Distributed, device). Under torchrun: one process per GPU (its LOCAL_RANK)
    with NCCL, or CPU processes with gloo (--device cpu, or no GPU)."""
    if not launched_by_torchrun():
        return Single(), pick_device(device_name)
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = pick_device(device_name)
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
        backend = 'nccl'
    elif device.type == 'cpu':
        backend = 'gloo'
    else:
        raise ValueError(f'torchrun runs on CUDA or CPU processes, not {device}')
    dist.init_process_group(backend, timeout=TIMEOUT)
    group = Distributed(device)
    if not group.is_main:
        sys.stdout = open(os.devnull, 'w')  # noqa: SIM115  rank 0 speaks for the job
    return group, device
