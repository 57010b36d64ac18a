"""The opt-in regularisers (model.py, lm/recipes.py): each one's defining property, that none adds a
parameter or touches the reference's model, and the preset through the real scripts."""
import random
import warnings

import torch

import data
from conftest import (
    printed_test_lines,
    run_main,
    run_whole_and_interrupted,
    states_equal,
    train,
)
from model import (
    LSTMLanguageModel,
    count_parameters,
    dropconnect,
    locked_dropout,
    run_lstm,
)

REGULARIZED = {'variational': True, 'dropouti': 0.4, 'dropouth': 0.3, 'dropoute': 0.1, 'wdrop': 0.5}


def test_locked_dropout_keeps_one_mask_per_sequence_across_time():
    torch.manual_seed(0)
    x = torch.ones(4, 50, 32)
    y = locked_dropout(x, 0.5, training=True)
    dropped = y == 0
    assert dropped.any() and not dropped.all()
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # same units at every step
    assert not torch.equal(dropped[0], dropped[1])                  # but each sequence its own
    assert torch.allclose(y[~dropped], torch.tensor(2.0))          # kept units scaled by 1/(1-p)
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_embedding_dropout_drops_every_occurrence_of_a_word_and_nothing_else():
    """What the model's forward hands its LSTM, caught at the LSTM's input."""
    torch.manual_seed(1)
    model = LSTMLanguageModel(40, 8, 8, 1, 0.0, True, dropoute=0.5).train()
    x = torch.randint(0, 40, (6, 30))
    seen = []
    model.lstm.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    model(x, model.init_hidden(6))
    emb = seen[0].detach()
    zero = (emb == 0).all(-1)
    assert zero.any() and not zero.all()
    for word in x.unique():
        rows = zero[x == word]
        assert rows.all() or not rows.any()  # a word is dropped everywhere in the window or nowhere
    kept = ~zero
    assert torch.allclose(emb[kept], 2 * model.embedding.weight[x[kept]])


def test_weight_drop_uses_one_hidden_to_hidden_mask_for_the_whole_sequence():
    """DropConnect, not dropout: the LSTM with weight drop equals, step by step, an LSTM
    cell whose hidden-to-hidden matrix was masked once before the sequence began."""
    torch.manual_seed(2)
    lstm = torch.nn.LSTM(5, 6, 1, batch_first=True)
    x, h0 = torch.randn(3, 12, 5), (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6))
    state = torch.get_rng_state()
    out, _ = run_lstm(lstm, x, h0, 0.5)
    torch.set_rng_state(state)
    w_hh = dropconnect(lstm.weight_hh_l0, 0.5)  # the same draw
    assert (w_hh == 0).any()
    cell = torch.nn.LSTMCell(5, 6)
    with torch.no_grad():
        cell.weight_ih.copy_(lstm.weight_ih_l0), cell.weight_hh.copy_(w_hh)
        cell.bias_ih.copy_(lstm.bias_ih_l0), cell.bias_hh.copy_(lstm.bias_hh_l0)
    h, c, steps = torch.zeros(3, 6), torch.zeros(3, 6), []
    for t in range(12):
        h, c = cell(x[:, t], (h, c))
        steps.append(h)
    assert torch.allclose(out, torch.stack(steps, 1), atol=1e-6)
    assert not torch.allclose(out, lstm(x, h0)[0], atol=1e-3)  # the drop did something
    out.sum().backward()
    assert lstm.weight_hh_l0.grad is not None  # and the module's own weight learns


def test_dropconnect_drops_at_its_rate_and_keeps_the_expected_weight():
    """Each entry is dropped with probability p and the kept ones are scaled so that the
    expected weight is unchanged, as F.dropout does; the gradient flows to the kept entries."""
    torch.manual_seed(3)
    weight = torch.randn(400, 500, requires_grad=True)
    for p in (0.1, 0.5, 0.8):
        dropped = dropconnect(weight, p)
        kept = dropped != 0
        assert abs(1 - kept.float().mean().item() - p) < 0.01
        assert torch.allclose(dropped[kept], weight[kept] / (1 - p))
    dropped.sum().backward()
    assert torch.equal(weight.grad, kept.float() / (1 - p))


def test_variable_windows_cover_the_stream_once_with_lengths_around_seq_length():
    stream = torch.zeros(4, 20001)
    windows = data.variable_windows(stream, 30, random.Random('1111:1'))
    starts = [s for s, _ in windows]
    lengths = [n for _, n in windows]
    assert starts[0] == 0 and sum(lengths) == 20000
    assert all(s + n == t for (s, n), t in zip(windows, starts[1:]))  # contiguous, no overlap
    assert min(lengths[:-1]) >= 5 and max(lengths) <= 70
    assert 27 < sum(lengths) / len(lengths) < 31  # 95% around 30, 5% around 15
    assert len(set(lengths)) > 10
    assert windows == data.variable_windows(stream, 30, random.Random('1111:1'))  # resumable
    assert windows != data.variable_windows(stream, 30, random.Random('1111:2'))  # new each epoch


def test_regularisers_add_no_parameter_and_leave_the_reference_model_alone():
    reference = LSTMLanguageModel(10002, 650, 650, 2, 0.5, True)
    regularized = LSTMLanguageModel(10002, 650, 650, 2, 0.5, True, **REGULARIZED)
    assert count_parameters(regularized) == count_parameters(reference) == 13281702
    # off, the model draws the reference's dropout masks in the reference's order
    torch.manual_seed(3)
    plain = LSTMLanguageModel(30, 8, 8, 2, 0.3, True)
    torch.manual_seed(3)
    all_off = LSTMLanguageModel(30, 8, 8, 2, 0.3, True, variational=False, dropouti=0.3,
                                dropouth=0.3, dropoute=0.0, wdrop=0.0)
    x = torch.randint(0, 30, (2, 9))
    torch.manual_seed(4)
    a = plain(x, plain.init_hidden(2))[0]
    torch.manual_seed(4)
    b = all_off(x, all_off.init_hidden(2))[0]
    assert torch.equal(a, b)


def test_regularisers_are_off_in_evaluation_and_raise_no_warning():
    torch.manual_seed(5)
    model = LSTMLanguageModel(30, 8, 8, 2, 0.3, True, **REGULARIZED)
    x = torch.randint(0, 30, (2, 9))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model.train()
        logits, _ = model(x, model.init_hidden(2))
        logits.sum().backward()
        model.eval()
        first = model(x, model.init_hidden(2))[0]
        second = model(x, model.init_hidden(2))[0]
    assert torch.equal(first, second)  # deterministic: no mask drawn in evaluation


def test_the_preset_trains_resumes_evaluates_and_generates(tmp_path):
    """--recipe regularized through the real scripts: it is printed, recorded in the
    checkpoint, learns the tiny corpus, resumes without repeating the flags, and the
    checkpoint is read by --eval_only and generate.py."""
    proc, save = train(tmp_path, '--recipe', 'regularized', '--dropout', '0.1', epochs=1)
    assert proc.returncode == 0, proc.stderr
    recipe_line = next(line for line in proc.stdout.splitlines() if line.startswith('Recipe'))
    assert recipe_line == ('Recipe regularized: --variational --dropout 0.1 --dropouti 0.4 '
                           '--dropouth 0.25 --dropoute 0.1 --wdrop 0.5 --alpha 2.0 --beta 1.0 '
                           '--variable_bptt')
    ckpt = torch.load(save, weights_only=True)
    assert ckpt['model_args']['variational'] and ckpt['model_args']['wdrop'] == 0.5
    assert ckpt['args']['recipe'] == 'regularized'

    resumed = run_main('demo_tie.py', '--save_path', save, '--data_dir', tmp_path / 'corpus',
                         '--resume', '--epochs', '4')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Recipe regularized: --variational --dropout 0.1' in resumed.stdout
    vals = [float(line.split('Validation Perplexity: ')[1].split(',')[0])
            for line in (proc.stdout + resumed.stdout).splitlines() if line.startswith('Epoch:')]
    assert len(vals) == 4 and vals[-1] < min(vals[0],
                                             1.2), vals  # it learns the pattern corpus (12 words)

    refused = run_main('demo_tie.py', '--save_path', save, '--data_dir', tmp_path / 'corpus',
                       '--resume', '--recipe', 'reference', '--epochs', '5')
    assert refused.returncode == 1 and '--recipe regularized' in refused.stderr
    assert 'Traceback' not in refused.stderr

    evaluated = run_main('demo_tie.py', '--eval_only', '--save_path', save,
                           '--data_dir', tmp_path / 'corpus')
    assert evaluated.returncode == 0, evaluated.stderr
    assert 'Test Perplexity' in evaluated.stdout
    generated = run_main('generate.py', '--checkpoint', save, '--seed_text', 'one two',
                           '--num_words', '5')
    assert generated.returncode == 0, generated.stderr


def test_help_lists_the_regularisers_off_by_default():
    out = run_main('demo_tie.py', '--help').stdout
    for flag in ('--recipe', '--variational', '--dropouti', '--dropouth', '--dropoute', '--wdrop',
                 '--alpha', '--beta', '--variable_bptt'):
        assert flag in out
    assert "{reference,regularized}" in out and '(default: reference)' in out


def test_a_preset_run_stopped_in_mid_epoch_resumes_bit_for_bit(tmp_path):
    """SIGTERM in mid-epoch, then --resume: the same weights as the uninterrupted run,
    every regulariser and the variable windows included."""
    whole, resumed = run_whole_and_interrupted(tmp_path, '--recipe', 'regularized')
    assert printed_test_lines(resumed) == printed_test_lines(whole)
    assert states_equal(tmp_path / 'stopped' / 'model.last.pt', tmp_path / 'model.last.pt')


