"""generate.py run as a user runs it, on the tiny model trained by the `trained` fixture."""
import re
import subprocess
import sys

import pytest
import torch

import data
import generate
from conftest import PATTERN, ROOT, run_main
from lm.checkpoint import build_model, load_checkpoint

ORDER = PATTERN.split()


def gen(trained, *args):
    return run_main('generate.py', '--checkpoint', trained['checkpoint'], *args)


def words_of(text):
    return text.split()


def test_continuation_has_num_words_words_from_the_vocabulary(trained):
    proc = gen(trained, '--seed_text', 'one two', '--num_words', '25', '--seed', '3')
    assert proc.returncode == 0, proc.stderr
    words = words_of(proc.stdout)
    assert words[:2] == ['one', 'two'] and len(words) == 2 + 25
    vocab = torch.load(trained['checkpoint'], weights_only=True)['vocab']
    assert set(words) <= set(vocab) - {'<sos>', '<pad>', '<eos>'}


def test_same_seed_same_text_other_seed_other_text(trained):
    args = ('--num_words', '40', '--temperature', '3.0')
    a, b = gen(trained, *args, '--seed', '1'), gen(trained, *args, '--seed', '1')
    c = gen(trained, *args, '--seed', '2')
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_a_determined_corpus_is_continued_correctly_with_top_k_1(trained):
    proc = gen(trained, '--seed_text', 'three four', '--num_words', '14', '--top_k', '1')
    assert proc.returncode == 0
    lines = proc.stdout.strip().split('\n')
    # <eos> ends each sentence: "... eight" then a new line starting at "one"
    assert lines[0] == 'three four five six seven eight'
    assert lines[1] == PATTERN
    assert lines[2] == 'one two'


def test_stop_at_eos_ends_the_sample_with_the_sentence(trained):
    proc = gen(trained, '--seed_text', 'five', '--num_words', '30', '--top_k', '1', '--stop_at_eos')
    assert proc.stdout.strip() == 'five six seven eight'


def test_several_samples_are_numbered(trained):
    proc = gen(trained, '--num_words', '5', '--num_samples', '3', '--seed', '0')
    assert re.findall(r'^--- sample (\d) of 3 ---$', proc.stdout, re.MULTILINE) == ['1', '2', '3']


def test_unknown_seed_words_are_reported_and_not_respelled_for_a_non_ptb_vocabulary(trained):
    """The tiny corpus has no N, so it is not PTB-style: 'One' is not read as 'one'."""
    proc = gen(trained, '--seed_text', 'One zebra two', '--num_words', '3', '--seed', '0')
    assert proc.returncode == 0
    assert 'not in the vocabulary, read as <unk>: One, zebra' in proc.stderr
    assert 'lower-case' not in proc.stderr
    assert proc.stdout.startswith('One zebra two')


def test_numbers_and_capitals_map_to_ptb_spelling_for_a_ptb_style_vocabulary():
    vocab = ['<pad>', '<sos>', '<eos>', '<unk>', 'N', 'the', 'N-year']
    assert data.is_ptb_style(vocab)
    index = {w: i for i, w in enumerate(vocab)}
    ids, respelled, unknown = data.map_words(['The', '1990', '3.5', '10-year', 'xyz'], index,
                                             respell=True)
    assert ids == [5, 4, 4, 6, 3]
    assert respelled == [('The', 'the'), ('1990', 'N'), ('3.5', 'N'), ('10-year', 'N-year')]
    assert unknown == ['xyz']


def test_a_cased_vocabulary_is_not_respelled():
    vocab = ['<pad>', '<sos>', '<eos>', '<unk>', 'N', 'Haus', 'haus']
    assert not data.is_ptb_style(vocab)
    assert not data.is_ptb_style(['<pad>', '<sos>', '<eos>', '<unk>', 'the'])  # no N
    index = {w: i for i, w in enumerate(vocab)}
    assert data.map_words(['HAUS', '1990'], index) == ([3, 3], [], ['HAUS', '1990'])


def test_sampling_never_gives_pad_or_sos_even_when_the_model_prefers_them(trained):
    ckpt = load_checkpoint(trained['checkpoint'])
    model = build_model(ckpt)
    with torch.no_grad():
        model.fc.bias[data.SOS] += 100.0  # the model now all but always says <sos>
        model.fc.bias[data.PAD] += 100.0
    out = generate.sample(model, [data.SOS, 3], 30, generator=torch.Generator().manual_seed(0))
    assert data.SOS not in out and data.PAD not in out and len(out) >= 30


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(generate.filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(generate.filter_logits(logits, top_p=0.1))
    assert kept.tolist() == [True, False, False, False]
    kept = torch.isfinite(generate.filter_logits(logits, top_k=3))
    assert kept.tolist() == [True, True, True, False]


@pytest.mark.parametrize('args,message', [
    (('--temperature', '0'), r'argument --temperature'),
    (('--temperature', '-1'), r'argument --temperature'),
    (('--top_p', '0'), r'argument --top_p'),
    (('--top_p', '1.5'), r'argument --top_p'),
    (('--num_words', '0'), r'argument --num_words'),
    (('--top_k', '-2'), r'argument --top_k'),
])
def test_bad_flags_fail_cleanly(trained, args, message):
    proc = run_main('generate.py', '--checkpoint', trained['checkpoint'], *args)
    assert proc.returncode == 2 and re.search(message,
                                              proc.stderr) and 'Traceback' not in proc.stderr


def test_missing_checkpoint_fails_cleanly(tmp_path):
    proc = run_main('generate.py', '--checkpoint', tmp_path / 'none.pt')
    assert proc.returncode == 1 and 'checkpoint not found' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_generate_without_a_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = run_main('generate.py')
    assert proc.returncode == 1
    assert 'checkpoint not found: best_model.pt' in proc.stderr and 'demo_tie.py' in proc.stderr


def test_a_typed_eos_is_followed_by_sos_and_typed_markers_are_refused(trained):
    vocab = torch.load(trained['checkpoint'], weights_only=True)['vocab']
    one, two = vocab.index('one'), vocab.index('two')
    assert generate.prompt_ids(['one', '<eos>', 'two'], vocab) == [
        data.SOS, one, data.EOS, data.SOS, two]
    for marker in ('<sos>', '<pad>'):
        proc = gen(trained, '--seed_text', f'one {marker} two')
        assert proc.returncode == 1 and marker in proc.stderr and 'not words' in proc.stderr


def test_a_sample_that_ends_at_once_says_why(trained):
    proc = gen(trained, '--seed_text', 'one two three four five six seven eight', '--stop_at_eos',
               '--seed', 1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'one two three four five six seven eight'
    assert 'ended at once' in proc.stderr


def test_generation_with_amp_on_a_cpu_runs_in_float32_and_says_so(trained):
    proc = gen(trained, '--amp', '--num_words', 3, '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr
    assert 'float32' in proc.stderr


def test_a_closed_pipe_ends_generation_quietly(trained):
    line = (f'{sys.executable} {ROOT}/generate.py --checkpoint {trained["checkpoint"]} '
            '--num_samples 50 --num_words 20 | head -1')
    proc = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.stdout.strip()
    assert 'Traceback' not in proc.stderr and 'BrokenPipe' not in proc.stderr


def test_a_tiny_temperature_samples_the_likeliest_word(trained):
    proc = gen(trained, '--seed_text', 'six', '--num_words', '3', '--temperature', '1e-300',
               '--seed', '0')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['six', 'seven', 'eight', 'one']


@pytest.mark.parametrize('script', ['generate.py', 'score.py'])
@pytest.mark.parametrize('flags, message, status', [
    (['--cuda', '--device', 'cpu'], '--cuda and --device cpu disagree', 2),
    (['--device', 'cuda:7'], 'error: device cuda:7 asked for, but', 1),
])
def test_device_flags_that_cannot_hold_get_one_line(trained, script, flags, message, status):
    """--cuda is the reference's flag for both scripts. Two flags that disagree are a usage
    mistake (usage, status 2); a device that is not there is not: one line, status 1. Both
    before the checkpoint is read."""
    text = [] if script == 'generate.py' else [trained['corpus'] / 'test.txt']
    proc = run_main(script, '--checkpoint', trained['checkpoint'], *flags, *text)
    assert proc.returncode == status and 'Traceback' not in proc.stderr
    assert message in proc.stderr.splitlines()[-1]
    assert ('usage:' in proc.stderr) == (status == 2)


@pytest.mark.parametrize('script', ['demo_tie.py', 'bench.py'])
def test_a_missing_device_is_one_line_without_the_usage_in_training_and_bench(script):
    proc = run_main(script, '--device', 'cuda:7')
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith('error: device cuda:7 asked for, but')
    assert proc.stderr.count('\n') == 1
