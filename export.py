"""Export a trained model as an ONNX graph, to run it without this code (ONNX Runtime, say).

    python export.py --checkpoint best_model.pt --onnx lm.onnx   # writes lm.onnx, lm.vocab.txt

The graph takes `ids` (int64, batch x time: word ids), `h` and `c` (float32, layers x batch x
hidden: the LSTM's state, zeros to start) and returns `logits` (batch x time x vocabulary:
log_softmax gives the log-probabilities of the next word), `h_next` and `c_next`, the state to
feed with the next window or word. Batch and time are free. The vocabulary goes beside it, one
word a line, the line number (from 0) being the word's id. Where ONNX Runtime is installed,
the export is checked against PyTorch on windows of random ids, with the state carried from
window to window, and the largest difference of the log-probabilities is printed.
"""
import signal
import sys

from lm.signals import stop_at_once

if __name__ == '__main__':  # before PyTorch is imported: Ctrl-C ends the process at once
    signal.signal(signal.SIGINT, stop_at_once)

import argparse
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lm.checkpoint import TRAIN_FIRST, CheckpointError, build_model, load_checkpoint
from lm.flags import add_checkpoint_flag

INPUTS, OUTPUTS = ('ids', 'h', 'c'), ('logits', 'h_next', 'c_next')
CHECK_TOLERANCE = 1e-4  # nats: the log-probabilities of ONNX Runtime and PyTorch agree within


class Stateful(nn.Module):
    """The model with its state as separate inputs and outputs, as an ONNX graph has them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, h, c):
        logits, (h_next, c_next) = self.model(ids, (h, c))
        return logits, h_next, c_next


def vocab_path(onnx_path):
    """lm.onnx -> lm.vocab.txt"""
    return os.path.splitext(onnx_path)[0] + '.vocab.txt'


def export(model, path):
    """Write `model` (on the CPU, in evaluation: no dropout) to `path` as ONNX, batch and
    time free."""
    model = model.cpu()
    model.sparse_tied_grad = False  # a dense embedding lookup: ONNX has no sparse gradient
    state = model.init_hidden(2)
    ids = torch.full((2, 3), 3, dtype=torch.long)
    batch_time, batch = {0: 'batch', 1: 'time'}, {1: 'batch'}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter('ignore')
        # The TorchScript exporter writes nn.LSTM as ONNX's LSTM operator, whose time axis
        # stays free; torch.export's (dynamo=True) fixes it to the example's length here.
        torch.onnx.export(Stateful(model).eval(), (ids, *state), path, dynamo=False,
                          input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes={'ids': batch_time, 'h': batch, 'c': batch,
                                        'logits': batch_time, 'h_next': batch,
                                        'c_next': batch})


def largest_difference(model, path, windows=3, batch=4, length=20, seed=0):
    """The largest difference between ONNX Runtime's and PyTorch's log-probabilities of the
    next word, over `windows` windows of random ids with the state carried from one to the
    next; None where ONNX Runtime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    vocab = model.fc.out_features
    state = model.init_hidden(batch)
    onnx_state = [s.numpy() for s in state]
    worst = 0.0
    with torch.no_grad():
        for _ in range(windows):
            ids = torch.randint(0, vocab, (batch, length), generator=generator)
            logits, state = model(ids, state)
            got = session.run(None, dict(zip(INPUTS, [ids.numpy(), *onnx_state])))
            onnx_state = got[1:]
            difference = (F.log_softmax(torch.from_numpy(got[0]), -1)
                          - F.log_softmax(logits, -1)).abs().max()
            worst = max(worst, float(difference))
    return worst


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_checkpoint_flag(p, help='The model to export')
    p.add_argument('--onnx', required=True, metavar='FILE',
                   help='Where to write the graph (the vocabulary goes beside it)')
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import onnx  # noqa: F401  the exporter writes through it
    except ImportError:
        print('error: export.py needs onnx (and onnxruntime to check the export): pip install '
              'onnx onnxruntime', file=sys.stderr)
        return 1
    try:
        ckpt = load_checkpoint(args.checkpoint, missing_hint=TRAIN_FIRST)
        model = build_model(ckpt)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    words = vocab_path(args.onnx)
    try:
        export(model, args.onnx)
        with open(words, 'w', encoding='utf-8') as f:
            f.writelines(word + '\n' for word in ckpt['vocab'])
    except OSError as e:
        print(f'error: cannot write {e.filename or args.onnx}: {e.strerror or e}',
              file=sys.stderr)
        return 1
    print(f'wrote {args.onnx} and {words} ({len(ckpt["vocab"])} words)')
    difference = largest_difference(model, args.onnx)
    if difference is None:
        print('note: onnxruntime is not installed, so the export was not checked (pip install '
              'onnxruntime)', file=sys.stderr)
        return 0
    print(f'checked with ONNX Runtime: log-probabilities within {difference:.1e} of PyTorch\'s '
          f'over 3 windows, the state carried')
    if difference > CHECK_TOLERANCE:
        print(f'error: ONNX Runtime differs from PyTorch by {difference:.1e}, more than '
              f'{CHECK_TOLERANCE:g}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
