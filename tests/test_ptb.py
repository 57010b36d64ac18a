"""Checks on the real Penn Treebank; skipped unless `bash getdata.sh` has installed data/penn."""
import pytest
import torch

import data
from conftest import ROOT, list_reader
from model import LSTMLanguageModel, count_parameters

PENN = ROOT / 'data' / 'penn'
pytestmark = pytest.mark.skipif(not (PENN / 'train.txt').exists(),
                                reason='PTB not installed (bash getdata.sh)')


@pytest.fixture(scope='module')
def ptb():
    return data.load_corpus(PENN)


def test_vocabulary_has_10002_entries(ptb):
    assert len(ptb.vocab) == 10002
    assert ptb.vocab[:3] == ['<pad>', '<sos>', '<eos>'] and '<unk>' in ptb.vocab


def test_token_counts_are_words_plus_sos_and_eos_per_line(ptb):
    # shared/data/README.md: 929,589 / 73,760 / 82,430 words+<eos> on 42,068 / 3,370 / 3,761 lines
    assert ptb.train.numel() == 929589 + 42068
    assert ptb.valid.numel() == 73760 + 3370
    assert ptb.test.numel() == 82430 + 3761
    assert ptb.unknown == {'train': 0, 'valid': 0, 'test': 0}


def test_parameter_counts_of_the_reference_model(ptb):
    sizes = {'vocab_size': len(ptb.vocab), 'embed_size': 650, 'hidden_size': 650, 'num_layers': 2,
                 'dropout': 0.5}
    assert count_parameters(LSTMLanguageModel(**sizes, tied=True)) == 13281702
    assert count_parameters(LSTMLanguageModel(**sizes, tied=False)) == 19783002


def test_reference_batch_layout(ptb):
    test = data.batchify(ptb.test, 20)
    assert test.shape == (20, 86191 // 20)
    assert len(data.window_starts(test, 30)) == 144  # 143 full windows and a shorter last one


def test_streaming_reader_matches_the_list_reader_on_ptb(ptb):
    vocab, streams = list_reader(PENN)
    assert ptb.vocab == vocab
    for name in data.SPLITS:
        assert torch.equal(getattr(ptb, name).long(), streams[name])


def test_a_vocabulary_cap_at_ptbs_size_changes_nothing(ptb):
    capped = data.load_corpus(PENN, max_vocab=10002, min_count=1)
    assert capped.vocab == ptb.vocab and torch.equal(capped.train, ptb.train)
    assert capped.unknown['train'] == 0
    smaller = data.load_corpus(PENN, max_vocab=5000)
    assert len(smaller.vocab) == 5000 and smaller.unknown['train'] > 0
