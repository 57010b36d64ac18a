"""Write a synthetic corpus in PTB's format, to measure how reading scales with corpus size.

    python -m lm.synth_corpus --tokens 100000000 --vocab 300000 --out runs/synth100m

Words are drawn from a Zipf distribution (the r-th most frequent word has probability
proportional to 1/r, as in natural text) over `--vocab` words named w0, w1, ...; lines have
Poisson-distributed lengths around PTB's mean of 21 words. train.txt holds `--tokens` words;
valid.txt and test.txt a twentieth each. Only the shape of the text is realistic, not its
content: it is for timing the data step, not for training.
"""
import argparse
import os
import sys

import numpy as np

from lm.flags import positive_int

CHUNK = 1_000_000  # words generated and written at a time, so memory stays small


def write_split(path, n_words, vocab, rng, mean_line=21):
    ranks = np.arange(1, vocab + 1)
    cdf = np.cumsum(1.0 / ranks)
    cdf /= cdf[-1]
    names = np.array([f'w{i}' for i in range(vocab)])
    with open(path, 'w', encoding='utf-8') as f:
        for done in range(0, n_words, CHUNK):
            n = min(CHUNK, n_words - done)
            words = names[np.searchsorted(cdf, rng.random(n), side='right').clip(max=vocab - 1)]
            lengths = np.maximum(1, rng.poisson(mean_line, size=n // mean_line + 2))
            cuts = np.cumsum(lengths)
            cuts = cuts[cuts < n]
            f.write('\n'.join(' '.join(line) for line in np.split(words, cuts)) + '\n')


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Write a synthetic Zipf corpus (train/valid/test.txt)',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--tokens', type=positive_int, required=True, help='Words in train.txt')
    parser.add_argument('--vocab', type=positive_int, default=30000,
                        help='Distinct words to draw from')
    parser.add_argument('--out', required=True, help='Folder to write into')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for split, n in (('train', args.tokens), ('valid', max(1, args.tokens // 20)),
                     ('test', max(1, args.tokens // 20))):
        write_split(os.path.join(args.out, f'{split}.txt'), n, args.vocab, rng)
    print(f'wrote {args.out}/{{train,valid,test}}.txt: {args.tokens} training words over '
          f'{args.vocab} word types')
    return 0


if __name__ == '__main__':
    sys.exit(main())
