"""Train an LSTM language model, with or without weight tying, on the Penn Treebank.

    bash getdata.sh && python demo_tie.py --tied     # the reference run: 2x650, 40 epochs
    python demo_tie.py --tied --resume               # go on from the last checkpoint
    python demo_tie.py --eval_only                   # validation and test of best_model.pt

Files written beside --save_path (best_model.pt by default):
    best_model.pt        the model with the best validation loss (what generate.py reads)
    best_model.last.pt   the state at the end of the last epoch, or where a signal stopped
                         training, with optimizer, scheduler and RNG states (what --resume reads)
    best_model.csv       one row of metrics per epoch
"""
import argparse
import contextlib
import copy
import math
import random
import signal
import sys
import time
import uuid

import torch
from tqdm import tqdm

import data
from checkpoint import (CheckpointError, best_checkpoint, build_model, load_checkpoint,
                        model_args, save_checkpoint)
from engine import (NonFiniteLoss, WeightAverage, averaging_should_start, epoch_loss, evaluate,
                    keep_freed_memory, make_optimizer, mixed_precision, perplexity,
                    schedule_factor, train_epoch, window_lr_factors)
from distributed import ShareError
from distributed import setup as setup_processes
from model import LSTMLanguageModel, count_parameters, detach_hidden
from recipe import add_optimizer_flags, add_regularizer_flags, apply_recipe, describe_recipe
from options import (add_device_flags, apply_threads, factor, non_negative_float,
                     non_negative_int, positive_float, positive_int, probability, seed_value)
from runstate import (MetricsLog, StopRequest, apply_changes, check_same_data, claim_save_path,
                      data_fingerprint, restore, restore_averaging, restore_random_state,
                      resume_command, rng_state, seed_everything, seed_process)

RULE = '-' * 41


def build_parser():
    parser = argparse.ArgumentParser(
        description='LSTM Language Model on Penn Treebank',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--data_dir', type=str, default='./data/penn/', help='Directory containing train.txt, valid.txt, test.txt')
    parser.add_argument('--batch_size', type=positive_int, default=20, help='Batch size')
    parser.add_argument('--embed_size', type=positive_int, default=650, help='Embedding size')
    parser.add_argument('--hidden_size', type=positive_int, default=650, help='Hidden size of LSTM')
    parser.add_argument('--num_layers', type=positive_int, default=2, help='Number of LSTM layers')
    parser.add_argument('--dropout', type=probability, default=0.5, help='Dropout probability')
    parser.add_argument('--lr', type=positive_float, default=0.001, help='Learning rate')
    parser.add_argument('--epochs', type=positive_int, default=40, help='Number of training epochs')
    parser.add_argument('--clip', type=positive_float, default=5.0, help='Gradient clipping')
    parser.add_argument('--seq_length', type=positive_int, default=30, help='Sequence length')
    parser.add_argument('--save_path', type=str, default='best_model.pt', help='Path to save the best model')
    parser.add_argument('--weight_decay', type=non_negative_float, default=1e-5, help='Weight decay (L2 regularization)')
    parser.add_argument('--lr_factor', type=factor, default=0.5, help='Factor by which the learning rate will be reduced')
    parser.add_argument('--lr_patience', type=non_negative_int, default=2, help='Number of epochs with no improvement after which learning rate will be reduced')
    parser.add_argument('--tied', action='store_true', help='Enable weight tying')
    # Beyond the reference's flags:
    parser.add_argument('--seed', type=seed_value, default=1111, help='Random seed (torch, numpy, random)')
    add_device_flags(parser)
    parser.add_argument('--resume', nargs='?', const='', default=None, metavar='PATH',
                        help='Continue training from a last checkpoint; without PATH, the one '
                             'beside --save_path (best_model.pt -> best_model.last.pt)')
    parser.add_argument('--max_vocab', type=non_negative_int, default=0, help='Keep at most this many words in the vocabulary, specials and <unk> included, the most frequent first; the rest become <unk> (0: no limit)')
    parser.add_argument('--min_count', type=positive_int, default=1, help='Words seen fewer times in train.txt become <unk>')
    parser.add_argument('--overwrite', action='store_true', help='Start afresh where an earlier run left its files at --save_path (they are deleted)')
    parser.add_argument('--eval_only', action='store_true', help='Only print the validation and test results of the checkpoint at --save_path')
    parser.add_argument('--amp', action='store_true', help='Mixed precision: bfloat16 autocast on CUDA (float16 with loss scaling where bfloat16 is missing) and on CPUs with native bfloat16 (AVX-512 BF16, AMX); float32 weights')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model (first windows are slower while it compiles)')
    add_regularizer_flags(parser)
    add_optimizer_flags(parser)
    return parser


class RunError(Exception):
    """Ends the run with a message and exit status 1."""


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
        except Exception as e:  # compilers fail in many ways; all mean "run eagerly"
            warn(f'--compile is not supported here ({type(e).__name__}); running uncompiled')
            forward = eager
    return forward, dtype, scaler


SPEAKS = True  # False in every process but the first under torchrun


def warn(message):
    if SPEAKS:
        print(f'warning: {message}', file=sys.stderr, flush=True)


def bar(**kw):
    """A progress bar on stderr, shown by the first process only."""
    return tqdm(file=sys.stderr, disable=not SPEAKS, **kw)


def print_test_block(model, test_data, seq_length, **kw):
    print(RULE)
    print('Testing: ', flush=True)
    with bar(total=len(data.window_starts(test_data, seq_length)), desc='Test Evaluation') as progress:
        loss, loss_no_sos = evaluate(model, test_data, seq_length, on_window=lambda k: progress.update(), **kw)
    print(RULE)
    print(f'Test Loss: {loss:.4f}, Test Perplexity: {perplexity(loss):.4f}')
    print(f'Test Loss without <sos>: {loss_no_sos:.4f}, Test Perplexity without <sos>: '
          f'{perplexity(loss_no_sos):.4f} (Mikolov protocol: words and <eos> scored, <sos> targets not)')


def print_validation_no_sos(loss_no_sos):
    print(f'Validation Loss without <sos>: {loss_no_sos:.4f}, Validation Perplexity without <sos>: '
          f'{perplexity(loss_no_sos):.4f}')


def eval_only(args, device, stop, group):
    stop.immediate = True  # nothing to save: a signal ends the evaluation at once
    ckpt = load_checkpoint(args.save_path)
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
    check_eval_sizes(corpus, batch_size)
    valid_data = group.rows(data.batchify(corpus.valid, batch_size)).to(device)
    test_data = group.rows(data.batchify(corpus.test, batch_size)).to(device)
    val_loss, val_no_sos = evaluate(model, valid_data, seq_length, add_across=group.sum)
    print(f'Validation Loss: {val_loss:.4f}, Validation Perplexity: {perplexity(val_loss):.4f}')
    print_validation_no_sos(val_no_sos)
    print_test_block(model, test_data, seq_length, add_across=group.sum)
    return 0


def check_eval_sizes(corpus, batch_size):
    """Valid and test need at least one target per row."""
    for name, stream in (('valid', corpus.valid), ('test', corpus.test)):
        data.check_size(name, stream, batch_size)


def report_unknown(corpus):
    """One line when some words became <unk>: those outside the vocabulary (valid, test, or
    train under --max_vocab/--min_count). PTB has none."""
    counts = [f'{split} {n} ({100 * n / getattr(corpus, split).numel():.2f}% of its tokens)'
              for split, n in corpus.unknown.items() if n]
    if counts:
        print('Words not in the vocabulary, read as <unk>: ' + ', '.join(counts))


def averaged(weight_average, model):
    """Inside this block the model holds NT-ASGD's mean weights, once there is a mean."""
    return weight_average.in_use(model) if weight_average is not None else contextlib.nullcontext()


def checkpoint_of_run(model, corpus, args, epoch, val_loss, run_id):
    return {**best_checkpoint(model, corpus.vocab, args, epoch, val_loss), 'run_id': run_id}


def train(args, given, device, stop, group):
    """The run, step by step: claim the save path, settle the flags (from the checkpoint on
    resume), read the data, build or restore the model, train epoch by epoch, test."""
    apply_recipe(args, given)  # on resume, claim_save_path then takes what was not given,
    # the recipe's flags included, from the checkpoint
    files, ckpt, resume_path, changes = claim_save_path(args, given, group)
    if args.tied and args.embed_size != args.hidden_size:
        raise RunError(f'--tied needs --embed_size equal to --hidden_size '
                       f'(got {args.embed_size} and {args.hidden_size})')
    corpus = data.load_corpus(args.data_dir, max_vocab=args.max_vocab, min_count=args.min_count)
    data.check_size('train', corpus.train, args.batch_size, args.seq_length)
    check_eval_sizes(corpus, args.batch_size)
    if ckpt is not None:
        check_same_data(ckpt, resume_path, corpus, args.data_dir)
    elif args.overwrite and group.is_main:
        files.delete_earlier_run()

    print(f'Using device: {device}')
    print(f'Vocabulary size: {len(corpus.vocab)}')
    report_unknown(corpus)
    model = LSTMLanguageModel(**model_args(args, len(corpus.vocab))).to(device)
    print(model)
    print(f'Total parameters: {count_parameters(model)}')
    recipe_flags = describe_recipe(args)
    if recipe_flags:
        print(f'Recipe {args.recipe}: {recipe_flags}')
    print()
    if group.world_size > 1:
        print(f'Processes: {group.world_size} ({args.batch_size // group.world_size} of the '
              f'{args.batch_size} rows each)')

    # each process's rows of the batched streams (all of them without torchrun)
    train_data = group.rows(data.batchify(corpus.train, args.batch_size)).to(device)
    valid_data = group.rows(data.batchify(corpus.valid, args.batch_size)).to(device)
    test_data = group.rows(data.batchify(corpus.test, args.batch_size)).to(device)

    def windows_of_epoch(epoch):
        """The epoch's training windows as (start, length); drawn anew each epoch from the
        run's seed under --variable_bptt, so that a resume draws the same ones."""
        if args.variable_bptt:
            return data.variable_windows(train_data, args.seq_length, random.Random(f'{args.seed}:{epoch}'))
        return data.fixed_windows(train_data, args.seq_length)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.optimizer)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode='min', factor=args.lr_factor, patience=args.lr_patience)
    forward, autocast_dtype, scaler = speedups(args, model, group.wrap(model), device, train_data.size(0))
    evaluator = forward if group.world_size == 1 else model  # evaluation needs no gradient sync
    seed_process(args.seed, group.rank)

    first_epoch, best_val, position = 1, math.inf, None
    val_losses, weight_average = [], None  # every epoch's validation loss; NT-ASGD's mean
    run_id = uuid.uuid4().hex
    if ckpt is not None:
        if 'seed' in given and args.seed != ckpt['args'].get('seed'):
            warn('--seed is ignored on resume: the random state continues from the checkpoint')
            args.seed = ckpt['args'].get('seed')
        first_epoch, best_val, position = restore(ckpt, resume_path, model, optimizer, scheduler,
                                                  scaler, windows_of_epoch, args.batch_size)
        val_losses, weight_average = restore_averaging(ckpt, resume_path, model)
        changed_processes = restore_random_state(ckpt, group, args.seed)
        if changed_processes:
            warn(changed_processes)
        run_id = ckpt.get('run_id')  # None for a checkpoint from before run ids: its best has none
        apply_changes(changes, optimizer, scheduler)
        where = f'epoch {first_epoch}, window {position["window"] + 1}' if position else f'epoch {first_epoch}'
        print(f'Resuming from {resume_path} at {where}', flush=True)
        for name, old, new in changes:
            print(f'Changed on resume: --{name} {old} -> {new}')
    fingerprint = data_fingerprint(corpus)
    wrote_last = False  # a last checkpoint already on disk may be an earlier run's

    def save_last(epoch, val_loss, position, window_losses):
        """Every process takes part (the hidden and random states are gathered); the first
        one writes."""
        nonlocal wrote_last
        if position is not None:
            position['hidden'] = tuple(group.gather_rows(h) for h in position['hidden'])
        rngs = group.gather_objects(rng_state())
        if group.is_main:
            save_checkpoint({**checkpoint_of_run(model, corpus, args, epoch, val_loss, run_id),
                             'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                             'scaler': scaler.state_dict() if scaler is not None else None,
                             'best_val_loss': best_val, 'position': position, 'rng': rngs[0],
                             'rng_of_processes': rngs, 'window_losses': window_losses.cpu(),
                             'data_fingerprint': fingerprint, 'val_losses': val_losses,
                             'weight_average': weight_average and weight_average.state_dict()},
                            files.last)
        wrote_last = True

    if first_epoch > args.epochs:
        print(f'Nothing to train: {first_epoch - 1} epochs are done and --epochs is {args.epochs}.')
    val_loss, stopped = None, False
    try:
        metrics = MetricsLog(files.metrics, resume_after=(first_epoch - 1) if ckpt else None) \
            if group.is_main else None
        for epoch in range(first_epoch, args.epochs + 1):
            if group.stop_agreed(stop.signum is not None, now=True):
                stopped = True
                break
            start, hidden, losses, seconds = 0, None, None, 0.0
            windows = windows_of_epoch(epoch)
            n_windows = len(windows)
            lr_factors = window_lr_factors(windows, args.seq_length, epoch, args.epochs,
                                           args.schedule, args.warmup, args.variable_bptt)
            if position is not None:  # resuming in mid-epoch
                start, seconds = position['window'], position['seconds']
                hidden = tuple(group.rows(h, dim=1).contiguous().to(device) for h in position['hidden'])
                losses = position['losses'].to(device)
                position = None
            t0 = time.time()
            with bar(total=n_windows, initial=start, desc=f'Epoch {epoch}', leave=False,
                     dynamic_ncols=True) as progress:
                def show(k, running_loss):
                    progress.update()
                    if running_loss is not None:
                        progress.set_postfix(loss=f'{running_loss:.3f}', ppl=f'{perplexity(running_loss):.1f}')
                try:
                    result = train_epoch(model, train_data, optimizer, args.seq_length, args.clip,
                                         start=start, hidden=hidden, losses=losses, forward=forward,
                                         autocast_dtype=autocast_dtype, scaler=scaler,
                                         should_stop=lambda: group.stop_agreed(stop.signum is not None),
                                         on_window=show,
                                         average_losses=group.mean if group.world_size > 1 else None,
                                         alpha=args.alpha, beta=args.beta,
                                         windows=windows, lr_factors=lr_factors,
                                         weight_average=weight_average)
                except NonFiniteLoss as e:
                    raise RunError(
                        f'the training loss became NaN or infinite in epoch {epoch}, window '
                        f'{e.window} of {n_windows}; try a lower --lr (now {args.lr}) or --clip '
                        f'(now {args.clip}). {files.best} is unchanged.') from None
            train_seconds = seconds + time.time() - t0
            if result.next_window < n_windows:  # stopped by a signal in mid-epoch
                save_last(epoch, val_loss, {'window': result.next_window, 'losses': result.losses,
                                            'hidden': detach_hidden(result.hidden),
                                            'seconds': train_seconds}, result.losses)
                stopped = True
                break

            with bar(total=len(data.window_starts(valid_data, args.seq_length)), desc='Validation',
                     leave=False) as progress, averaged(weight_average, model):
                val_loss, val_no_sos = evaluate(model, valid_data, args.seq_length, forward=evaluator,
                                                autocast_dtype=autocast_dtype, add_across=group.sum,
                                                on_window=lambda k: progress.update())
            elapsed = seconds + time.time() - t0
            print(f'Epoch: {epoch}, Validation Loss: {val_loss:.4f}, Validation Perplexity: '
                  f'{perplexity(val_loss):.4f}, Time: {int(elapsed // 60)}m {int(elapsed % 60)}s')
            print_validation_no_sos(val_no_sos)
            if args.schedule == 'plateau':
                scheduler.step(val_loss)
            reached = schedule_factor(epoch, epoch, args.epochs, args.schedule, args.warmup)
            lrs = [g['lr'] * reached for g in optimizer.param_groups]  # where the next epoch starts
            print(f'current lr: {lrs}', flush=True)
            if val_loss < best_val:
                best_val = val_loss
                if group.is_main:
                    with averaged(weight_average, model):
                        save_checkpoint(checkpoint_of_run(model, corpus, args, epoch, val_loss, run_id),
                                        files.best)
                print(f'Best model saved with Perplexity: {perplexity(val_loss):.4f}', flush=True)
            if (args.optimizer == 'ntasgd' and weight_average is None
                    and averaging_should_start(val_losses, val_loss, args.nonmono)):
                weight_average = WeightAverage(model)
                print(f'Averaging the weights from epoch {epoch + 1} on (NT-ASGD: validation worse '
                      f'than the best before the last {args.nonmono} epochs)', flush=True)
            val_losses.append(val_loss)
            train_loss = epoch_loss(result.losses, train_data, args.seq_length, windows)
            if metrics is not None:
                metrics.append({'epoch': epoch, 'train_loss': f'{train_loss:.6f}',
                                'train_ppl': f'{perplexity(train_loss):.4f}',
                                'val_loss': f'{val_loss:.6f}', 'val_ppl': f'{perplexity(val_loss):.4f}',
                                'val_loss_no_sos': f'{val_no_sos:.6f}',
                                'val_ppl_no_sos': f'{perplexity(val_no_sos):.4f}', 'lr': lrs[0],
                                'seconds': f'{elapsed:.2f}',
                                'train_tokens_per_s': f'{train_data.numel() * group.world_size / train_seconds:.1f}'})
            save_last(epoch, val_loss, None, result.losses)
    except OSError as e:
        raise RunError(f'could not write {e.filename or "a checkpoint"}: {e.strerror or e}. '
                       f'The files already on disk are unchanged; resume with: '
                       f'{resume_command(files.last if wrote_last else resume_path or files.last)}') from None

    if stopped:
        signum = stop.signum or signal.SIGTERM  # another process's signal stops this one too
        if group.is_main:
            print(f'Training stopped by {signal.Signals(signum).name}.', file=sys.stderr, end=' ')
            resumable = files.last if wrote_last else resume_path
            if resumable is not None:
                print(f'Resume with:\n  {resume_command(resumable)}', file=sys.stderr, flush=True)
            else:
                print('No epoch had started, so there is nothing to resume.', file=sys.stderr, flush=True)
        if signum == signal.SIGTERM or math.isinf(best_val):
            return 128 + signum
    if math.isinf(best_val):
        raise RunError('no epoch finished, so there is no best model to test')
    best = load_checkpoint(files.best, map_location=device) if group.is_main else None
    if group.is_main and best.get('run_id') != run_id:
        raise RunError(f'{files.best} is not this run\'s best model (another run wrote it); this '
                       f'run\'s best model was saved beside the --save_path it started with. Test '
                       f'it with: python demo_tie.py --eval_only --save_path PATH')
    model.load_state_dict(group.gather_objects(best['model_state'] if best else None)[0])
    stop.immediate = True  # a signal now ends the test at once; --eval_only repeats it
    print_test_block(model, test_data, args.seq_length, forward=evaluator,
                     autocast_dtype=autocast_dtype, add_across=group.sum)
    return 0


def explicit_flags(parser, argv):
    """The flags given on the command line (not left at their defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv)
    if args.tied and args.embed_size != args.hidden_size and args.resume is None:
        parser.error(f'--tied needs --embed_size equal to --hidden_size '
                     f'(got {args.embed_size} and {args.hidden_size})')
    if args.optimizer != 'adam' and 'lr' not in given and args.resume is None:
        parser.error(f'--optimizer {args.optimizer} needs an --lr of its own: the default 0.001 '
                     "is Adam's and far too small for SGD (AWD-LSTM uses --lr 30 --clip 0.25)")
    if args.schedule == 'cosine' and {'lr_factor', 'lr_patience'} & given and args.resume is None:
        parser.error('--lr_factor and --lr_patience belong to --schedule plateau; the cosine '
                     'schedule takes the learning rate from --lr down to 0 over --epochs')
    if 0 < args.max_vocab < len(data.SPECIALS) + 2:
        parser.error(f'--max_vocab {args.max_vocab} leaves no room for words (the specials and '
                     '<unk> take 4 places); use 0 for no limit')
    sys.stdout.reconfigure(line_buffering=True)
    try:
        group, device = setup_processes(args.device)
    except ValueError as e:
        parser.error(str(e))
    global SPEAKS
    SPEAKS = group.is_main
    apply_threads(args.threads)
    seed_everything(args.seed)
    keep_freed_memory()
    stop = StopRequest()  # installed before the data is read, so no signal is lost
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
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
        for s, handler in previous.items():
            signal.signal(s, handler)
        group.close(status)
    return status


if __name__ == '__main__':
    sys.exit(main())
