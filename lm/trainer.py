"""The steps of a training run that demo_tie.py's loop calls: set the run up (claim the save
path, read the data, build or restore the model and optimizer), train one epoch, validate,
step the schedule, save the best model, the metrics row and the last checkpoint, and stop
cleanly on a signal. Nothing here prints the run's lines; demo_tie.py does.
"""
import contextlib
import math
import signal
import time
import uuid
from dataclasses import dataclass, field, replace

import torch

import data
from lm import UserError, checkpoint, flags, loop, optim, resume, runfiles
from lm.console import progress, warn
from lm.device import allocation_failure, out_of_memory, speedups
from lm.loss import Objective
from lm.recipes import apply_recipe
from lm.rng import rng_state, seed_process
from lm.signals import StopRequest
from model import LSTMLanguageModel, build, init_uniform, model_args


class RunError(UserError):
    """A run that cannot go on (diverged, out of memory, a file it cannot write)."""


# ------------------------------------------------------------------ set the run up

@dataclass
class Run:
    """What the steps of one run share: fixed by start_run, then advanced epoch by epoch."""
    args: object                  # the flags, settled (from the checkpoint on resume)
    group: object                 # lm.distributed.Single, or Distributed under torchrun
    files: runfiles.RunFiles
    corpus: data.Corpus
    streams: dict                 # 'train', 'valid', 'test': this process's batched rows
    model: LSTMLanguageModel
    scheduler: object             # ReduceLROnPlateau
    stepping: loop.Stepping       # how train_epoch steps (optimizer, --amp, the loss, NT-ASGD)
    evaluator: object             # what validation runs (the compiled model, never DDP's)
    run_id: str                   # shared by this run's best and last checkpoints
    stop: StopRequest = None      # the signal handler: whether a signal asked to stop
    changes: list = field(default_factory=list)  # (flag, old, new) changed on resume/finetune
    finetuned: dict = None        # the checkpoint --finetune starts from
    resumed_from: str = None      # the last checkpoint this run continues, if any
    next_epoch: int = 1
    position: dict = None         # where in next_epoch a resumed run starts (None: its start)
    best_val: float = math.inf
    val_loss: float = None        # the newest epoch's validation loss
    val_losses: list = field(default_factory=list)  # every epoch's, for NT-ASGD's trigger
    wrote_last: bool = False      # a last checkpoint already on disk may be an earlier run's
    metrics: runfiles.MetricsLog = None  # the first process's CSV

    @property
    def resumable(self):
        """The last checkpoint this run can go on from: the one it wrote, else the one it
        resumed from; None where there is neither."""
        return self.files.last if self.wrote_last else self.resumed_from

    def windows(self, epoch):
        """The epoch's training windows (data.epoch_windows)."""
        a = self.args
        return data.epoch_windows(self.streams['train'], a.seq_length, epoch, a.variable_bptt,
                                  a.seed)


def start_run(args, given, device, group, stop):
    """Claim the save path, settle the flags (from the checkpoint on resume or --finetune),
    read the data, build the model and optimizer, and restore them on resume."""
    apply_recipe(args, given)  # then settle_resume takes what was not given from a resumed
    # checkpoint, the recipe's flags included
    resuming = args.resume is not None
    files = runfiles.claim_save_path(args.save_path, resuming, args.overwrite, group)
    ckpt = resume_path = None
    changes = []
    if resuming:
        ckpt, resume_path, changes = resume.settle_resume(args, given, files)
        checkpoint.check_stored_args(ckpt, resume_path, flags.build_parser())
    source = None
    if args.finetune:
        source = checkpoint.load_checkpoint(args.finetune)
        checkpoint.check_stored_args(source, args.finetune, flags.build_parser())
        changes = resume.merge_finetune_args(args, given, source, args.finetune)
    if args.proj_reg and not args.projection:  # on resume and --finetune: the model's own
        raise RunError(f'--proj_reg penalises the matrix of --projection, and the model of '
                       f'{resume_path or args.finetune} has none; leave --proj_reg out')
    corpus = read_data(args, files, group, ckpt, resume_path, source)
    model = build(model_args(args, len(corpus.vocab)))
    if args.init_range:
        init_uniform(model, args.init_range)
    model = model.to(device)
    if source is not None:
        checkpoint.load_weights(model, source)
    streams = {split: group.rows(data.batchify(getattr(corpus, split), args.batch_size)).to(device)
               for split in data.SPLITS}  # each process's rows of each stream
    optimizer = optim.make_optimizer(model, args.lr, args.weight_decay, args.optimizer)
    scheduler = optim.make_scheduler(optimizer, args.lr_factor, args.lr_patience)
    forward, autocast_dtype, scaler = speedups(args, model, group.wrap(model), device,
                                               streams['train'].size(0), group)
    stepping = loop.Stepping(optimizer, args.clip, forward, autocast_dtype, scaler,
                             Objective.from_flags(args),
                             average_losses=group.mean if group.world_size > 1 else None)
    run = Run(args, group, files, corpus, streams, model, scheduler, stepping,
              evaluator=forward if group.world_size == 1 else model, run_id=uuid.uuid4().hex,
              stop=stop, changes=changes, finetuned=source)
    seed_process(args.seed, group.rank)
    if ckpt is not None:
        resume_from(run, ckpt, resume_path, given)
    if source is not None and args.optimizer == 'ntasgd':  # AWD-LSTM's finetune
        run.stepping = replace(stepping, weight_average=optim.WeightAverage(model))
    return run


def read_data(args, files, group, ckpt, resume_path, source):
    """The corpus, checked against the run being resumed; under --finetune read with the
    model's vocabulary. An earlier run's files are deleted (--overwrite) only now, so that a
    typo in --data_dir does not cost them."""
    corpus = data.load_corpus(args.data_dir, vocab=source and source['vocab'],
                              max_vocab=args.max_vocab, min_count=args.min_count)
    data.check_sizes(corpus, args.batch_size, args.seq_length)
    if ckpt is not None:
        checkpoint.check_same_data(ckpt, resume_path, corpus, args.data_dir)
    elif args.overwrite and group.is_main:
        files.delete_earlier_run()
    return corpus


def resume_from(run, ckpt, path, given):
    """Continue the run of the last checkpoint at `path`: its weights, optimizer, schedule,
    position and random state, with the flags of run.changes applied from the next window."""
    args = run.args
    for note in resume.keep_ignored(args, given, ckpt):
        warn(note, run.group.is_main)
    restored = checkpoint.restore_training(
        ckpt, path, run.model, run.stepping.optimizer, run.scheduler, run.stepping.scaler,
        lambda epoch: len(run.windows(epoch)), args.batch_size)
    run.next_epoch, run.best_val, run.position = restored[:3]
    run.val_losses = restored.val_losses
    run.stepping = replace(run.stepping, weight_average=restored.weight_average)
    changed_processes = checkpoint.restore_random_state(ckpt, path, run.group, args.seed)
    if changed_processes:
        warn(changed_processes, run.group.is_main)
    run.run_id = ckpt.get('run_id')  # None for a checkpoint from before run ids
    run.resumed_from = path
    optim.apply_changes(run.changes, run.stepping.optimizer, run.scheduler)


# ------------------------------------------------------------------ each epoch

@dataclass
class EpochRun:
    result: object        # lm.loop.EpochResult
    windows: list         # the epoch's (start, length) windows
    started: float        # time.monotonic() when the epoch began, less its time before a resume
    train_seconds: float  # training time, validation left out

    @property
    def finished(self):
        return self.result.next_window == len(self.windows)


def train_one_epoch(run, epoch, on_window=None):
    """Train `epoch` from its start, or from where a resumed run stopped in it; stop early,
    at a window's edge, when a signal asked for it. `on_window(epoch, k)` is called after
    each window k (0-based)."""
    args, group = run.args, run.group
    windows = run.windows(epoch)
    lr_factors = optim.window_lr_factors(windows, args.seq_length, epoch, args.epochs,
                                         args.schedule, args.warmup, args.variable_bptt,
                                         **optim.step_flags(args))
    start, seconds = loop.EpochStart(), 0.0
    if run.position is not None:  # resuming in mid-epoch
        start, seconds = checkpoint.resumed_start(run.position, group.rows,
                                                  run.streams['train'].device)
        run.position = None
    started = time.monotonic() - seconds
    with progress(len(windows), f'Epoch {epoch}', shown=group.is_main,
                  initial=start.window) as bar:
        def show(k, running_loss):
            bar.update()
            if running_loss is not None:
                bar.set_postfix(loss=f'{running_loss:.3f}',
                                ppl=f'{loop.perplexity(running_loss):.1f}')
            if on_window is not None:
                on_window(epoch, k)
        try:
            result = loop.train_epoch(
                run.model, run.streams['train'], windows, run.stepping, start, lr_factors,
                lambda: group.stop_agreed(run.stop.signum is not None), show)
        except loop.NonFiniteLoss as e:
            raise RunError(f'the training loss became NaN or infinite in epoch {epoch}, window '
                           f'{e.window} of {len(windows)}. '
                           f'{resume.after_divergence(run.args, run.resumable)}') from None
    return EpochRun(result, windows, started, time.monotonic() - started)


def averaged(run):
    """Inside this block the model holds NT-ASGD's mean weights, once there is a mean."""
    average = run.stepping.weight_average
    return average.in_use(run.model) if average is not None else contextlib.nullcontext()


def validate(run):
    """(loss, loss without <sos>) on the validation split, of NT-ASGD's mean once there is
    one. Weights or a validation loss that are not finite end the run (RunError) before
    anything of the epoch is saved."""
    valid = run.streams['valid']
    with progress(len(data.window_starts(valid, run.args.seq_length)), 'Validation',
                  shown=run.group.is_main) as bar, averaged(run):
        run.val_loss, val_no_sos = loop.evaluate(
            run.model, valid, run.args.seq_length, forward=run.evaluator,
            autocast_dtype=run.stepping.autocast_dtype, add_across=run.group.sum,
            on_window=lambda k: bar.update())
    finite = torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()
    # A loss whose perplexity overflows (9.9e30 after --lr 1e30) is a ruined model too: saved,
    # it would become the checkpoint that every later advice resumes from.
    if not math.isfinite(loop.perplexity(run.val_loss)) or not finite:  # one read from the device
        raise RunError(f'the model diverged: its validation loss is {run.val_loss:g} at the end '
                       f'of this epoch. {resume.after_divergence(run.args, run.resumable)}')
    return run.val_loss, val_no_sos


def step_schedule(run, epoch, val_loss):
    """Step the plateau schedule on `val_loss`; the learning rates the next epoch starts at
    (its first window's, under the schedules that are a function of the position)."""
    args = run.args
    if args.schedule == 'plateau':
        run.scheduler.step(val_loss)
    reached = optim.schedule_factor(epoch, epoch, args.epochs, args.schedule, args.warmup,
                                    **optim.step_flags(args))
    return [g['lr'] * reached for g in run.stepping.optimizer.param_groups]


def save_best(run, epoch, val_loss):
    run.best_val = val_loss
    if run.group.is_main:
        with averaged(run), writing(run):
            runfiles.save_checkpoint(best_of(run, epoch, val_loss), run.files.best)


def best_of(run, epoch, val_loss):
    return checkpoint.best_checkpoint(run.model, run.corpus.vocab, run.args, epoch, val_loss,
                                      run.run_id)


def start_averaging_when_due(run, val_loss):
    """NT-ASGD: from the step after the epoch that triggers it, keep the weights' mean.
    Returns whether it starts now."""
    args, starts = run.args, False
    if (args.optimizer == 'ntasgd' and run.stepping.weight_average is None
            and optim.averaging_should_start(run.val_losses, val_loss, args.nonmono)):
        run.stepping = replace(run.stepping, weight_average=optim.WeightAverage(run.model))
        starts = True
    run.val_losses.append(val_loss)
    return starts


def write_metrics_row(run, epoch, done, val_no_sos, lr, seconds):
    if run.metrics is None:  # not the first process
        return
    tokens = run.streams['train'].numel() * run.group.world_size
    with writing(run):
        run.metrics.append_epoch(epoch, loop.epoch_loss(done.result.losses, done.windows),
                                 run.val_loss, val_no_sos, lr, seconds,
                                 tokens / done.train_seconds)


@contextlib.contextmanager
def writing(run):
    """A block that writes one of the run's files: only while this run still holds the save
    path's lock, and never cut short by a signal."""
    runfiles.check_lock(run.files)
    with run.stop.writing():
        yield


def save_last(run, epoch, done, position=None):
    """Write the last checkpoint after `done` (an EpochRun): at an epoch's end (`position`
    None) or where a signal stopped it. Every process takes part (the hidden and random
    states are gathered); the first one writes."""
    rngs = run.group.gather_objects(rng_state())
    if run.group.is_main:
        with writing(run):
            runfiles.save_checkpoint(checkpoint.last_checkpoint(
                best_of(run, epoch, run.val_loss), optimizer=run.stepping.optimizer,
                scheduler=run.scheduler, scaler=run.stepping.scaler, best_val_loss=run.best_val,
                val_losses=run.val_losses, weight_average=run.stepping.weight_average, rngs=rngs,
                position=position, window_losses=done.result.losses,
                fingerprint=checkpoint.data_fingerprint(run.corpus)), run.files.last)
    run.wrote_last = True


def save_stopped_epoch(run, epoch, done):
    """A signal stopped `epoch` in the middle: keep where, to continue from there."""
    save_last(run, epoch, done, checkpoint.stopped_position(done.result, done.started,
                                                            run.group.gather_rows))


@contextlib.contextmanager
def saving(run):
    """Training: a file that cannot be written, or memory that cannot be had, ends the run
    with a message that says how to go on from the files on disk (each written whole)."""
    try:
        yield
    except OSError as e:
        raise RunError(f'could not write {e.filename or "a checkpoint"}: '
                       f'{runfiles.write_failure(e)}. '
                       f'{resume.how_to_go_on(run.resumable, run.files.best)}') from None
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise RunError(f'out of memory in training ({allocation_failure(e)}); a smaller '
                       f'--batch_size or model needs less. '
                       f'{resume.how_to_go_on(run.resumable, run.files.best)}') from None


# ------------------------------------------------------------------ the end

def stopped_status(run):
    """After a signal: (the line that says how to resume, the exit status). SIGTERM, SIGHUP
    and a run with no finished epoch end there; after Ctrl-C (status None) the best model
    is still tested."""
    signum = run.stop.signum or signal.SIGTERM  # another process's signal stops this one too
    ends = signum != signal.SIGINT or math.isinf(run.best_val)
    line = f'Training stopped by {signal.Signals(signum).name}. {resume.after_stop(run.resumable)}'
    return line, 128 + signum if ends else None


def load_best(run):
    """Put this run's best model, reloaded from disk, into run.model, on every process."""
    if math.isinf(run.best_val):
        raise RunError('no epoch finished, so there is no best model to test')
    found = None
    if run.group.is_main:  # loaded on the CPU: every process copies it onto its own device
        try:
            found = checkpoint.load_best_of_run(run.files.best_of_run(run.resumed_from),
                                                run.run_id)['model_state']
        except checkpoint.CheckpointError as e:
            found = str(e)
    found = run.group.gather_objects(found)[0]  # a refusal too, so that every process ends
    if isinstance(found, str):
        raise RunError(found)
    run.model.load_state_dict(found)

