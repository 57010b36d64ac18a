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

import numpy as np

import data
from lm import adapt, scoring
from lm.checkpoint import (
    TRAIN_FIRST,
    CheckpointError,
    build_model,
    check_stored_args,
    load_checkpoint,
)
from lm.console import progress
from lm.device import apply_device_flags, escape_what_output_cannot_encode, quiet_on_closed_pipe
from lm.flags import add_checkpoint_flag, add_device_flags, positive_int
from lm.loop import perplexity


def build_parser():
    parser = argparse.ArgumentParser(
        description='Score text with a trained LSTM language model',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('input', help="Text file to score, one sentence a line ('-' for stdin)")
    add_checkpoint_flag(parser)
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
    add_device_flags(parser, amp='Score')
    adapt.add_adaptive_flags(parser)
    return parser


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
        nll = scoring.score_independent(model, text, autocast_dtype, device)
        return ('each line on its own, from a fresh state', nll,
                scoring.totals_from(nll, (text.stream == data.SOS).numpy()))
    batch_size = args.batch_size or trained.get('batch_size', 1)
    seq_length = args.seq_length or trained.get('seq_length', 30)
    if text.stream.numel() < 2 * batch_size:
        print(f'note: the text is too short for {batch_size} rows; scored as one stream '
              '(--batch_size 1)', file=sys.stderr)
        batch_size = 1
    layout = (f'{batch_size} row{"s" if batch_size > 1 else ""}, windows of {seq_length}, '
              'state carried across lines'
              + (' (as the trainer evaluates)' if args.batch_size is None else ''))
    nll, result = scoring.score_carried(model, text.stream, batch_size, seq_length,
                                        autocast_dtype, device)
    return layout, nll, scoring.totals_of(result)


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
        stats = data.read_text(args.dynamic_stats or adapt.stats_file(trained), vocab)
        bars = []  # made once gradient_rms knows its number of windows

        def shown(k, total):
            if not bars:
                bars.append(progress(total, 'Gradient statistics', hide_below=20))
            bars[0].update()
        rms = adapt.gradient_rms(model, stats.stream.to(device), args.dynamic_segment,
                                 args.dynamic_stats_tokens, args.dynamic_stats_rows,
                                 on_window=shown)
        for bar in bars:
            bar.close()
    if args.tune:
        adapt.tune(args, model, rms, seq_length, data.read_text(args.tune, vocab))
    dynamic = (adapt.DynamicEval(model, rms, args.dynamic_lr, args.dynamic_decay)
               if args.dynamic else None)
    cache = (adapt.NeuralCache(args.cache_window, args.cache_theta, args.cache_lambda)
             if args.cache else None)
    with adapt.cudnn_backward_in_eval(device, needed=args.dynamic):
        nll, result = scoring.score_carried(model, stream, 1, seq_length, None, device,
                                            scorer=adapt.adaptive_scorer(model, cache, dynamic))
    if dynamic is not None:
        dynamic.reset()
    totals = scoring.totals_of(result)
    return f'one stream, windows of {seq_length}, {adapt.describe_method(args)}', nll, totals


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
               'tokens_not_scored': unscored, 'method': adapt.method_values(args) or 'static'}
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
        text = data.read_text(args.input, vocab)
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
