"""Train an LSTM language model, with or without weight tying, on the Penn Treebank.

    bash getdata.sh && python demo_tie.py --tied     # the reference run: 2x650, 40 epochs
    python demo_tie.py --tied --resume               # go on from the last checkpoint
    python demo_tie.py --eval_only                   # validation and test of best_model.pt

A run writes its files beside --save_path (runstate.RunFiles lists them). Read it in the order
of a run: main() -> train(), which calls start_run() (claim the save path, read the data,
build or restore the model), then for each epoch train_one_epoch() and end_epoch()
(validate, schedule, save the best, write the metrics row, save the last checkpoint), and
last finish() (test the best model).
"""
import signal
import sys

from stopping import STOP_SIGNALS, StopRequest, stop_at_once

if __name__ == '__main__':  # before PyTorch is imported (a second or more): a signal meanwhile
    for _signal in STOP_SIGNALS:  # ends the process at once, with a line, not a traceback
        signal.signal(_signal, stop_at_once)

import argparse
import contextlib
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

import data
from checkpoint import (
    CheckpointError,
    best_checkpoint,
    build_model,
    check_same_data,
    check_stored_args,
    data_fingerprint,
    last_checkpoint,
    load_checkpoint,
    load_weights,
    model_args,
    restore_training,
    save_checkpoint,
)
from device import (
    add_device_flags,
    apply_threads,
    keep_freed_memory,
    memory_of,
    mixed_precision,
)
from distributed import ShareError
from distributed import setup as setup_processes
from engine import (
    EpochStart,
    NonFiniteLoss,
    Stepping,
    WeightAverage,
    averaging_should_start,
    epoch_loss,
    evaluate,
    make_optimizer,
    perplexity,
    schedule_factor,
    train_epoch,
    window_lr_factors,
)
from model import (
    LSTMLanguageModel,
    count_parameters,
    detach_hidden,
    lstm_parameters,
    tied_size_problem,
)
from options import (
    explicit_flags,
    factor,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    seed_value,
)
from recipe import add_optimizer_flags, add_regularizer_flags, apply_recipe, describe_recipe
from runstate import (
    MetricsLog,
    RunFiles,
    apply_changes,
    check_lock,
    claim_save_path,
    merge_finetune_args,
    release_locks,
    restore_random_state,
    resume_command,
    rng_state,
    seed_everything,
    seed_process,
)

RULE = '-' * 41


def build_parser():
    parser = argparse.ArgumentParser(
        description='LSTM Language Model on Penn Treebank',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add('--data_dir', type=str, default='./data/penn/',
        help='Directory containing train.txt, valid.txt, test.txt')
    add('--batch_size', type=positive_int, default=20, help='Batch size')
    add('--embed_size', type=positive_int, default=650, help='Embedding size')
    add('--hidden_size', type=positive_int, default=650, help='Hidden size of LSTM')
    add('--num_layers', type=positive_int, default=2, help='Number of LSTM layers')
    add('--dropout', type=probability, default=0.5, help='Dropout probability')
    add('--lr', type=positive_float, default=0.001, help='Learning rate')
    add('--epochs', type=positive_int, default=40, help='Number of training epochs')
    add('--clip', type=positive_float, default=5.0, help='Gradient clipping')
    add('--seq_length', type=positive_int, default=30, help='Sequence length')
    add('--save_path', type=str, default='best_model.pt', help='Path to save the best model')
    add('--weight_decay', type=non_negative_float, default=1e-5,
        help='Weight decay (L2 regularization)')
    add('--lr_factor', type=factor, default=0.5,
        help='Factor by which the learning rate will be reduced')
    add('--lr_patience', type=non_negative_int, default=2,
        help='Number of epochs with no improvement after which learning rate will be reduced')
    add('--tied', action='store_true', help='Enable weight tying')
    # Beyond the reference's flags:
    add('--seed', type=seed_value, default=1111, help='Random seed (torch, numpy, random)')
    add_device_flags(parser)
    add('--resume', nargs='?', const='', default=None, metavar='PATH',
        help='Continue training from a last checkpoint; without PATH, the one beside '
             '--save_path (best_model.pt -> best_model.last.pt)')
    add('--max_vocab', type=non_negative_int, default=0,
        help='Keep at most this many words in the vocabulary, specials and <unk> included, the '
             'most frequent first; the rest become <unk> (0: no limit)')
    add('--min_count', type=positive_int, default=1,
        help='Words seen fewer times in train.txt become <unk>')
    add('--finetune', metavar='PATH', default=None,
        help="Start a new run from a trained model's weights (a best or last checkpoint), with "
             'its sizes, vocabulary, regularisers and layout (unless given) and this '
             "command's optimizer, --lr, schedule and --epochs: a finishing phase. With "
             '--optimizer ntasgd the weights are averaged from the first step, as in AWD-LSTM\'s '
             'finetune')
    add('--overwrite', action='store_true',
        help='Start afresh where an earlier run left its files at --save_path (they are deleted)')
    add('--eval_only', action='store_true',
        help='Only print the validation and test results of the checkpoint at --save_path')
    add('--amp', action='store_true',
        help='Mixed precision: bfloat16 autocast on CUDA (float16 with loss scaling where '
             'bfloat16 is missing) and on CPUs with native bfloat16 (AVX-512 BF16, AMX); '
             'float32 weights')
    add('--compile', action='store_true',
        help='torch.compile the model (first windows are slower while it compiles)')
    add_regularizer_flags(parser)
    add_optimizer_flags(parser)
    return parser


class RunError(Exception):
    """Ends the run with a message and exit status 1."""


SPEAKS = True  # False in every process but the first under torchrun


def warn(message):
    if SPEAKS:
        print(f'warning: {message}', file=sys.stderr, flush=True)


def bar(**kw):
    """A progress bar on stderr, shown by the first process only."""
    return tqdm(file=sys.stderr, disable=not SPEAKS, **kw)


# ------------------------------------------------------------------ 1. set the run up

@dataclass
class Run:
    """What the steps of one run share: fixed by start_run, then advanced epoch by epoch."""
    args: argparse.Namespace
    group: object                 # distributed.Single, or Distributed under torchrun
    files: object                 # runstate.RunFiles
    corpus: data.Corpus
    streams: dict                 # 'train', 'valid', 'test': this process's batched rows
    model: LSTMLanguageModel
    scheduler: object             # ReduceLROnPlateau
    stepping: Stepping            # how train_epoch steps (optimizer, --amp, AR/TAR, NT-ASGD)
    evaluator: object             # what validation runs (the compiled model, never DDP's)
    run_id: str                   # shared by this run's best and last checkpoints
    resumed_from: str = None      # the last checkpoint this run continues, if any
    next_epoch: int = 1
    position: dict = None         # where in next_epoch a resumed run starts (None: its start)
    best_val: float = math.inf
    val_loss: float = None        # the newest epoch's validation loss
    val_losses: list = field(default_factory=list)  # every epoch's, for NT-ASGD's trigger
    wrote_last: bool = False      # a last checkpoint already on disk may be an earlier run's
    metrics: MetricsLog = None    # the first process's CSV
    stop: StopRequest = None      # the signal handler: whether a signal asked to stop

    @property
    def optimizer(self):
        return self.stepping.optimizer


def start_run(args, given, device, group, stop):
    """Claim the save path, settle the flags (from the checkpoint on resume or --finetune),
    read the data, print the header, build the model and optimizer, and restore them on
    resume."""
    apply_recipe(args, given)  # then claim_save_path takes what was not given from a resumed
    # checkpoint, the recipe's flags included
    files, ckpt, resume_path, changes = claim_save_path(args, given, group)
    if ckpt is not None:
        check_stored_args(ckpt, resume_path, build_parser())
    source = None
    if args.finetune:
        source = load_checkpoint(args.finetune)
        check_stored_args(source, args.finetune, build_parser())
        changes = merge_finetune_args(args, given, source, args.finetune)
    corpus = read_data(args, files, group, ckpt, resume_path, source)
    model = LSTMLanguageModel(**model_args(args, len(corpus.vocab))).to(device)
    if source is not None:
        load_weights(model, source)
    print_header(args, corpus, model, group, device)
    if source is not None:
        print_finetune_header(args.finetune, source, changes)
    streams = {split: group.rows(data.batchify(getattr(corpus, split), args.batch_size)).to(device)
               for split in ('train', 'valid', 'test')}  # each process's rows of each stream
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.optimizer)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode='min', factor=args.lr_factor, patience=args.lr_patience)
    forward, autocast_dtype, scaler = speedups(args, model, group.wrap(model), device,
                                               streams['train'].size(0))
    stepping = Stepping(optimizer, args.clip, forward, autocast_dtype, scaler, args.alpha,
                        args.beta, average_losses=group.mean if group.world_size > 1 else None)
    run = Run(args, group, files, corpus, streams, model, scheduler, stepping,
              evaluator=forward if group.world_size == 1 else model, run_id=uuid.uuid4().hex,
              stop=stop)
    seed_process(args.seed, group.rank)
    if ckpt is not None:
        resume(run, ckpt, resume_path, changes, given)
    if source is not None and args.optimizer == 'ntasgd':
        run.stepping = replace(stepping, weight_average=WeightAverage(model))
        print('Averaging the weights from the first step (NT-ASGD fine-tuning, as AWD-LSTM\'s '
              'finetune)')
    return run


def read_data(args, files, group, ckpt, resume_path, source):
    """The corpus, checked against the run being resumed; under --finetune read with the
    model's vocabulary. An earlier run's files are deleted (--overwrite) only now, so that a
    typo in --data_dir does not cost them."""
    corpus = data.load_corpus(args.data_dir, vocab=source and source['vocab'],
                              max_vocab=args.max_vocab, min_count=args.min_count)
    data.check_size('train', corpus.train, args.batch_size, args.seq_length)
    for split in ('valid', 'test'):  # one target per row at least
        data.check_size(split, getattr(corpus, split), args.batch_size)
    if ckpt is not None:
        check_same_data(ckpt, resume_path, corpus, args.data_dir)
    elif args.overwrite and group.is_main:
        files.delete_earlier_run()
    return corpus


def print_header(args, corpus, model, group, device):
    print(f'Using device: {device}')
    print(f'Vocabulary size: {len(corpus.vocab)}')
    report_unknown(corpus)
    print(model)
    print(f'Total parameters: {count_parameters(model)}')
    recipe_flags = describe_recipe(args)
    if recipe_flags:
        print(f'Recipe {args.recipe}: {recipe_flags}')
    print()
    if group.world_size > 1:
        print(f'Processes: {group.world_size} ({args.batch_size // group.world_size} of the '
              f'{args.batch_size} rows each)')


def print_finetune_header(path, source, changes):
    val_loss = source.get('val_loss')
    score = f', validation perplexity {perplexity(val_loss):.4f}' if val_loss else ''
    print(f'Fine-tuning {path} (epoch {source.get("epoch")} of its run{score})')
    for name, old, new in changes:
        print(f'Changed for fine-tuning: --{name} {old} -> {new}')


def report_unknown(corpus):
    """One line when some words became <unk>: those outside the vocabulary (valid, test, or
    train under --max_vocab/--min_count). PTB has none."""
    counts = [f'{split} {n} ({100 * n / getattr(corpus, split).numel():.2f}% of its tokens)'
              for split, n in corpus.unknown.items() if n]
    if counts:
        print('Words not in the vocabulary, read as <unk>: ' + ', '.join(counts))


def speedups(args, model, forward, device, rows):
    """(forward, autocast dtype, GradScaler) for --amp and --compile, with a warning where
    one is unsupported and the default path instead. `forward` is the model, or its
    DistributedDataParallel wrapper; `rows` this process's batch rows."""
    dtype, scaler, warning = mixed_precision(device, args.amp)
    if warning:
        warn(warning)
    if args.compile:
        eager = forward
        try:
            forward = torch.compile(eager)
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), \
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                x = torch.zeros(rows, args.seq_length, dtype=torch.long, device=device)
                forward(x, model.init_hidden(rows))[0].sum().backward()
            model.zero_grad(set_to_none=True)
        except Exception as e:  # noqa: BLE001  compilers fail in many ways; all mean: run eagerly
            warn(f'--compile is not supported here ({type(e).__name__}); running uncompiled')
            forward = eager
    return forward, dtype, scaler


def resume(run, ckpt, path, changes, given):
    """Continue the run of the last checkpoint at `path`: its weights, optimizer, schedule,
    position and random state, with the flags `changes` applied from the next window."""
    args = run.args
    saved_seed = ckpt['args'].get('seed', args.seed)
    if 'seed' in given and args.seed != saved_seed:
        warn('--seed is ignored on resume: the random state continues from the checkpoint')
    args.seed = saved_seed  # --variable_bptt draws each epoch's windows from it
    restored = restore_training(
        ckpt, path, run.model, run.optimizer, run.scheduler, run.stepping.scaler,
        lambda epoch: len(epoch_windows(args, run.streams['train'], epoch)), args.batch_size)
    run.next_epoch, run.best_val, run.position = restored[:3]
    run.val_losses = restored.val_losses
    run.stepping = replace(run.stepping, weight_average=restored.weight_average)
    changed_processes = restore_random_state(ckpt, path, run.group, args.seed)
    if changed_processes:
        warn(changed_processes)
    run.run_id = ckpt.get('run_id')  # None for a checkpoint from before run ids
    run.resumed_from = path
    apply_changes(changes, run.optimizer, run.scheduler)
    where = f'epoch {run.next_epoch}'
    if run.position:
        where += f', window {run.position["window"] + 1}'
    print(f'Resuming from {path} at {where}', flush=True)
    for name, old, new in changes:
        print(f'Changed on resume: --{name} {old} -> {new}')


def epoch_windows(args, train_data, epoch):
    """The epoch's training windows as (start, length); under --variable_bptt drawn anew
    each epoch from the run's seed, so that a resumed run draws the same ones."""
    if args.variable_bptt:
        rng = random.Random(f'{args.seed}:{epoch}')
        return data.variable_windows(train_data, args.seq_length, rng)
    return data.fixed_windows(train_data, args.seq_length)


# ------------------------------------------------------------------ 2. train one epoch

@dataclass
class EpochRun:
    result: object    # engine.EpochResult
    windows: list     # the epoch's (start, length) windows
    started: float    # time.time() when the epoch began, counting time before a resume

    @property
    def finished(self):
        return self.result.next_window == len(self.windows)


def train_one_epoch(run, epoch):
    """Train `epoch` from its start, or from where a resumed run stopped in it; stop early,
    at a window's edge, when a signal asked for it."""
    args, group = run.args, run.group
    windows = epoch_windows(args, run.streams['train'], epoch)
    lr_factors = window_lr_factors(windows, args.seq_length, epoch, args.epochs, args.schedule,
                                   args.warmup, args.variable_bptt)
    start, seconds = EpochStart(), 0.0
    if run.position is not None:  # resuming in mid-epoch
        p, device = run.position, run.streams['train'].device
        hidden = tuple(group.rows(h, dim=1).contiguous().to(device) for h in p['hidden'])
        start = EpochStart(p['window'], hidden, p['losses'].to(device))
        seconds, run.position = p['seconds'], None
    started = time.time() - seconds
    with bar(total=len(windows), initial=start.window, desc=f'Epoch {epoch}', leave=False,
             dynamic_ncols=True) as progress:
        def show(k, running_loss):
            progress.update()
            if running_loss is not None:
                progress.set_postfix(loss=f'{running_loss:.3f}',
                                     ppl=f'{perplexity(running_loss):.1f}')
        try:
            result = train_epoch(run.model, run.streams['train'], windows, run.stepping, start,
                                 lr_factors, lambda: group.stop_agreed(run.stop.signum is not None),
                                 show)
        except NonFiniteLoss as e:
            raise RunError(
                f'the training loss became NaN or infinite in epoch {epoch}, window {e.window} '
                f'of {len(windows)}; try a lower --lr (now {args.lr}) or --clip (now '
                f'{args.clip}). {run.files.best} is unchanged.') from None
    return EpochRun(result, windows, started)


def averaged(run):
    """Inside this block the model holds NT-ASGD's mean weights, once there is a mean."""
    average = run.stepping.weight_average
    return average.in_use(run.model) if average is not None else contextlib.nullcontext()


# ------------------------------------------------------------------ 3. end the epoch

def end_epoch(run, epoch, done):
    """Validate, print the epoch's lines, step the schedule, save the best model, start
    NT-ASGD's average when due, write the metrics row and the last checkpoint."""
    args, group = run.args, run.group
    train_seconds = time.time() - done.started
    valid = run.streams['valid']
    with bar(total=len(data.window_starts(valid, args.seq_length)), desc='Validation',
             leave=False) as progress, averaged(run):
        val_loss, val_no_sos = evaluate(run.model, valid, args.seq_length, forward=run.evaluator,
                                        autocast_dtype=run.stepping.autocast_dtype,
                                        add_across=group.sum,
                                        on_window=lambda k: progress.update())
    elapsed = time.time() - done.started
    print(f'Epoch: {epoch}, Validation Loss: {val_loss:.4f}, Validation Perplexity: '
          f'{perplexity(val_loss):.4f}, Time: {int(elapsed // 60)}m {int(elapsed % 60)}s')
    print(f'Validation Loss without <sos>: {val_no_sos:.4f}, Validation Perplexity without '
          f'<sos>: {perplexity(val_no_sos):.4f}')
    if args.schedule == 'plateau':
        run.scheduler.step(val_loss)
    reached = schedule_factor(epoch, epoch, args.epochs, args.schedule, args.warmup)
    lrs = [g['lr'] * reached for g in run.optimizer.param_groups]  # where the next epoch starts
    print(f'current lr: {lrs}', flush=True)
    run.val_loss = val_loss
    if val_loss < run.best_val:
        run.best_val = val_loss
        if group.is_main:
            with averaged(run), writing(run):
                save_checkpoint(best_checkpoint(run.model, run.corpus.vocab, args, epoch,
                                                val_loss, run.run_id), run.files.best)
        print(f'Best model saved with Perplexity: {perplexity(val_loss):.4f}', flush=True)
    start_averaging_when_due(run, epoch, val_loss)
    if run.metrics is not None:
        train_loss = epoch_loss(done.result.losses, done.windows)
        tokens = run.streams['train'].numel() * group.world_size
        with writing(run):
            run.metrics.append({
                'epoch': epoch, 'train_loss': f'{train_loss:.6f}',
                'train_ppl': f'{perplexity(train_loss):.4f}', 'val_loss': f'{val_loss:.6f}',
                'val_ppl': f'{perplexity(val_loss):.4f}', 'val_loss_no_sos': f'{val_no_sos:.6f}',
                'val_ppl_no_sos': f'{perplexity(val_no_sos):.4f}', 'lr': lrs[0],
                'seconds': f'{elapsed:.2f}',
                'train_tokens_per_s': f'{tokens / train_seconds:.1f}'})
    save_last(run, epoch, None, done.result.losses)


def start_averaging_when_due(run, epoch, val_loss):
    """NT-ASGD: from the step after the epoch that triggers it, keep the weights' mean."""
    args = run.args
    if (args.optimizer == 'ntasgd' and run.stepping.weight_average is None
            and averaging_should_start(run.val_losses, val_loss, args.nonmono)):
        run.stepping = replace(run.stepping, weight_average=WeightAverage(run.model))
        print(f'Averaging the weights from epoch {epoch + 1} on (NT-ASGD: validation worse '
              f'than the best before the last {args.nonmono} epochs)', flush=True)
    run.val_losses.append(val_loss)


@contextlib.contextmanager
def writing(run):
    """A block that writes one of the run's files: only while this run still holds the save
    path's lock, and never cut short by a signal."""
    check_lock(run.files)
    with run.stop.writing():
        yield


def save_last(run, epoch, position, window_losses):
    """Write the last checkpoint: at an epoch's end (`position` None) or where a signal
    stopped it. Every process takes part (the hidden and random states are gathered); the
    first one writes."""
    group = run.group
    if position is not None:
        position['hidden'] = tuple(group.gather_rows(h) for h in position['hidden'])
    rngs = group.gather_objects(rng_state())
    if group.is_main:
        best = best_checkpoint(run.model, run.corpus.vocab, run.args, epoch, run.val_loss,
                               run.run_id)
        with writing(run):
            save_checkpoint(last_checkpoint(
                best, optimizer=run.optimizer, scheduler=run.scheduler,
                scaler=run.stepping.scaler, best_val_loss=run.best_val, val_losses=run.val_losses,
                weight_average=run.stepping.weight_average, rngs=rngs, position=position,
                window_losses=window_losses, fingerprint=data_fingerprint(run.corpus)),
                run.files.last)
    run.wrote_last = True


def save_stopped_epoch(run, epoch, done):
    """A signal stopped `epoch` in the middle: keep where, to continue from there."""
    result = done.result
    save_last(run, epoch, {'window': result.next_window, 'losses': result.losses,
                           'hidden': detach_hidden(result.hidden),
                           'seconds': time.time() - done.started}, result.losses)


# ------------------------------------------------------------------ 4. finish

def stopped_status(run):
    """After a signal: say how to resume. SIGTERM, SIGHUP and a run with no finished epoch
    end here (the status); after Ctrl-C the best model is still tested (None)."""
    signum = run.stop.signum or signal.SIGTERM  # another process's signal stops this one too
    if run.group.is_main:
        print(f'Training stopped by {signal.Signals(signum).name}.', file=sys.stderr, end=' ')
        resumable = run.files.last if run.wrote_last else run.resumed_from
        if resumable is not None:
            print(f'Resume with:\n  {resume_command(resumable)}', file=sys.stderr, flush=True)
            print(f'Resume with: {resume_command(resumable)}', flush=True)  # for logs of stdout
        else:
            print('No epoch had started, so there is nothing to resume.', file=sys.stderr,
                  flush=True)
    if signum != signal.SIGINT or math.isinf(run.best_val):
        return 128 + signum
    return None


def finish(run):
    """Test this run's best model, reloaded from disk."""
    if math.isinf(run.best_val):
        raise RunError('no epoch finished, so there is no best model to test')
    group = run.group
    device = run.streams['test'].device
    path = best_model_path(run)
    best = load_checkpoint(path, map_location=device) if group.is_main else None
    if group.is_main and best.get('run_id') != run.run_id:
        raise RunError(f'{path} is not this run\'s best model (another run wrote it); '
                       f'this run\'s best model was saved beside the --save_path it started '
                       f'with. Test it with: python demo_tie.py --eval_only --save_path PATH')
    run.model.load_state_dict(group.gather_objects(best['model_state'] if best else None)[0])
    run.stop.immediate = True  # a signal now ends the test at once; --eval_only repeats it
    print_test_block(run.model, run.streams['test'], run.args.seq_length, forward=run.evaluator,
                     autocast_dtype=run.stepping.autocast_dtype, add_across=group.sum)
    return 0


def best_model_path(run):
    """Where this run's best model is: beside --save_path, or, for a run resumed into a new
    --save_path that has not improved on it yet, beside the last checkpoint it resumed."""
    if os.path.exists(run.files.best) or not run.resumed_from:
        return run.files.best
    earlier = RunFiles.beside(run.resumed_from.removesuffix('.last.pt') + '.pt').best
    return earlier if os.path.exists(earlier) else run.files.best


def print_test_block(model, test_data, seq_length, **kw):
    print(RULE)
    print('Testing: ', flush=True)
    with bar(total=len(data.window_starts(test_data, seq_length)),
             desc='Test Evaluation') as progress:
        loss, loss_no_sos = evaluate(model, test_data, seq_length,
                                     on_window=lambda k: progress.update(), **kw)
    print(RULE)
    print(f'Test Loss: {loss:.4f}, Test Perplexity: {perplexity(loss):.4f}')
    print(f'Test Loss without <sos>: {loss_no_sos:.4f}, Test Perplexity without <sos>: '
          f'{perplexity(loss_no_sos):.4f} (Mikolov protocol: words and <eos> scored, <sos> '
          f'targets not)')


# ------------------------------------------------------------------ the run, step by step

def train(args, given, device, stop, group):
    run = start_run(args, given, device, group, stop)
    if run.next_epoch > args.epochs:
        print(f'Nothing to train: {run.next_epoch - 1} epochs are done and --epochs is '
              f'{args.epochs}.')
    stopped, stop.immediate = False, False  # from here on a signal stops at a window's edge
    try:
        if group.is_main:  # on resume, drops rows after the checkpoint's epoch
            run.metrics = MetricsLog(run.files.metrics, resume_after=run.next_epoch - 1
                                     if run.resumed_from else None)
        for epoch in range(run.next_epoch, args.epochs + 1):
            if group.stop_agreed(stop.signum is not None, now=True):
                stopped = True
                break
            done = train_one_epoch(run, epoch)
            if not done.finished:  # a signal stopped it
                save_stopped_epoch(run, epoch, done)
                stopped = True
                break
            end_epoch(run, epoch, done)
    except OSError as e:
        last = run.files.last if run.wrote_last else run.resumed_from or run.files.last
        raise RunError(f'could not write {e.filename or "a checkpoint"}: {e.strerror or e}. '
                       f'The files already on disk are unchanged; resume with: '
                       f'{resume_command(last)}') from None
    if stopped:
        status = stopped_status(run)
        if status is not None:
            return status
    return finish(run)


def eval_only(args, device, stop, group):
    """--eval_only: the validation and test lines of the checkpoint at --save_path, with
    the batch size and window length it was trained with."""
    stop.immediate = True  # nothing to save: a signal ends the evaluation at once
    ckpt = load_checkpoint(args.save_path)
    check_stored_args(ckpt, args.save_path, build_parser())
    model = build_model(ckpt, device)
    trained = ckpt.get('args') or {}
    batch_size = trained.get('batch_size', args.batch_size)
    seq_length = trained.get('seq_length', args.seq_length)
    corpus = data.load_corpus(args.data_dir, vocab=ckpt['vocab'])
    print(f'Using device: {device}')
    print(f'Vocabulary size: {len(corpus.vocab)}')
    report_unknown(corpus)
    print(f'Evaluating {args.save_path} (epoch {ckpt.get("epoch")}, --batch_size {batch_size} '
          f'--seq_length {seq_length} as in training)')
    for split in ('valid', 'test'):  # one target per row at least
        data.check_size(split, getattr(corpus, split), batch_size)
    valid_data = group.rows(data.batchify(corpus.valid, batch_size)).to(device)
    test_data = group.rows(data.batchify(corpus.test, batch_size)).to(device)
    val_loss, val_no_sos = evaluate(model, valid_data, seq_length, add_across=group.sum)
    print(f'Validation Loss: {val_loss:.4f}, Validation Perplexity: {perplexity(val_loss):.4f}')
    print(f'Validation Loss without <sos>: {val_no_sos:.4f}, Validation Perplexity without '
          f'<sos>: {perplexity(val_no_sos):.4f}')
    print_test_block(model, test_data, seq_length, add_across=group.sum)
    return 0


def memory_problem(args, device):
    """Why the model the flags describe cannot fit on `device` ('' if it may): its LSTM's
    weights, gradients and Adam's two moments, 16 bytes a parameter, before the data is read
    (the embedding and decoder, which depend on the vocabulary, come on top)."""
    parameters = lstm_parameters(args.embed_size, args.hidden_size, args.num_layers)
    need, have = 16 * parameters, memory_of(device)
    if have is None or need <= have:
        return ''
    return (f'--embed_size {args.embed_size} --hidden_size {args.hidden_size} --num_layers '
            f'{args.num_layers} make an LSTM of {parameters:,} parameters, which needs at least '
            f'{need / 2**30:,.1f} GiB for its weights, gradients and optimizer state; {device} '
            f'has {have / 2**30:,.1f} GiB')


def check_flags(parser, args, given):
    """Refuse, with argparse's one-line message, flags that cannot go together. On resume
    the sizes and the optimizer come from the checkpoint (runstate.claim_save_path); under
    --finetune the sizes do."""
    fresh = args.resume is None
    if args.finetune is not None:
        check_finetune_flags(parser, args)
    problem = tied_size_problem(args.tied, args.embed_size, args.hidden_size)
    if problem and fresh and args.finetune is None:
        parser.error(problem)
    if args.optimizer != 'adam' and 'lr' not in given and fresh:
        parser.error(f'--optimizer {args.optimizer} needs an --lr of its own: the default 0.001 '
                     "is Adam's and far too small for SGD (AWD-LSTM uses --lr 30 --clip 0.25)")
    if args.schedule == 'cosine' and {'lr_factor', 'lr_patience'} & given and fresh:
        parser.error('--lr_factor and --lr_patience belong to --schedule plateau; the cosine '
                     'schedule takes the learning rate from --lr down to 0 over --epochs')
    if 0 < args.max_vocab < len(data.SPECIALS) + 2:
        parser.error(f'--max_vocab {args.max_vocab} leaves no room for words (the specials and '
                     '<unk> take 4 places); use 0 for no limit')


def check_finetune_flags(parser, args):
    if args.resume is not None:
        parser.error('--finetune starts a new run from a trained model and --resume continues '
                     'a run: a stopped fine-tuning run resumes without --finetune')
    if args.eval_only:
        parser.error('--finetune trains; --eval_only evaluates the model at --save_path')
    try:
        files = RunFiles.beside(args.save_path)
    except CheckpointError:
        return  # claim_save_path says what is wrong with it
    own = [path for path in files
           if os.path.exists(path) and os.path.samefile(path, args.finetune)]
    if own:
        parser.error(f'--finetune {args.finetune} is a file of this run\'s --save_path '
                     f'{args.save_path}, which the run would overwrite; give another --save_path')


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv)
    check_flags(parser, args, given)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        group, device = setup_processes(args.device)
    except ValueError as e:
        parser.error(str(e))
    if args.resume is None and args.finetune is None and not args.eval_only:
        problem = memory_problem(args, device)
        if problem:
            parser.error(problem)
    global SPEAKS
    SPEAKS = group.is_main
    apply_threads(args.threads)
    seed_everything(args.seed)
    keep_freed_memory()
    stop = StopRequest()  # installed before the data is read, so no signal is lost
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    status = None  # stays None when an unexpected error escapes with its traceback
    try:
        status = eval_only(args, device, stop, group) if args.eval_only else \
            train(args, given, device, stop, group)
        group.finish()
    except (data.DataError, CheckpointError, RunError, ShareError) as e:
        if group.is_main:
            print(f'error: {e}', file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print('\nInterrupted.', file=sys.stderr)
        status = 130
    finally:
        release_locks()  # the run is over, however it ended
        for s, handler in previous.items():
            signal.signal(s, handler)
        group.close(status)
    return status


if __name__ == '__main__':
    sys.exit(main())
