"""Score text with a model trained by demo_tie.py: how likely is this sentence, this file?

    python score.py --checkpoint best_model.pt my.txt                    # per line and in total
    echo "the company said" | python score.py --checkpoint best_model.pt -
    python score.py --checkpoint best_model.pt --per_token my.txt > tokens.tsv
    python score.py --checkpoint best_model.pt --json my.txt

Text is read as training reads it: each non-blank line is `<sos> w1 ... wn <eos>`, and a word
the vocabulary lacks is scored as `<unk>`. Three layouts:

    default           as the trainer evaluates: the stream cut into the checkpoint's number
                      of rows, read in windows with the hidden state carried across windows
                      and lines. Scoring PTB's test.txt repeats the trainer's Test lines.
                      The first token of each row and the tail that does not fill a row are
                      not scored (as in training).
    --batch_size 1    one continuous stream: every token but the very first is scored.
    --independent     each line on its own, from a fresh state: nothing before it counts.

Two methods adapt the scores to the text read so far (lm/adapt.py), reading it as one stream:

    python score.py --checkpoint best_model.pt --cache test.txt
    python score.py --checkpoint best_model.pt --dynamic test.txt
    python score.py --checkpoint best_model.pt --cache --dynamic --tune valid.txt test.txt
"""
import signal
import sys

from lm.signals import stop_at_once

if __name__ == '__main__':  # before PyTorch is imported: Ctrl-C ends the process at
    signal.signal(signal.SIGINT, stop_at_once)  # once with a line, not a traceback

import argparse
import json
import math
import os
from typing import NamedTuple

import numpy as np
import torch

import data
from lm.adapt import (
    DynamicEval,
    NeuralCache,
    adaptive_scorer,
    cudnn_backward_in_eval,
    gradient_rms,
    replay_cache,
)
from lm.checkpoint import (
    TRAIN_FIRST,
    CheckpointError,
    build_model,
    check_stored_args,
    load_checkpoint,
)
from lm.console import progress
from lm.device import (
    apply_device_flags,
    escape_what_output_cannot_encode,
    quiet_on_closed_pipe,
)
from lm.flags import (
    add_device_flags,
    checked_number,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from lm.loop import perplexity, token_losses
from lm.loss import cross_entropy

LINES_PER_BATCH = 64  # --independent: lines scored side by side (sorted by length, padded)
LOGITS_BUDGET = 2**24  # --independent: scores held at once (64 MB of float32)
# --tune's grids: the dynamic evaluation's rate first (at the decay given), then its decay at
# the best rate, then the cache's (theta, lambda) pairs over that adapting model
DYNAMIC_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4)
DYNAMIC_DECAYS = (0.0, 1e-3, 1e-2)
CACHE_THETAS = (0.1, 0.3, 0.6, 1.0)
CACHE_LAMBDAS = (0.05, 0.1, 0.15, 0.2, 0.3)


def build_parser():
    parser = argparse.ArgumentParser(
        description='Score text with a trained LSTM language model',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('input', help="Text file to score, one sentence a line ('-' for stdin)")
    parser.add_argument('--checkpoint', type=str, default='best_model.pt',
                        help='Checkpoint written by demo_tie.py (its --save_path)')
    parser.add_argument('--batch_size', type=positive_int, default=None,
                        help="Rows the text is laid out in (default: the checkpoint's, as in "
                             'evaluation; 1: one continuous stream)')
    parser.add_argument('--seq_length', type=positive_int, default=None,
                        help="Window length (default: the checkpoint's)")
    parser.add_argument('--independent', action='store_true',
                        help='Score each line on its own, from a fresh hidden state')
    parser.add_argument('--per_token', action='store_true',
                        help="Write each token's log-probability as TSV to stdout (the summary "
                             'goes to stderr)')
    parser.add_argument('--json', action='store_true',
                        help='Write everything as one JSON document to stdout')
    add_device_flags(parser)
    parser.add_argument('--amp', action='store_true',
                        help="Score under autocast where the trainer's --amp would "
                             '(default: float32)')
    add_adaptive_flags(parser)
    return parser


def add_adaptive_flags(parser):
    group = parser.add_argument_group(
        'scores that adapt to the text (one stream; defaults tuned with --tune on PTB valid.txt '
        'for the regularized tied 2x650 model of docs/results.md)')
    add = group.add_argument
    add('--cache', action='store_true',
        help='Neural cache (Grave et al. 2017) over the last LSTM layer\'s outputs')
    add('--cache_window', type=positive_int, default=500, help='Positions the cache holds')
    add('--cache_theta', type=non_negative_float, default=0.6,
        help='Sharpness of the match between outputs')
    add('--cache_lambda', type=checked_number(float, lambda v: 0 <= v <= 1, 'in [0, 1]'),
        default=0.1, help='Weight of the cache in the mixture')
    add('--dynamic', action='store_true',
        help='Dynamic evaluation (Krause et al. 2018, RMS): a gradient step after each segment')
    add('--dynamic_lr', type=non_negative_float, default=5e-5, help='Step size (eta)')
    add('--dynamic_decay', type=non_negative_float, default=1e-3,
        help='Pull back towards the trained weights (lambda)')
    add('--dynamic_segment', type=positive_int, default=20, help='Tokens between steps')
    add('--dynamic_stats', metavar='FILE', default=None,
        help="Text for the gradient statistics (default: train.txt of the checkpoint's "
             '--data_dir)')
    add('--dynamic_stats_tokens', type=positive_int, default=300_000,
        help='How many of its first tokens to use')
    add('--dynamic_stats_rows', type=positive_int, default=64,
        help='Rows that text is read in, side by side (one gradient each window)')
    add('--tune', metavar='FILE', default=None,
        help='Choose the values above on FILE (valid.txt, say; the scored text itself is '
             'refused), print each grid point, then score the input with the values kept '
             '(the defaults where every point ties)')
    add('--tune_tokens', type=non_negative_int, default=0,
        help='Tune on the first this many tokens of --tune FILE (0: all)')


class Text(NamedTuple):
    line_numbers: list     # the input's line number of each non-blank line
    words: list            # each line's words, as written
    stream: torch.Tensor   # <sos> w1 .. wn <eos> for every line, as vocabulary ids
    line_of: np.ndarray    # for each stream position, the index of its line in `words`
    respelled: list        # (word, as read) of every respelled word
    unknown: list          # every word the vocabulary lacks (read as <unk>)
    respelled_per_line: list  # how many of each line's words were respelled
    unk_per_line: list     # how many of each line's words are scored as <unk>


def read_input(path):
    """The file to read, '-' being standard input (refused when closed, `<&-`)."""
    if path == '-':
        if sys.stdin is None:
            raise data.DataError('standard input is closed; give a file to score, or pipe '
                                 'text in: echo "some words" | python score.py -')
        return sys.stdin.buffer
    try:
        return open(path, 'rb')
    except OSError as e:
        raise data.DataError(f'cannot read {path}: {e.strerror or e}') from None


def read_text(path, vocab):
    """Read `path` ('-': stdin) as training reads text and map its words onto `vocab`."""
    name = '<stdin>' if path == '-' else path
    f = read_input(path)
    index = {w: i for i, w in enumerate(vocab)}
    respell = data.is_ptb_style(vocab)
    line_numbers, words, ids, line_of, respelled, unknown = [], [], [], [], [], []
    respelled_per_line, unk_per_line, unk = [], [], index[data.UNK]
    with f:
        for number, line_words in data.word_lines(f, name):
            line_ids, line_respelled, line_unknown = data.map_words(line_words, index, respell)
            ids += [data.SOS] + line_ids + [data.EOS]
            line_of += [len(words)] * (len(line_ids) + 2)
            line_numbers.append(number)
            words.append(line_words)
            respelled += line_respelled
            unknown += line_unknown
            respelled_per_line.append(len(line_respelled))
            unk_per_line.append(line_ids.count(unk))
    if not words:
        raise data.DataError(f'{name} has no words to score')
    return Text(line_numbers, words, torch.tensor(ids), np.array(line_of), respelled, unknown,
                respelled_per_line, unk_per_line)


def score_carried(model, stream, batch_size, seq_length, autocast_dtype, device, scorer=None):
    """Loss of each stream position (NaN where the layout scores none) with the stream laid
    out as evaluation lays it out, and the totals as the trainer computes them. `scorer`:
    see lm.loop.token_losses."""
    batched = data.batchify(stream, batch_size).to(device)
    starts = data.window_starts(batched, seq_length)
    steps = batched.size(1)
    with progress(batched.numel() - batch_size, 'Scoring', unit='tok', hide_below=20) as bar:
        result = token_losses(
            model, batched, seq_length, autocast_dtype=autocast_dtype, keep_tokens=True,
            scorer=scorer,
            on_window=lambda k: bar.update(batch_size * min(seq_length, steps - 1 - starts[k])))
    # target (row r, column c) of batched[:, 1:] is stream position r * steps + c + 1
    positions = np.arange(batch_size)[:, None] * steps + np.arange(1, steps)[None, :]
    nll = np.full(stream.numel(), np.nan)
    nll[positions.ravel()] = result.nll.double().numpy().ravel()
    return nll, result


@torch.no_grad()
def score_independent(model, text, autocast_dtype, device, budget=LOGITS_BUDGET):
    """Loss of each stream position, each line scored from a fresh state (its `<sos>` is
    context only). Lines of similar length are batched together, padded at the end, and read
    in pieces of columns with the state carried, so that no more than about `budget` scores
    (lines x columns x vocabulary) exist at once, however long a line or large the vocabulary."""
    model.eval()
    starts = np.flatnonzero(np.diff(text.line_of, prepend=-1))  # stream position of each <sos>
    lengths = [len(w) + 2 for w in text.words]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    vocab = model.fc.out_features
    per_batch = max(1, min(LINES_PER_BATCH, budget // vocab))
    nll = np.full(text.stream.numel(), np.nan)
    with progress(math.ceil(len(order) / per_batch), 'Scoring', hide_below=20) as bar:
        for first in range(0, len(order), per_batch):
            lines = order[first:first + per_batch]
            longest = max(lengths[i] for i in lines)
            batch = torch.full((len(lines), longest), data.PAD, dtype=torch.long)
            for row, i in enumerate(lines):
                batch[row, :lengths[i]] = text.stream[starts[i]:starts[i] + lengths[i]]
            losses = carried_losses(model, batch.to(device), max(1, budget // (len(lines) * vocab)),
                                    autocast_dtype)
            for row, i in enumerate(lines):
                nll[starts[i] + 1:starts[i] + lengths[i]] = losses[row, :lengths[i] - 1]
            bar.update()
    return nll


def carried_losses(model, batch, columns, autocast_dtype):
    """(rows, steps - 1) loss of each next token of `batch`, from a fresh state, read
    `columns` at a time with the state carried."""
    hidden, pieces = model.init_hidden(batch.size(0)), []
    for start in range(0, batch.size(1) - 1, columns):
        x, y = data.get_window(batch, start, columns)
        with torch.autocast(batch.device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            logits, hidden = model(x, hidden)
        pieces.append(cross_entropy(logits, y, reduction='none').view(y.shape).double().cpu())
    return torch.cat(pieces, 1).numpy()


class Totals(NamedTuple):
    loss: float
    loss_no_sos: float
    targets: int
    targets_no_sos: int


def totals_of(result):
    """Totals of an lm.loop.TokenLosses, as the trainer computes them."""
    return Totals(result.sum_all / result.count_all,
                  result.sum_no_sos / max(1, result.count_no_sos),
                  result.count_all, result.count_no_sos)


def totals_from(nll, is_sos):
    scored = ~np.isnan(nll)
    words = scored & ~is_sos
    return Totals(math.fsum(nll[scored]) / max(1, scored.sum()),
                  math.fsum(nll[words]) / max(1, words.sum()), int(scored.sum()), int(words.sum()))


def per_line(text, nll, is_sos):
    """For each line: its words, and mean loss with and without its `<sos>` target."""
    scored = ~np.isnan(nll)
    n = len(text.words)

    def mean(mask):
        total = np.bincount(text.line_of[mask], weights=nll[mask], minlength=n)
        count = np.bincount(text.line_of[mask], minlength=n)
        with np.errstate(invalid='ignore', divide='ignore'):
            return total / count, count
    loss, targets = mean(scored)
    loss_no_sos, _targets_no_sos = mean(scored & ~is_sos)
    return [{'line': text.line_numbers[i], 'words': len(text.words[i]),
             'targets': int(targets[i]), 'loss': _num(loss[i]),
             'ppl': _num(perplexity_or_nan(loss[i])), 'loss_no_sos': _num(loss_no_sos[i]),
             'ppl_no_sos': _num(perplexity_or_nan(loss_no_sos[i])), 'unk': text.unk_per_line[i],
             'respelled': text.respelled_per_line[i]}
            for i in range(n)]


def perplexity_or_nan(loss):
    return loss if math.isnan(loss) else perplexity(loss)


def _num(x):
    """JSON has no NaN: a line with no scored target gets null."""
    return None if math.isnan(x) else float(x)


def token_rows(text, nll, vocab):
    """(line, position in line, word as written, word scored, log-probability or None)."""
    rows, k = [], 0
    for i, line_words in enumerate(text.words):
        for position, word in enumerate(['<sos>'] + line_words + ['<eos>']):
            logprob = None if math.isnan(nll[k]) else -float(nll[k])
            rows.append((text.line_numbers[i], position, word, vocab[int(text.stream[k])], logprob))
            k += 1
    return rows


def fmt(x, digits=4):
    return 'n/a' if x is None else f'{x:.{digits}f}'


def score_text(args, model, text, ckpt, autocast_dtype):
    """(layout described, each stream position's loss, Totals) in the layout the flags ask
    for; the checkpoint's batch size and window are the default layout."""
    device = next(model.parameters()).device
    trained = ckpt.get('args') or {}
    if args.cache or args.dynamic:
        return score_adaptive(args, model, text.stream, ckpt)
    if args.independent:
        nll = score_independent(model, text, autocast_dtype, device)
        return ('each line on its own, from a fresh state', nll,
                totals_from(nll, (text.stream == data.SOS).numpy()))
    batch_size = args.batch_size or trained.get('batch_size', 1)
    seq_length = args.seq_length or trained.get('seq_length', 30)
    if text.stream.numel() < 2 * batch_size:
        print(f'note: the text is too short for {batch_size} rows; scored as one stream '
              '(--batch_size 1)', file=sys.stderr)
        batch_size = 1
    layout = (f'{batch_size} row{"s" if batch_size > 1 else ""}, windows of {seq_length}, '
              'state carried across lines'
              + (' (as the trainer evaluates)' if args.batch_size is None else ''))
    nll, result = score_carried(model, text.stream, batch_size, seq_length, autocast_dtype, device)
    totals = totals_of(result)
    return layout, nll, totals


def score_adaptive(args, model, stream, ckpt):
    """(layout described, each stream position's loss, Totals) under --cache and/or --dynamic:
    one stream, windows of --dynamic_segment (or the checkpoint's window), the values tuned on
    --tune FILE first when given. The weights on disk are never touched."""
    device = next(model.parameters()).device
    trained, vocab = ckpt.get('args') or {}, ckpt['vocab']
    seq_length = args.dynamic_segment if args.dynamic else (
        args.seq_length or trained.get('seq_length', 30))
    rms = None
    if args.dynamic:
        stats = read_text(args.dynamic_stats or stats_file(trained), vocab)
        bars = []  # made once gradient_rms knows its number of windows

        def shown(k, total):
            if not bars:
                bars.append(progress(total, 'Gradient statistics', hide_below=20))
            bars[0].update()
        rms = gradient_rms(model, stats.stream.to(device), args.dynamic_segment,
                           args.dynamic_stats_tokens, args.dynamic_stats_rows, on_window=shown)
        for bar in bars:
            bar.close()
    if args.tune:
        tune(args, model, rms, seq_length, read_text(args.tune, vocab))
    dynamic = DynamicEval(model, rms, args.dynamic_lr, args.dynamic_decay) if args.dynamic else None
    cache = NeuralCache(args.cache_window, args.cache_theta, args.cache_lambda) \
        if args.cache else None
    with cudnn_backward_in_eval(device, needed=args.dynamic):
        nll, result = score_carried(model, stream, 1, seq_length, None, device,
                                    scorer=adaptive_scorer(model, cache, dynamic))
    if dynamic is not None:
        dynamic.reset()
    totals = totals_of(result)
    return f'one stream, windows of {seq_length}, {describe_method(args)}', nll, totals


def stats_file(trained):
    data_dir = trained.get('data_dir')
    if not isinstance(data_dir, str):
        raise data.DataError('--dynamic needs training text for its gradient statistics; give '
                             'it with --dynamic_stats FILE')
    return os.path.join(data_dir, 'train.txt')


def method_values(args):
    """The adaptive methods in use and their values, for the summary and the JSON."""
    method = {}
    if args.cache:
        method['cache'] = {'window': args.cache_window, 'theta': args.cache_theta,
                           'lambda': args.cache_lambda}
    if args.dynamic:
        method['dynamic'] = {'lr': args.dynamic_lr, 'decay': args.dynamic_decay,
                             'segment': args.dynamic_segment,
                             'stats_tokens': args.dynamic_stats_tokens,
                             'stats_rows': args.dynamic_stats_rows}
    return method


def describe_method(args):
    names = {'cache': 'neural cache', 'dynamic': 'dynamic evaluation'}
    return ' + '.join(f'{names[m]} (' + ', '.join(f'{k} {v:g}' for k, v in values.items()) + ')'
                      for m, values in method_values(args).items())


def tune(args, model, rms, seq_length, text):
    """Set the method's values to those that score `text` (--tune FILE) best, without <sos>
    (the papers' protocol), printing each grid point on stderr."""
    device = next(model.parameters()).device
    stream = text.stream[:args.tune_tokens + 1] if args.tune_tokens else text.stream
    batched = stream.view(1, -1).to(device)

    def run(lr, decay, record=None, desc='tune'):
        dynamic = DynamicEval(model, rms, lr, decay) if args.dynamic else None
        windows = len(data.window_starts(batched, seq_length))
        with cudnn_backward_in_eval(device, needed=dynamic is not None), \
                progress(windows, desc, hide_below=20) as bar:
            result = token_losses(model, batched, seq_length,
                                  scorer=adaptive_scorer(model, dynamic=dynamic, record=record),
                                  on_window=lambda k: bar.update())
        if dynamic is not None:
            dynamic.reset()
        return result.sum_no_sos / max(1, result.count_no_sos)

    def keep_best(name, grid, loss_of, current):
        losses = {}
        for value in grid:  # each point said as it is scored: a grid takes minutes
            losses[value] = loss = loss_of(value, f'tune {name} {value:g}')
            print(f'tune: {name} {value:g}: perplexity without <sos> {perplexity(loss):.4f}',
                  file=sys.stderr, flush=True)
        return best_of(losses, current, lambda value: f'{name} {value:g}')

    print(f'tune: {stream.numel() - 1} targets of {args.tune}', file=sys.stderr)
    if args.dynamic:
        args.dynamic_lr = keep_best('--dynamic_lr', DYNAMIC_LRS,
                                    lambda lr, desc: run(lr, args.dynamic_decay, desc=desc),
                                    args.dynamic_lr)
        args.dynamic_decay = keep_best('--dynamic_decay', DYNAMIC_DECAYS,
                                       lambda decay, desc: run(args.dynamic_lr, decay, desc=desc),
                                       args.dynamic_decay)
    if args.cache:
        recorded = []
        run(args.dynamic_lr, args.dynamic_decay, record=recorded, desc='tune the cache')
        pairs = [(theta, lam) for theta in CACHE_THETAS for lam in CACHE_LAMBDAS]
        losses = {pair: replay_cache(recorded, args.cache_window, *pair,
                                     lambda y: y != data.SOS) for pair in pairs}
        for (theta, lam), loss in losses.items():
            print(f'tune: --cache_theta {theta:g} --cache_lambda {lam:g}: perplexity without '
                  f'<sos> {perplexity(loss):.4f}', file=sys.stderr)
        args.cache_theta, args.cache_lambda = best_of(
            losses, (args.cache_theta, args.cache_lambda),
            lambda pair: f'--cache_theta {pair[0]:g} --cache_lambda {pair[1]:g}')


def best_of(losses, current, describe):
    """The grid point of `losses` that scored best, or `current` where every point ties (a
    tuning text too short to tell them apart), saying on stderr which is kept."""
    if len(set(losses.values())) == 1:
        print(f'tune: every grid point scores the same on this text, too short to tell them '
              f'apart; keeping {describe(current)}', file=sys.stderr, flush=True)
        return current
    best = min(losses, key=losses.get)
    print(f'tune: keeping {describe(best)}', file=sys.stderr, flush=True)
    return best


def check_flags(parser, args):
    """Refuse, as usage errors, the flag combinations that cannot score."""
    if args.independent and args.batch_size is not None:
        parser.error('--independent scores each line on its own; it takes no --batch_size')
    adaptive = args.cache or args.dynamic
    if adaptive and (args.independent or args.batch_size not in (None, 1)):
        parser.error('--cache and --dynamic read the text as one stream, as the papers do; '
                     'they take neither --independent nor a --batch_size other than 1')
    if args.tune and not adaptive:
        parser.error('--tune chooses the values of --cache and --dynamic; give one of them')
    readers = [name for name, path in (('the input', args.input), ('--tune', args.tune),
                                       ('--dynamic_stats', args.dynamic_stats)) if path == '-']
    if len(readers) > 1:
        parser.error(f"{' and '.join(readers)} both name standard input ('-'), which can be "
                     'read once; give the others as files')
    if args.tune and args.tune != '-' and same_file(args.tune, args.input):
        parser.error(f'--tune {args.tune} is the text being scored: values tuned on it would '
                     'make its perplexity look better than it is; tune on another text '
                     '(valid.txt, to score test.txt)')


def same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing: reading it will say so
        return False


def summarize(args, text, nll, totals, layout):
    """The run's summary (what --json prints before its per-line rows) and the per-line rows."""
    is_sos = (text.stream == data.SOS).numpy()
    # tokens that the layout leaves out: the first <sos> is never a target, and under
    # --independent no line's <sos> is
    unscored = 0 if args.independent else int(np.isnan(nll).sum()) - 1
    lines = per_line(text, nll, is_sos)
    summary = {'checkpoint': args.checkpoint, 'input': args.input, 'layout': layout,
               'lines': len(text.words), 'words': sum(len(w) for w in text.words),
               'out_of_vocabulary': len(text.unknown), 'respelled': len(text.respelled),
               'scored_as_unk': sum(r['unk'] for r in lines),
               'targets': totals.targets, 'targets_no_sos': totals.targets_no_sos,
               'loss': totals.loss, 'ppl': perplexity(totals.loss),
               'loss_no_sos': totals.loss_no_sos, 'ppl_no_sos': perplexity(totals.loss_no_sos),
               'tokens_not_scored': unscored, 'method': method_values(args) or 'static'}
    return summary, lines


def main(argv=None):
    quiet_on_closed_pipe()
    escape_what_output_cannot_encode()
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
    device, autocast_dtype = apply_device_flags(parser, args)
    try:
        ckpt = load_checkpoint(args.checkpoint, missing_hint=TRAIN_FIRST)
        check_stored_args(ckpt, args.checkpoint, parser)
        model = build_model(ckpt, device)
        vocab = ckpt['vocab']
        text = read_text(args.input, vocab)
        data.print_mapping_notes(text.respelled, text.unknown)
        layout, nll, totals = score_text(args, model, text, ckpt, autocast_dtype)
    except (CheckpointError, data.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1

    summary, lines = summarize(args, text, nll, totals, layout)
    if args.json:
        document = {**summary, 'per_line': lines}
        if args.per_token:
            fields = ('line', 'position', 'word', 'scored_as', 'logprob')
            document['per_token'] = [dict(zip(fields, row))
                                     for row in token_rows(text, nll, vocab)]
        json.dump(document, sys.stdout, indent=1)
        print()
        return 0
    out = sys.stdout
    if args.per_token:
        print('line\tposition\tword\tscored_as\tlogprob', file=out)
        for line, position, word, scored_as, logprob in token_rows(text, nll, vocab):
            shown = '' if logprob is None else f'{logprob:.6f}'
            print(f'{line}\t{position}\t{word}\t{scored_as}\t{shown}', file=out)
        out = sys.stderr  # the summary stays out of the TSV
    else:
        print_lines(lines, out)
    print_summary(summary, totals, out)
    return 0


def print_lines(lines, out):
    print(f'{"line":>6} {"words":>6} {"loss":>8} {"perplexity":>11} {"loss w/o <sos>":>15} '
          f'{"perplexity w/o <sos>":>21} {"<unk>":>6} {"respelled":>9}', file=out)
    for r in lines:
        print(f'{r["line"]:>6} {r["words"]:>6} {fmt(r["loss"]):>8} {fmt(r["ppl"]):>11} '
              f'{fmt(r["loss_no_sos"]):>15} {fmt(r["ppl_no_sos"]):>21} {r["unk"]:>6} '
              f'{r["respelled"]:>9}', file=out)


def print_summary(summary, totals, out):
    s = summary
    print(f'Scored {s["input"]} with {s["checkpoint"]}: {s["lines"]} lines, {s["words"]} words '
          f'({s["out_of_vocabulary"]} read as <unk>, {s["respelled"]} respelled; '
          f'{s["scored_as_unk"]} tokens scored as <unk>); layout: {s["layout"]}', file=out)
    if s['tokens_not_scored']:
        print(f'{s["tokens_not_scored"]} tokens not scored by this layout (each row\'s first '
              'token and the tail that does not fill a row); --batch_size 1 scores every token',
              file=out)
    print(f'Loss: {totals.loss:.4f}, Perplexity: {perplexity(totals.loss):.4f} '
          f'({totals.targets} targets)', file=out)
    print(f'Loss without <sos>: {totals.loss_no_sos:.4f}, Perplexity without <sos>: '
          f'{perplexity(totals.loss_no_sos):.4f} ({totals.targets_no_sos} targets)', file=out)


if __name__ == '__main__':
    sys.exit(main())
