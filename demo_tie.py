"""Train an LSTM language model, with or without weight tying, on the Penn Treebank.

    bash getdata.sh && python demo_tie.py --tied     # the reference run: 2x650, 40 epochs
    python demo_tie.py --tied --resume               # go on from the last checkpoint
    python demo_tie.py --eval_only                   # validation and test of best_model.pt

train() is the run: set it up, then for each epoch train, validate, schedule, save the best
model, write the metrics row and the last checkpoint; then test the best model. What each
step does is in lm/trainer.py; one epoch's loop and the loss in lm/loop.py; the optimizer
and its schedule in lm/optim.py; the flags, and what --resume does with each, in lm/flags.py.
"""
import signal
import sys

from lm.signals import STOP_SIGNALS, StopRequest, stop_at_once

if __name__ == '__main__':  # before PyTorch is imported (a second or more): a signal meanwhile
    for _signal in STOP_SIGNALS:  # ends the process at once, with a line, not a traceback
        signal.signal(_signal, stop_at_once)

import os
import time

import data
from lm import UserError, flags, trainer
from lm.checkpoint import build_model, check_stored_args, load_checkpoint
from lm.console import progress
from lm.device import (
    DeviceUnavailable,
    allocation_failure,
    apply_threads,
    escape_what_output_cannot_encode,
    keep_freed_memory,
    memory_of,
    out_of_memory,
)
from lm.distributed import setup as setup_processes
from lm.loop import evaluate, perplexity
from lm.optim import epochs_since_best
from lm.recipes import describe_recipe
from lm.rng import seed_everything
from lm.runfiles import MetricsLog, RunFiles, SavePathError, release_locks
from model import count_parameters, lstm_parameters

RULE = '-' * 41


def train(args, given, device, stop, group, on_window=None):
    run = trainer.start_run(args, given, device, group, stop)
    print_header(run, device)
    if run.next_epoch > args.epochs:
        print(f'Nothing to train: {run.next_epoch - 1} epochs are done and --epochs is '
              f'{args.epochs}.')
    stopped, stop.immediate = False, False  # from here on a signal stops at a window's edge
    with trainer.saving(run):
        if group.is_main:  # on resume, drops rows after the checkpoint's epoch
            run.metrics = MetricsLog(run.files.metrics,
                                     resume_after=run.next_epoch - 1 if run.resumed_from else None)
        for epoch in range(run.next_epoch, args.epochs + 1):
            if args.early_stop and epochs_since_best(run.val_losses) >= args.early_stop:
                print(f'Early stopping: {args.early_stop} epochs without a better validation '
                      f'perplexity than {perplexity(run.best_val):.4f}', flush=True)
                break
            if group.stop_agreed(stop.signum is not None, now=True):
                stopped = True
                break
            done = trainer.train_one_epoch(run, epoch, on_window)
            if not done.finished:  # a signal stopped it
                trainer.save_stopped_epoch(run, epoch, done)
                stopped = True
                break
            val_loss, val_no_sos = trainer.validate(run)
            elapsed = time.monotonic() - done.started
            print(f'Epoch: {epoch}, Validation Loss: {val_loss:.4f}, Validation Perplexity: '
                  f'{perplexity(val_loss):.4f}, Time: {int(elapsed // 60)}m {int(elapsed % 60)}s')
            print(f'Validation Loss without <sos>: {val_no_sos:.4f}, Validation Perplexity '
                  f'without <sos>: {perplexity(val_no_sos):.4f}')
            lrs = trainer.step_schedule(run, epoch, val_loss)
            print(f'current lr: {lrs}', flush=True)
            if val_loss < run.best_val:
                trainer.save_best(run, epoch, val_loss)
                print(f'Best model saved with Perplexity: {perplexity(val_loss):.4f}', flush=True)
            if trainer.start_averaging_when_due(run, val_loss):
                print(f'Averaging the weights from epoch {epoch + 1} on (NT-ASGD: validation '
                      f'worse than the best before the last {args.nonmono} epochs)', flush=True)
            trainer.write_metrics_row(run, epoch, done, val_no_sos, lrs[0], elapsed)
            trainer.save_last(run, epoch, done)
    if stopped:
        line, status = trainer.stopped_status(run)
        if group.is_main:  # once, on standard output: the run's record, which its log keeps
            print(line, flush=True)
        if status is not None:
            return status
    trainer.load_best(run)
    run.stop.immediate = True  # a signal now ends the test at once; --eval_only repeats it
    print_test_block(run.model, run.streams['test'], args.seq_length, group.is_main,
                     forward=run.evaluator,
                     autocast_dtype=run.stepping.autocast_dtype, add_across=group.sum)
    return 0


# ------------------------------------------------------------------ what it prints

def print_header(run, device):
    args, corpus, model = run.args, run.corpus, run.model
    print(f'Using device: {device}')
    print(f'Vocabulary size: {len(corpus.vocab)}')
    report_unknown(corpus)
    print(model)
    print(f'Total parameters: {count_parameters(model)}')
    recipe_flags = describe_recipe(args)
    if recipe_flags:
        print(f'Recipe {args.recipe}: {recipe_flags}')
    print()
    if run.group.world_size > 1:
        print(f'Processes: {run.group.world_size} ({args.batch_size // run.group.world_size} '
              f'of the {args.batch_size} rows each)')
    source = run.finetuned
    changed = 'Changed for fine-tuning' if source is not None else 'Changed on resume'
    if source is not None:
        val_loss = source.get('val_loss')
        score = f', validation perplexity {perplexity(val_loss):.4f}' if val_loss else ''
        print(f'Fine-tuning {args.finetune} (epoch {source.get("epoch")} of its run{score})')
    if run.resumed_from:
        where = f'epoch {run.next_epoch}'
        if run.position:
            where += f', window {run.position["window"] + 1}'
        print(f'Resuming from {run.resumed_from} at {where}', flush=True)
    for name, old, new in run.changes:
        print(f'{changed}: --{name} {old} -> {new}')
    if source is not None and run.stepping.weight_average is not None:
        print("Averaging the weights from the first step (NT-ASGD fine-tuning, as AWD-LSTM's "
              'finetune)')


def report_unknown(corpus):
    """One line when some words became <unk>: those outside the vocabulary (valid, test, or
    train under --max_vocab/--min_count). PTB has none."""
    counts = [f'{split} {n} ({100 * n / getattr(corpus, split).numel():.2f}% of its tokens)'
              for split, n in corpus.unknown.items() if n]
    if counts:
        print('Words not in the vocabulary, read as <unk>: ' + ', '.join(counts))


def print_test_block(model, test_data, seq_length, shown, **kw):
    print(RULE)
    print('Testing: ', flush=True)
    with progress(len(data.window_starts(test_data, seq_length)), 'Test Evaluation',
                  shown=shown, leave=True) as bar:
        loss, loss_no_sos = evaluate(model, test_data, seq_length,
                                     on_window=lambda k: bar.update(), **kw)
    print(RULE)
    print(f'Test Loss: {loss:.4f}, Test Perplexity: {perplexity(loss):.4f}')
    print(f'Test Loss without <sos>: {loss_no_sos:.4f}, Test Perplexity without <sos>: '
          f'{perplexity(loss_no_sos):.4f} (Mikolov protocol: words and <eos> scored, <sos> '
          f'targets not)')


def eval_only(args, device, stop, group):
    """--eval_only: the validation and test lines of the checkpoint at --save_path, with
    the batch size and window length it was trained with."""
    stop.immediate = True  # nothing to save: a signal ends the evaluation at once
    ckpt = load_checkpoint(args.save_path)
    check_stored_args(ckpt, args.save_path, flags.build_parser())
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
    print_test_block(model, test_data, seq_length, group.is_main, add_across=group.sum)
    return 0


# ------------------------------------------------------------------ flags and the process

def check_finetune_path(parser, args):
    """--finetune PATH must not be one of the files the run writes at --save_path."""
    try:
        files = RunFiles.beside(args.save_path)
    except SavePathError:
        return  # claim_save_path says what is wrong with it
    if any(os.path.exists(path) and os.path.samefile(path, args.finetune) for path in files):
        parser.error(f'--finetune {args.finetune} is a file of this run\'s --save_path '
                     f'{args.save_path}, which the run would overwrite; give another --save_path')


def memory_problem(args, device):
    """Why the model the flags describe cannot fit on `device` ('' if it may): its LSTM's
    weights, gradients and Adam's two moments, 16 bytes a parameter, before the data is read
    (the embedding and decoder, which depend on the vocabulary, come on top)."""
    parameters = lstm_parameters(args.embed_size, args.hidden_size, args.num_layers)
    need, (have, where) = 16 * parameters, memory_of(device)
    if have is None or need <= have:
        return ''
    return (f'--embed_size {args.embed_size} --hidden_size {args.hidden_size} --num_layers '
            f'{args.num_layers} make an LSTM of {parameters:,} parameters, which needs at least '
            f'{need / 2**30:,.1f} GiB for its weights, gradients and optimizer state; {where} '
            f'has {have / 2**30:,.1f} GiB')


def main(argv=None, on_window=None):
    """The command line `argv` (default sys.argv[1:]); returns the exit status.
    `on_window(epoch, k)`, if given, is called after each training window k."""
    parser = flags.build_parser()
    args = parser.parse_args(argv)
    given = flags.explicit_flags(parser, argv)
    flags.check_combinations(parser, args, given)
    if args.finetune is not None:
        check_finetune_path(parser, args)
    sys.stdout.reconfigure(line_buffering=True)
    escape_what_output_cannot_encode()
    try:
        group, device = setup_processes(args.device)
    except DeviceUnavailable as e:  # not a usage mistake: one line, no usage
        print(f'error: {e}', file=sys.stderr)
        return 1
    except ValueError as e:
        parser.error(str(e))
    if args.resume is None and args.finetune is None and not args.eval_only:
        problem = memory_problem(args, device)
        if problem:
            parser.error(problem)
    apply_threads(args.threads, device)
    seed_everything(args.seed)
    keep_freed_memory()
    stop = StopRequest()  # installed before the data is read, so no signal is lost
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    status = None  # stays None when an unexpected error escapes with its traceback
    try:
        status = eval_only(args, device, stop, group) if args.eval_only else \
            train(args, given, device, stop, group, on_window)
        group.finish()
    except UserError as e:  # each ends the run with its one line
        if group.is_main:
            print(f'error: {e}', file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print('\nInterrupted.', file=sys.stderr)
        status = 130
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        have, where = memory_of(device)
        limit = f'; {where} has {have / 2**30:,.1f} GiB' if have else ''
        print(f'error: out of memory ({allocation_failure(e)}){limit}. Use a smaller model or '
              '--batch_size', file=sys.stderr)
        status = 1
    finally:
        release_locks()  # the run is over, however it ended
        for s, handler in previous.items():
            signal.signal(s, handler)
        group.close(status)
    return status


if __name__ == '__main__':
    sys.exit(main())
