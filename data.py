"""Read a PTB-style corpus into a vocabulary and token streams, and cut the streams into windows.

A corpus folder holds train.txt, valid.txt and test.txt: UTF-8, one sentence a line, words
separated by whitespace. Each non-blank line becomes `<sos> w1 ... wn <eos>`.
"""
import os
from dataclasses import dataclass, field

import torch

SPECIALS = ['<pad>', '<sos>', '<eos>']
PAD, SOS, EOS = 0, 1, 2
UNK = '<unk>'
SPLITS = ('train', 'valid', 'test')


class DataError(Exception):
    """A problem with the user's data, worded for the user."""


def read_sentences(path):
    """Return a list of sentences, each a list of words, from a UTF-8 text file.

    Blank lines are skipped (they hold no words); split() makes Windows line endings and
    trailing spaces tokenise exactly as Unix ones.
    """
    if not os.path.isfile(path):
        raise DataError(f'missing data file: {path} (run `bash getdata.sh` for PTB, '
                        'or point --data_dir at a folder with train.txt, valid.txt, test.txt)')
    sentences = []
    with open(path, 'rb') as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as e:
                raise DataError(f'{path}, line {line_number}: not valid UTF-8 ({e.reason} '
                                f'at byte {e.start})') from None
            words = line.split()
            if words:
                sentences.append(words)
    if not sentences:
        raise DataError(f'{path} is empty (no words in it)')
    return sentences


def build_vocab(train_sentences):
    """Specials first, then training words in order of first appearance; `<unk>` is added
    at the end if the training text lacks it, so that unseen words have somewhere to go."""
    vocab = list(SPECIALS)
    index = {w: i for i, w in enumerate(vocab)}
    for sentence in train_sentences:
        for word in sentence:
            if word not in index:
                index[word] = len(vocab)
                vocab.append(word)
    if UNK not in index:
        vocab.append(UNK)
    return vocab


def encode(sentences, index):
    """Turn sentences into one flat LongTensor `<sos> w.. <eos> <sos> w.. <eos> ...`.
    Returns the tensor and how many words were not in `index` (mapped to `<unk>`)."""
    unk = index[UNK]
    ids, unknown = [], 0
    for sentence in sentences:
        ids.append(SOS)
        for word in sentence:
            i = index.get(word)
            if i is None:
                i, unknown = unk, unknown + 1
            ids.append(i)
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long), unknown


@dataclass
class Corpus:
    vocab: list
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    unknown: dict = field(default_factory=dict)  # split -> number of words mapped to <unk>


def load_corpus(data_dir, vocab=None):
    """Read the three splits. With `vocab` (a checkpoint's), encode with it instead of
    building one from the training text."""
    if not os.path.isdir(data_dir):
        raise DataError(f'data folder not found: {data_dir} (run `bash getdata.sh` to install '
                        'PTB into data/penn/, or pass --data_dir)')
    sentences = {s: read_sentences(os.path.join(data_dir, f'{s}.txt')) for s in SPLITS}
    vocab = vocab or build_vocab(sentences['train'])
    index = {w: i for i, w in enumerate(vocab)}
    streams, unknown = {}, {}
    for split in SPLITS:
        streams[split], unknown[split] = encode(sentences[split], index)
    return Corpus(vocab, streams['train'], streams['valid'], streams['test'], unknown)


def batchify(stream, batch_size):
    """Lay a 1-D token stream out as `batch_size` parallel streams, one per row.

    With the stream a b c d ... z and batch_size 3, the 2 tokens that do not fill a row
    (y z) are dropped; row 1 picks up the text where row 0 ends, and so on. Each row is
    read left to right, one window of seq_length columns at a time:

        a b c d e f g h        <- row 0
        i j k l m n o p        <- row 1
        q r s t u v w x        <- row 2
        |--window 0--|
                  ^ the LSTM's hidden state for each row carries over to the next window

    The result has shape (batch_size, steps).
    """
    steps = stream.size(0) // batch_size
    return stream[:steps * batch_size].view(batch_size, steps)


def window_starts(data, seq_length):
    """Start columns of the windows over batched `data`: every column but the last is an
    input once, and every column but the first is a target once. The last window may be
    shorter than seq_length."""
    return range(0, data.size(1) - 1, seq_length)


def get_window(data, start, seq_length):
    """Input and target of the window that starts at column `start` (views, not copies).

        data[:, start : start+T]      x   a b c d
        data[:, start+1 : start+1+T]  y   b c d e   (the next word of each x)
    """
    length = min(seq_length, data.size(1) - 1 - start)
    return data[:, start:start + length], data[:, start + 1:start + 1 + length]


def check_size(name, stream, batch_size, seq_length=1):
    """Raise DataError unless `stream` holds at least one window of batch_size x seq_length."""
    need = batch_size * (seq_length + 1)
    if stream.numel() < need:
        raise DataError(f'{name} split is too small: {stream.numel()} tokens, but one window of '
                        f'--batch_size {batch_size} x --seq_length {seq_length} needs {need}; '
                        'use a smaller --batch_size or --seq_length')
