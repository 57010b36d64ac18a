"""The layouts score.py reads a text in, each giving every stream position's loss (NaN where
the layout scores none) and the totals:

    carried       the stream cut into rows and read in windows with the hidden state carried
                  across windows and lines, as the trainer evaluates (batch 1: one stream)
    independent   each line on its own from a fresh state, lines of similar length batched
"""
import math
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

import data
from lm.console import progress
from lm.loop import token_losses
from lm.loss import cross_entropy

LINES_PER_BATCH = 64  # --independent: lines scored side by side (sorted by length, padded)


LOGITS_BUDGET = 2**24  # --independent: scores held at once (64 MB of float32)


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
            batch = pad_sequence([text.stream[starts[i]:starts[i] + lengths[i]] for i in lines],
                                 batch_first=True, padding_value=data.PAD)
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
