"""Make a raw text ready to train on: split it into train.txt, valid.txt and test.txt, one
sentence (or line) a line, words separated by spaces, as demo_tie.py reads a corpus.

    python prepare.py manual.txt my_corpus/ --ptb --min_count 2
    python demo_tie.py --tied --data_dir my_corpus/ --min_count 2 ...

Each unit of the text (a non-blank line, or with --unit sentences a sentence of a paragraph,
split by NLTK's Punkt trained on the text itself) goes to one split, drawn with --seed at
the --shares given; each split keeps the text's order. --ptb reads the text the way the Penn
Treebank is written: NLTK's Treebank tokeniser splits punctuation off words ("said," ->
"said ,"), the words are lower-cased, and numbers become N ("1990", "3.5" and "1,000" are all
N). The sizes are printed, and the share of each split's words that would be read as <unk>
at --min_count (the trainer's own count). NLTK is needed by this script alone (pip install
nltk), and only for --ptb, --tokenize and --unit sentences.
"""
import signal
import sys

from lm.signals import stop_at_once

if __name__ == '__main__':  # Ctrl-C ends the process at once with a line, not a traceback
    signal.signal(signal.SIGINT, stop_at_once)

import argparse
import os
import random

import data
from lm.flags import checked_number, positive_int

share = checked_number(float, lambda v: 0 <= v < 1, 'a share in [0, 1)')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('raw', metavar='RAW_TEXT', help='A UTF-8 text file')
    p.add_argument('out', metavar='OUT_DIR', help='The folder to write train/valid/test.txt into')
    p.add_argument('--unit', choices=('lines', 'sentences'), default='lines',
                   help='What one line of the corpus holds: a line of the text, or a sentence '
                        '(paragraphs are blank-line separated)')
    p.add_argument('--shares', nargs=2, type=share, default=(0.1, 0.1),
                   metavar=('VALID', 'TEST'), help='The shares of the units in valid and test')
    p.add_argument('--seed', type=int, default=0, help='Seed of the draw of units into splits')
    p.add_argument('--ptb', action='store_true',
                   help='--tokenize --lower --numbers: written the way PTB is')
    p.add_argument('--tokenize', action='store_true',
                   help="Split punctuation off words (NLTK's Treebank tokeniser)")
    p.add_argument('--lower', action='store_true', help='Lower-case every word')
    p.add_argument('--numbers', action='store_true', help='Write every number as N, as PTB does')
    p.add_argument('--min_count', type=positive_int, default=1,
                   help='For the printed <unk> shares: words seen fewer times in train.txt')
    p.add_argument('--overwrite', action='store_true',
                   help='Replace train/valid/test.txt already in OUT_DIR')
    return p


def units_of(text, unit):
    """The text's units: its non-blank lines, or the sentences of its paragraphs."""
    if unit == 'lines':
        return [line for line in text.splitlines() if line.strip()]
    from nltk.tokenize.punkt import PunktSentenceTokenizer
    paragraphs = [' '.join(p.split()) for p in text.split('\n\n') if p.strip()]
    splitter = PunktSentenceTokenizer('\n\n'.join(paragraphs))  # learns the text's abbreviations
    return [s for p in paragraphs for s in splitter.tokenize(p)]


def words_of(unit, tokenizer=None, lower=False, numbers=False):
    """One unit as the corpus line's words. Markers the trainer adds (<sos>, <eos>, <pad>) are
    written <sos_> and so on: they would otherwise be refused as markers."""
    words = tokenizer.tokenize(unit) if tokenizer is not None else unit.split()
    if lower:
        words = [w.lower() for w in words]
    if numbers:  # as the scripts respell a user's numbers for a PTB vocabulary
        words = [data.NUMBER.sub('N', w) for w in words]
    return [w[:-1] + '_>' if w in data.MARKERS else w for w in words]


def assign(n_units, valid_share, test_share, seed):
    """The split of each unit, drawn at the shares with `seed` (random.Random, the same on
    every machine)."""
    rng = random.Random(seed)
    splits = []
    for _ in range(n_units):
        x = rng.random()
        splits.append('valid' if x < valid_share else
                      'test' if x < valid_share + test_share else 'train')
    return splits


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum(args.shares) >= 1:
        parser.error(f'--shares {args.shares[0]:g} {args.shares[1]:g} leave nothing for train')
    tokenize, lower, numbers = (args.tokenize or args.ptb, args.lower or args.ptb,
                                args.numbers or args.ptb)
    tokenizer = None
    if tokenize or args.unit == 'sentences':
        try:
            from nltk.tokenize import TreebankWordTokenizer
        except ImportError:
            print('error: --ptb, --tokenize and --unit sentences need NLTK: pip install nltk',
                  file=sys.stderr)
            return 1
        tokenizer = TreebankWordTokenizer() if tokenize else None
    try:
        with open(args.raw, encoding='utf-8') as f:
            text = f.read().lstrip(data.BOM)
    except FileNotFoundError:
        print(f'error: {args.raw} not found', file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as e:
        print(f'error: cannot read {args.raw} as UTF-8 text ({e})', file=sys.stderr)
        return 1
    paths = {s: os.path.join(args.out, f'{s}.txt') for s in data.SPLITS}
    there = [p for p in paths.values() if os.path.exists(p)]
    if there and not args.overwrite:
        print(f'error: {there[0]} exists; give another OUT_DIR, or --overwrite',
              file=sys.stderr)
        return 1
    lines = [' '.join(words_of(u, tokenizer, lower, numbers)) for u in units_of(text, args.unit)]
    lines = [line for line in lines if line]
    splits = assign(len(lines), *args.shares, args.seed)
    empty = [s for s in data.SPLITS if s not in splits]
    if empty:
        print(f'error: {args.raw} has {len(lines)} {args.unit}, too few to give {empty[0]} one '
              'at these --shares', file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    for split, path in paths.items():
        with open(path, 'w', encoding='utf-8') as f:
            f.writelines(line + '\n' for line, s in zip(lines, splits) if s == split)
    try:
        corpus = data.load_corpus(args.out, min_count=args.min_count)  # as the trainer reads it
    except data.DataError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'wrote {args.out}: a vocabulary of {len(corpus.vocab)} at --min_count '
          f'{args.min_count} (specials and <unk> included)')
    for split in data.SPLITS:
        stream = getattr(corpus, split)
        words = stream.numel() - 2 * splits.count(split)  # less <sos> and <eos> of each line
        print(f'{split}: {splits.count(split)} {args.unit}, {words} words, '
              f'{corpus.unknown[split]} read as <unk> ({100 * corpus.unknown[split] / words:.2f}%)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
