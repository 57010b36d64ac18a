"""Read a PTB-style corpus into a vocabulary and token streams, cut the streams into windows,
and read any text (a file to score, say) onto a trained vocabulary.

A corpus folder holds train.txt, valid.txt and test.txt: UTF-8, one sentence a line, words
separated by whitespace. Each non-blank line becomes `<sos> w1 ... wn <eos>`.
"""
import os
import random
import re
import sys
from array import array
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from lm import UserError

SPECIALS = ['<pad>', '<sos>', '<eos>']
PAD, SOS, EOS = 0, 1, 2
UNK = '<unk>'
BOM = '\ufeff'
CHUNK = 2**22  # tokens remapped at a time under --max_vocab / --min_count
SPLITS = ('train', 'valid', 'test')
# PTB writes every number as N: "1990", "3.5", "1,000" and "10-year" all are N (or N-year).
NUMBER = re.compile(r'[+-]?\d[\d,./:]*')


class DataError(UserError):
    """A problem with the user's data, worded for the user."""


def _open_text(path):
    """Open a data file, or say in one line what stands in the way."""
    if not os.path.exists(path):
        raise DataError(f'missing data file: {path} (run `bash getdata.sh` for PTB, '
                        'or point --data_dir at a folder with train.txt, valid.txt, test.txt)')
    if os.path.isdir(path):
        raise DataError(f'{path} is a folder; a data file is a text file')
    if not os.path.isfile(path):
        raise DataError(f'{path} is not a regular file (a device, a pipe or a socket); a data '
                        'file is a text file')
    try:
        return open(path, 'rb')
    except OSError as e:
        raise DataError(f'cannot read {path}: {e.strerror or e}') from None


MARKERS = frozenset(SPECIALS)  # what reading adds around each line; never a word of a text


def word_lines(f, name):
    """(line number, words) of each non-blank line of a binary file, read as training reads
    text: UTF-8 (an error names the file and line), a byte-order mark dropped, a line ending
    in LF, CRLF or a lone CR (old Mac files), split() on whitespace. A marker typed as a word
    (<sos>, <eos>, <pad>) is refused, since it would silently become one."""
    number = 0
    for raw in f:
        try:
            line = raw.decode('utf-8')
        except UnicodeDecodeError as e:
            raise DataError(f'{name}, line {number + 1}: not valid UTF-8 ({e.reason} '
                            f'at byte {e.start})') from None
        if number == 0 and line.startswith(BOM):
            line = line[1:]
        parts = line.split('\r') if '\r' in line else [line]
        if len(parts) > 1 and not parts[-1].strip():
            parts.pop()  # what follows the last CR: the LF of CRLF, or nothing
        for part in parts:
            number += 1
            words = part.split()
            if '<' in part and not MARKERS.isdisjoint(words):
                marker = next(w for w in words if w in MARKERS)
                raise DataError(f'{name}, line {number}: {marker} is a marker that reading '
                                'adds (<sos> and <eos> around each line, <pad> to fill '
                                'batches), not a word of a text; remove or rename it')
            if words:
                yield number, words


def read_ids(path, index, grow=False):
    """Read a UTF-8 text file line by line into a compact int32 array of word ids: each
    non-blank line becomes `<sos> w1 ... wn <eos>`.

    With grow=True, a word not yet in `index` (word -> id) is given the next id, so the
    training text builds the vocabulary in order of first appearance as it is read. With
    grow=False, such a word is marked -1 here and becomes `<unk>` in `encode_file`.

    Nothing is kept per line but its ids (4 bytes a token), so memory grows with the token
    count alone and a 100M-token file reads in one pass. Blank lines are skipped; split()
    makes Windows line endings and trailing spaces tokenise exactly as Unix ones; a UTF-8
    byte-order mark (as some editors write) is not part of the first word.
    """
    ids = array('i')
    add = ids.extend
    lookup = index.setdefault if grow else index.get
    with _open_text(path) as f:
        for _, words in word_lines(f, path):
            ids.append(SOS)
            if grow:
                add([lookup(w, len(index)) for w in words])
            else:
                add([lookup(w, -1) for w in words])
            ids.append(EOS)
    if not ids:
        raise DataError(f'{path} is empty (no words in it)')
    return np.frombuffer(ids, dtype=np.int32)


def encode_file(path, index):
    """Ids of a file under a fixed vocabulary, and how many of its words were not in it
    (they become `<unk>`)."""
    ids = read_ids(path, index)
    missing = ids < 0
    unknown = int(missing.sum())
    if unknown:
        ids[missing] = index[UNK]
    return ids, unknown


def build_vocab_and_encode(path, max_vocab=0, min_count=1):
    """Read the training file once, building the vocabulary as it goes: specials first,
    then words in order of first appearance; `<unk>` is added at the end if the text lacks
    it, so that unseen words have somewhere to go.

    max_vocab (0: no limit) caps the vocabulary's size, specials and `<unk>` included, by
    keeping the most frequent words (ties: the earlier seen); min_count drops words seen
    fewer times. Kept words keep their order. Returns (vocab, ids, number of training
    tokens that became `<unk>`)."""
    index = {w: i for i, w in enumerate(SPECIALS)}
    ids = read_ids(path, index, grow=True)
    index.setdefault(UNK, len(index))
    vocab = list(index)
    if max_vocab == 0 and min_count <= 1:
        return vocab, ids, 0

    counts = np.zeros(len(vocab), dtype=np.int64)
    for start in range(0, len(ids), CHUNK):  # bincount widens to int64: a slice at a time
        counts += np.bincount(ids[start:start + CHUNK], minlength=len(vocab))
    first_word, unk = len(SPECIALS), index[UNK]
    candidates = [i for i in range(first_word, len(vocab)) if counts[i] >= min_count and i != unk]
    if max_vocab:
        room = max(0, max_vocab - first_word - 1)  # specials and <unk> always stay
        # stable sort: equal counts keep first-appearance order
        candidates = sorted(sorted(candidates, key=lambda i: -counts[i])[:room])
    kept = list(range(first_word)) + sorted(candidates + [unk])
    new_id = np.full(len(vocab), -1, dtype=np.int32)
    new_id[kept] = np.arange(len(kept), dtype=np.int32)
    unknown = 0
    for start in range(0, len(ids), CHUNK):  # in place, a slice at a time: no second array
        part = new_id[ids[start:start + CHUNK]]
        unknown += int((part < 0).sum())
        ids[start:start + CHUNK] = np.where(part < 0, new_id[unk], part)
    return [vocab[i] for i in kept], ids, unknown


@dataclass
class Corpus:
    vocab: list
    train: torch.Tensor  # int32 token ids, one flat stream per split
    valid: torch.Tensor
    test: torch.Tensor
    unknown: dict = field(default_factory=dict)  # split -> number of words mapped to <unk>


def load_corpus(data_dir, vocab=None, max_vocab=0, min_count=1):
    """Read the three splits. With `vocab` (a checkpoint's), encode with it instead of
    building one from the training text."""
    if os.path.isfile(data_dir):
        raise DataError(f'--data_dir {data_dir} is a file; give the folder that holds '
                        'train.txt, valid.txt and test.txt')
    if not os.path.isdir(data_dir):
        raise DataError(f'data folder not found: {data_dir} (run `bash getdata.sh` to install '
                        'PTB into data/penn/, or pass --data_dir)')
    paths = {s: os.path.join(data_dir, f'{s}.txt') for s in SPLITS}
    for path in paths.values():
        _open_text(path).close()  # a missing valid.txt is reported before train.txt is read
    streams, unknown = {}, {}
    if vocab is None:
        vocab, streams['train'], unknown['train'] = build_vocab_and_encode(
            paths['train'], max_vocab, min_count)
    index = {w: i for i, w in enumerate(vocab)}
    for split in SPLITS:
        if split not in streams:
            streams[split], unknown[split] = encode_file(paths[split], index)
    tensors = {s: torch.from_numpy(a) for s, a in streams.items()}
    return Corpus(vocab, tensors['train'], tensors['valid'], tensors['test'], unknown)


def is_ptb_style(vocab):
    """A vocabulary made like PTB's: lower-case throughout, numbers written as N."""
    def lower_case(word):  # N stands for a number, as in N-year
        word = word.replace('N', '')
        return word.lower() == word
    return 'N' in vocab and all(lower_case(w) for w in vocab)


def map_words(words, index, respell=False):
    """Map a user's words onto the vocabulary `index` (word -> id). Returns (ids,
    respelled, unknown). With `respell` (a PTB-style vocabulary), a missing word is tried
    lower-cased, then with its numbers as N: 'The' -> 'the', '1990' -> 'N'. A word still
    missing becomes <unk>."""
    ids, respelled, unknown = [], [], []
    for word in words:
        candidates = [word, word.lower(), NUMBER.sub('N', word.lower())] if respell else [word]
        found = next((c for c in candidates if c in index), None)
        if found is None:
            unknown.append(word)
            found = UNK
        elif found != word:
            respelled.append((word, found))
        ids.append(index[found])
    return ids, respelled, unknown


def print_mapping_notes(respelled, unknown, limit=20):
    """The notes on stderr that say how map_words read the user's words."""
    def listed(items):
        items = list(dict.fromkeys(items))  # each once, in order
        more = f' and {len(items) - limit} more' if len(items) > limit else ''
        return ', '.join(items[:limit]) + more
    if respelled:
        print('note: the vocabulary is lower-case and writes numbers as N (as PTB does), so '
              'the text was read as: ' + listed(f'{a} -> {b}' for a, b in respelled),
              file=sys.stderr)
    if unknown:
        print('note: not in the vocabulary, read as <unk>: ' + listed(unknown), file=sys.stderr)


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


def fixed_windows(data, seq_length):
    """(start, length) of each window of window_starts."""
    steps = data.size(1)
    return [(start, min(seq_length, steps - 1 - start))
            for start in window_starts(data, seq_length)]


def epoch_windows(data, seq_length, epoch, variable=False, seed=0):
    """An epoch's training windows as (start, length): fixed_windows, or under `variable`
    (--variable_bptt) variable_windows drawn anew each epoch from `seed` and `epoch`, so that
    a resumed run draws the same ones."""
    if variable:
        return variable_windows(data, seq_length, random.Random(f'{seed}:{epoch}'))
    return fixed_windows(data, seq_length)


def variable_windows(data, seq_length, rng):
    """AWD-LSTM's variable-length windows (Merity et al. 2017), as (start, length) pairs
    that cover `data` once: each length is drawn around seq_length (around half of it one
    time in twenty), with a standard deviation of 5, at least 5 and at most seq_length + 40.
    Every cut through the text then falls somewhere new each epoch, so that no word is
    always predicted from the same short context. `rng` is a random.Random: seeded from
    the run's seed and the epoch, the same windows are drawn again on resume and in every
    process."""
    steps, windows, start = data.size(1), [], 0
    shortest = min(5, seq_length)
    while start < steps - 1:
        mean = seq_length if rng.random() < 0.95 else seq_length / 2
        length = min(max(shortest, int(rng.gauss(mean, 5))), seq_length + 40, steps - 1 - start)
        windows.append((start, length))
        start += length
    return windows


def get_window(data, start, seq_length):
    """Input and target of the window that starts at column `start`, as int64 (the streams
    are stored as int32 to halve their memory; cross-entropy wants int64 targets).

        data[:, start : start+T]      x   a b c d
        data[:, start+1 : start+1+T]  y   b c d e   (the next word of each x)
    """
    length = min(seq_length, data.size(1) - 1 - start)
    return data[:, start:start + length].long(), data[:, start + 1:start + 1 + length].long()


def check_sizes(corpus, batch_size, seq_length):
    """check_size for a run: a training window at least, one target a row to evaluate."""
    check_size('train', corpus.train, batch_size, seq_length)
    for split in ('valid', 'test'):
        check_size(split, getattr(corpus, split), batch_size)


def check_size(name, stream, batch_size, seq_length=None):
    """Raise DataError unless `stream` holds at least one window of batch_size x seq_length
    (training), or without `seq_length`, two tokens a row (evaluation, whose last window may
    be short)."""
    need = batch_size * ((seq_length or 1) + 1)
    if stream.numel() >= need:
        return
    if seq_length is None:
        raise DataError(f'{name} split is too small: {stream.numel()} tokens, but its '
                        f'--batch_size {batch_size} rows need {need} (two tokens each); use a '
                        'smaller --batch_size')
    raise DataError(f'{name} split is too small: {stream.numel()} tokens, but one window of '
                    f'--batch_size {batch_size} x --seq_length {seq_length} needs {need}; '
                    'use a smaller --batch_size or --seq_length')


class Text(NamedTuple):
    """A text read as training reads it, mapped onto a vocabulary (read_text)."""
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
            raise DataError('standard input is closed; give a file to score, or pipe '
                            'text in: echo "some words" | python score.py -')
        return sys.stdin.buffer
    try:
        return open(path, 'rb')
    except OSError as e:
        raise DataError(f'cannot read {path}: {e.strerror or e}') from None


def read_text(path, vocab):
    """Read `path` ('-': stdin) as training reads text and map its words onto `vocab`."""
    name = '<stdin>' if path == '-' else path
    f = read_input(path)
    index = {w: i for i, w in enumerate(vocab)}
    respell = is_ptb_style(vocab)
    line_numbers, words, ids, line_of, respelled, unknown = [], [], [], [], [], []
    respelled_per_line, unk_per_line, unk = [], [], index[UNK]
    with f:
        for number, line_words in word_lines(f, name):
            line_ids, line_respelled, line_unknown = map_words(line_words, index, respell)
            ids += [SOS] + line_ids + [EOS]
            line_of += [len(words)] * (len(line_ids) + 2)
            line_numbers.append(number)
            words.append(line_words)
            respelled += line_respelled
            unknown += line_unknown
            respelled_per_line.append(len(line_respelled))
            unk_per_line.append(line_ids.count(unk))
    if not words:
        raise DataError(f'{name} has no words to score')
    return Text(line_numbers, words, torch.tensor(ids), np.array(line_of), respelled, unknown,
                respelled_per_line, unk_per_line)
