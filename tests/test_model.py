import pytest
import torch

from conftest import train
from model import LSTMLanguageModel, count_parameters, init_uniform

SEED_BLOCK = """LSTMLanguageModel(
  (embedding): Embedding(10002, 650)
  (lstm): LSTM(650, 650, num_layers=2, batch_first=True, dropout=0.5)
  (dropout): Dropout(p=0.5, inplace=False)
  (fc): Linear(in_features=650, out_features=10002, bias=True)
)"""


def test_printed_model_matches_the_reference_block():
    assert str(LSTMLanguageModel(10002, 650, 650, 2, 0.5, True)) == SEED_BLOCK


def test_reference_parameter_counts_tied_and_untied():
    assert count_parameters(LSTMLanguageModel(10002, 650, 650, 2, 0.5, True)) == 13281702
    assert count_parameters(LSTMLanguageModel(10002, 650, 650, 2, 0.5, False)) == 19783002


def test_tying_shares_one_parameter_and_saves_vocab_times_hidden():
    tied = LSTMLanguageModel(50, 12, 12, 2, 0.0, True)
    untied = LSTMLanguageModel(50, 12, 12, 2, 0.0, False)
    assert tied.fc.weight is tied.embedding.weight
    assert tied.fc.weight.data_ptr() == tied.embedding.weight.data_ptr()
    assert untied.fc.weight.data_ptr() != untied.embedding.weight.data_ptr()
    assert count_parameters(untied) - count_parameters(tied) == 50 * 12


def test_tied_weights_stay_one_through_training_steps():
    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 8, 8, 1, 0.0, True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randint(0, 30, (2, 5))
    for _ in range(3):
        logits, _ = model(x, model.init_hidden(2))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 30), x.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.equal(model.fc.weight, model.embedding.weight)
    reloaded = LSTMLanguageModel(30, 8, 8, 1, 0.0, True)
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.fc.weight is reloaded.embedding.weight


def test_tying_needs_equal_sizes():
    with pytest.raises(ValueError, match='--embed_size equal to --hidden_size'):
        LSTMLanguageModel(10, 8, 16, 1, 0.0, True)


def test_init_hidden_is_zeros_of_the_right_shape():
    h, c = LSTMLanguageModel(10, 8, 6, 3, 0.0, False).init_hidden(4)
    assert h.shape == c.shape == (3, 4, 6)
    assert not h.any() and not c.any()


def test_init_range_is_uniform_everywhere_but_the_lstm_biases():
    torch.manual_seed(0)
    for variational in (False, True):
        model = init_uniform(LSTMLanguageModel(500, 16, 24, 2, 0.0, False, projection=True,
                                               variational=variational), 0.3)
        for name, p in model.named_parameters():
            if name.startswith('lstm.') and 'bias' in name:
                assert not p.any(), name
            else:  # uniform in +-0.3: every value inside, the largest near the edge
                assert p.abs().max() <= 0.3 and p.abs().max() > 0.25, name


def test_the_trainer_initialises_with_init_range(tmp_path):
    """--init_range 0.3, then one epoch at a rate too small to move the weights: the model
    saved holds the initialisation (the default's LSTM biases are not zero, its embedding
    within +-0.1)."""
    proc, save = train(tmp_path, '--init_range', '0.3', '--optimizer', 'sgd', '--lr', '1e-12',
                       epochs=1)
    assert proc.returncode == 0, proc.stderr
    state = torch.load(save, weights_only=True)['model_state']
    assert state['lstm.bias_ih_l0'].abs().max() < 1e-9
    assert 0.25 < state['embedding.weight'].abs().max() <= 0.3
