"""export.py: the model as an ONNX graph, run by ONNX Runtime beside PyTorch (onnx and
onnxruntime needed: skipped with the reason where they are absent)."""
import sys

import pytest
import torch
import torch.nn.functional as F

import data
from conftest import LOGPROB_TOL, ROOT, TINY, pattern_corpus, run_main, train
from lm import flags
from lm.checkpoint import best_checkpoint, build_model, load_checkpoint
from lm.runfiles import save_checkpoint
from model import LSTMLanguageModel

pytest.importorskip('onnx', reason='export.py needs onnx (pip install onnx onnxruntime)')
onnxruntime = pytest.importorskip('onnxruntime', reason='the export is checked with onnxruntime')


def carried_logprobs(checkpoint, onnx_path, batched, seq_length):
    """PyTorch's and ONNX Runtime's log-probabilities of every window of `batched`, the
    state carried from window to window in each."""
    model = build_model(load_checkpoint(checkpoint)).eval()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    state = model.init_hidden(batched.size(0))
    onnx_state = [s.numpy() for s in state]
    ours, theirs = [], []
    with torch.no_grad():
        for start in data.window_starts(batched, seq_length):
            x, _ = data.get_window(batched, start, seq_length)
            logits, state = model(x, state)
            out = session.run(None, {'ids': x.numpy(), 'h': onnx_state[0], 'c': onnx_state[1]})
            onnx_state = out[1:]
            ours.append(F.log_softmax(logits, -1))
            theirs.append(F.log_softmax(torch.from_numpy(out[0]), -1))
    return torch.cat(ours, 1), torch.cat(theirs, 1)


@pytest.mark.parametrize('flags', [
    ['--tied'],  # TINY's 1x16, tied
    ['--embed_size', '8', '--projection', '--no-decoder_bias', '--dropout_recurrent', '0.2',
     '--num_layers', '2'],  # untied, a projection, no decoder bias, layer by layer
])
def test_onnx_runtime_gives_pytorchs_log_probabilities_window_after_window(tmp_path, flags):
    pattern_corpus(tmp_path / 'corpus')
    save = tmp_path / 'model.pt'
    proc = run_main('demo_tie.py', '--data_dir', tmp_path / 'corpus', *TINY, *flags,
                    '--epochs', 1, '--save_path', save)
    assert proc.returncode == 0, proc.stderr
    exported = run_main('export.py', '--checkpoint', save, '--onnx', tmp_path / 'lm.onnx')
    assert exported.returncode == 0, exported.stderr
    assert 'checked with ONNX Runtime: log-probabilities within' in exported.stdout
    vocab = (tmp_path / 'lm.vocab.txt').read_text(encoding='utf-8').splitlines()
    assert vocab == load_checkpoint(save)['vocab']  # line number = id
    # other batch sizes and window lengths than the export's example: both axes are free
    stream = data.load_corpus(tmp_path / 'corpus').test
    for rows, seq_length in ((3, 5), (1, 17)):
        ours, theirs = carried_logprobs(save, tmp_path / 'lm.onnx',
                                        data.batchify(stream, rows), seq_length)
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, atol=LOGPROB_TOL, rtol=0), \
            (ours - theirs).abs().max()


def test_on_ptb_text_a_model_of_ptbs_vocabulary_exports_the_same_scores(tmp_path):
    penn = ROOT / 'data' / 'penn'
    if not (penn / 'valid.txt').exists():
        pytest.skip('PTB is not installed (bash getdata.sh)')
    corpus = data.load_corpus(penn)
    torch.manual_seed(0)
    model = LSTMLanguageModel(len(corpus.vocab), 32, 32, 2, 0.0, True)
    trained = flags.build_parser().parse_args(['--tied', '--embed_size', '32', '--hidden_size',
                                               '32'])
    save_checkpoint(best_checkpoint(model, corpus.vocab, trained, 1, 5.0, 'ptb'),
                    tmp_path / 'ptb.pt')
    exported = run_main('export.py', '--checkpoint', tmp_path / 'ptb.pt', '--onnx',
                        tmp_path / 'ptb.onnx')
    assert exported.returncode == 0, exported.stderr
    batched = data.batchify(corpus.valid[:20 * 35 * 4 + 20], 20)
    ours, theirs = carried_logprobs(tmp_path / 'ptb.pt', tmp_path / 'ptb.onnx', batched, 35)
    targets = batched[:, 1:].long().unsqueeze(-1)
    assert torch.allclose(ours.gather(-1, targets), theirs.gather(-1, targets),
                          atol=LOGPROB_TOL, rtol=0)


def test_a_checkpoint_that_is_not_a_model_is_refused_in_one_line(tmp_path):
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a checkpoint')
    for checkpoint in (bad, tmp_path / 'missing.pt'):
        proc = run_main('export.py', '--checkpoint', checkpoint, '--onnx', tmp_path / 'x.onnx')
        assert proc.returncode == 1 and proc.stderr.count('\n') == 1, proc.stderr
        assert not (tmp_path / 'x.onnx').exists()


def test_without_onnxruntime_the_export_is_written_and_said_unchecked(tmp_path, monkeypatch):
    proc, save = train(tmp_path, epochs=1)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # as where it is not installed
    exported = run_main('export.py', '--checkpoint', save, '--onnx', tmp_path / 'lm.onnx')
    assert exported.returncode == 0 and (tmp_path / 'lm.onnx').exists()
    assert 'onnxruntime is not installed, so the export was not checked' in exported.stderr
