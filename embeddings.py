"""How good a trained model's embedding matrices are as word embeddings, and how alike they are:
Press & Wolf's analysis of the output embedding.

    python embeddings.py --checkpoint untied.pt tied.pt       # a table
    python embeddings.py --checkpoint tied.pt --json          # the same, for machines
    python embeddings.py --checkpoint m.pt --pairs my_pairs.tsv

An untied model has two matrices, the input embedding and the output one (the decoder's
rows); a tied model has one. Each is scored on word-similarity benchmarks (SimLex-999 and
WordSim-353 by default, the copies that ship with gensim) with gensim's
`KeyedVectors.evaluate_word_pairs`: Spearman and Pearson correlations with the human ratings
over the pairs whose two words the vocabulary has, and the share of pairs left out. Then every
two matrices are compared: the Spearman correlation of their cosine similarities over all pairs
of the `--agreement_words` first words of the first one's vocabulary (the training text's order
of first appearance) that the other one has too. gensim is needed by this script alone:
`pip install gensim`.
"""
import signal
import sys

from lm.signals import stop_at_once

if __name__ == '__main__':  # before PyTorch is imported: Ctrl-C ends the process at
    signal.signal(signal.SIGINT, stop_at_once)  # once with a line, not a traceback

import argparse
import json
import os

import numpy as np

import data
from lm.checkpoint import CheckpointError, build_model, load_checkpoint
from lm.flags import positive_int


def benchmark_files():
    """gensim's copies of SimLex-999 and WordSim-353: {name: path}."""
    from gensim.test.utils import datapath
    return {'SimLex-999': datapath('simlex999.txt'), 'WordSim-353': datapath('wordsim353.tsv')}


def matrices(ckpt, name):
    """{label: (vocabulary x dimension) array} of a checkpoint: input and output when untied,
    tied when tied. `name` labels them when several checkpoints are compared. The model is
    built as every script builds it, so weights that do not fit or are not finite are refused
    (CheckpointError) in the same words."""
    model = build_model(ckpt)
    found = {'tied': model.embedding.weight} if ckpt['model_args']['tied'] else {
        'input': model.embedding.weight, 'output': model.fc.weight}
    return {f'{label} ({name})': m.detach().float().numpy() for label, m in found.items()}


def names_of(paths):
    """A label for each checkpoint: its file's stem (best_model), or, where two stems are
    the same (runA/best_model.pt, runB/best_model.pt), the path as given."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return [stem if stems.count(stem) == 1 else path for stem, path in zip(stems, paths)]


def keyed_vectors(vocab, matrix):
    """The words of `vocab` (the markers left out) with their rows, as gensim's KeyedVectors."""
    from gensim.models import KeyedVectors
    words = [(i, w) for i, w in enumerate(vocab) if w not in data.SPECIALS]
    vectors = KeyedVectors(vector_size=matrix.shape[1])
    vectors.add_vectors([w for _, w in words], matrix[[i for i, _ in words]])
    return vectors


def similarity_scores(vocab, matrix, pair_files):
    """{benchmark: {'spearman', 'pearson', 'oov_percent'}} of one matrix (the correlations
    None where no pair has both its words in the vocabulary, or the file has no pairs)."""
    vectors, scores = keyed_vectors(vocab, matrix), {}
    for name, path in pair_files.items():
        try:
            pearson, spearman, oov = vectors.evaluate_word_pairs(path, case_insensitive=True)
        except ValueError:  # gensim's word when no pair is left to score
            scores[name] = {'spearman': None, 'pearson': None, 'oov_percent': 100.0}
            continue
        scores[name] = {'spearman': float(spearman[0]), 'pearson': float(pearson[0]),
                        'oov_percent': float(oov)}
    return scores


def readable_pairs(path):
    """Whether a pair file has at least one line as gensim reads them: word, word, rating."""
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            parts = line.rstrip('\n').split('\t')
            if line.startswith('#') or len(parts) != 3:
                continue
            try:
                float(parts[2])
                return True
            except ValueError:
                pass
    return False


def shown(value):
    return '-' if value is None else f'{value:.3f}'


def pair_similarities(matrix, rows):
    """The cosine similarity of every pair of the rows `rows` of `matrix`."""
    chosen = matrix[rows]
    unit = chosen / np.maximum(np.linalg.norm(chosen, axis=1, keepdims=True), 1e-12)
    upper = np.triu_indices(len(unit), k=1)
    return (unit @ unit.T)[upper]


def shared_words(a, b, count):
    """The first `count` words of vocabulary `a` (the markers left out) that `b` has too, as
    (rows in a, rows in b): two models compare a word with itself, wherever each has it."""
    where = {w: i for i, w in enumerate(b)}
    pairs = [(i, where[w]) for i, w in enumerate(a) if w not in data.SPECIALS and w in where]
    return [i for i, _ in pairs[:count]], [j for _, j in pairs[:count]]


def agreement(found, vocabs, count):
    """{(a, b): (Spearman correlation of a's and b's pair similarities, words compared)} for
    every two matrices, over the words both vocabularies have; None where fewer than three
    are shared."""
    from scipy.stats import spearmanr
    labels, alike = list(found), {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            rows_a, rows_b = shared_words(vocabs[a], vocabs[b], count)
            r = None
            if len(rows_a) >= 3:
                r = float(spearmanr(pair_similarities(found[a], rows_a),
                                    pair_similarities(found[b], rows_b))[0])
            alike[a, b] = (r, len(rows_a))
    return alike


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--checkpoint', nargs='+', default=['best_model.pt'], metavar='PATH',
                   help='Checkpoints whose matrices to score and compare')
    p.add_argument('--pairs', nargs='+', metavar='FILE',
                   help="Word-pair files ('word1<TAB>word2<TAB>rating', # comments) instead "
                        "of gensim's SimLex-999 and WordSim-353")
    p.add_argument('--agreement_words', type=positive_int, default=2000,
                   help='How many words of the vocabulary the matrices are compared on')
    p.add_argument('--json', action='store_true', help='Write the results as JSON to stdout')
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import gensim  # noqa: F401  only this script needs it
        import scipy  # noqa: F401
    except ImportError:
        print('error: embeddings.py needs gensim (and the scipy it brings): pip install gensim',
              file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001  installed but broken: a numpy it was not built for
        print(f'error: gensim is installed but fails to import ({type(e).__name__}: '
              f'{str(e).splitlines()[0][:160]}); reinstall it for this numpy: pip install '
              '--force-reinstall gensim', file=sys.stderr)
        return 1
    missing = [f for f in args.pairs or [] if not os.path.isfile(f)]
    if missing:
        parser.error(f'pair file not found: {missing[0]}')
    unreadable = [f for f in args.pairs or [] if not readable_pairs(f)]
    if unreadable:
        print(f'error: {unreadable[0]} has no word pairs to read: each line is word1<TAB>word2'
              '<TAB>rating (a number), lines starting with # are comments', file=sys.stderr)
        return 1
    pair_files = {os.path.basename(f): f for f in args.pairs} if args.pairs else benchmark_files()
    found, vocabs = {}, {}
    try:
        for path, name in zip(args.checkpoint, names_of(args.checkpoint)):
            ckpt = load_checkpoint(path)
            for label, matrix in matrices(ckpt, name).items():
                found[label], vocabs[label] = matrix, ckpt['vocab']
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    scores = {label: similarity_scores(vocabs[label], m, pair_files) for label, m in found.items()}
    alike = agreement(found, vocabs, args.agreement_words) if len(found) > 1 else {}
    if args.json:
        print(json.dumps({'similarity': scores, 'agreement': [
            {'a': a, 'b': b, 'spearman': r, 'words': n} for (a, b), (r, n) in alike.items()],
            'agreement_words': args.agreement_words}, indent=2, allow_nan=False))
        return 0
    names = list(pair_files)
    print('| matrix | ' + ' | '.join(f'{n} Spearman | {n} Pearson | {n} pairs left out'
                                     for n in names) + ' |')
    print('| --- |' + ' --- |' * (3 * len(names)))
    for label, s in scores.items():
        print(f'| {label} | ' + ' | '.join(
            f'{shown(s[n]["spearman"])} | {shown(s[n]["pearson"])} | {s[n]["oov_percent"]:.1f}%'
            for n in names) + ' |')
    if alike:
        print(f'\nAgreement: Spearman correlation of the cosine similarities of all pairs of '
              f'the first {args.agreement_words} words that both vocabularies have\n')
        print('| matrices | Spearman | words compared |\n| --- | --- | --- |')
        for (a, b), (r, n) in alike.items():
            print(f'| {a} vs {b} | {shown(r)} | {n} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
