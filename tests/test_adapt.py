"""score.py --cache and --dynamic (lm/adapt.py), through the real script on a tiny model."""
import json
import math
import os
import random
import signal
import subprocess
import sys

import pytest

from conftest import LOGPROB_TOL, ROOT, TINY, random_corpus, run_main, wait_for

WORDS = [f'w{i}' for i in range(30)]


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """A tiny model of random sentences over 30 words: uncertain about every next word."""
    folder = tmp_path_factory.mktemp('adapt')
    corpus = random_corpus(folder / 'corpus', WORDS, seed=3, length=(4, 9))
    proc = run_main('demo_tie.py', '--data_dir', corpus, *TINY, '--tied', '--epochs', 2,
                    '--save_path', folder / 'model.pt')
    assert proc.returncode == 0, proc.stderr
    return {'checkpoint': folder / 'model.pt', 'corpus': corpus, 'folder': folder}


def score(model, text_path, *flags):
    proc = run_main('score.py', '--checkpoint', model['checkpoint'], '--json', '--per_token',
                    '--dynamic_stats', model['corpus'] / 'train.txt', *flags, text_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def logprobs(doc):
    return [row['logprob'] for row in doc['per_token']]


METHODS = {'cache': ['--cache', '--cache_lambda', '0.3', '--cache_theta', '1'],
           'dynamic': ['--dynamic', '--dynamic_lr', '0.003', '--dynamic_segment', '5']}


@pytest.mark.parametrize('method', sorted(METHODS))
def test_a_tokens_score_depends_on_the_text_before_it_alone(model, tmp_path, method):
    first = 'w1 w2 w3 w4 w5\nw6 w7 w8 w9 w1 w2\nw3 w4 w5 w6\n'
    (tmp_path / 'a.txt').write_text(first + 'w10 w11 w12 w13\nw14 w15\n')
    (tmp_path / 'b.txt').write_text(first + 'w20 w21\nw1 w1 w1 w29 w28 w27\n')
    a, _ = score(model, tmp_path / 'a.txt', *METHODS[method])
    b, _ = score(model, tmp_path / 'b.txt', *METHODS[method])
    shared = len(first.split()) + 2 * first.count('\n')  # words, <sos> and <eos> of each line
    assert logprobs(a)[1:shared] == pytest.approx(logprobs(b)[1:shared], abs=LOGPROB_TOL)
    assert logprobs(a)[shared + 1:] != pytest.approx(logprobs(b)[shared + 1:])


@pytest.mark.parametrize('zero', [['--cache', '--cache_lambda', '0'],
                                  ['--dynamic', '--dynamic_lr', '0', '--dynamic_decay', '0']])
def test_zero_strength_gives_the_static_scores(model, zero):
    test = model['corpus'] / 'test.txt'
    segment = ['--seq_length', '20', '--dynamic_segment', '20']
    static, _ = score(model, test, '--batch_size', '1', *segment)
    adapted, _ = score(model, test, *zero, *segment)
    assert adapted['loss'] == pytest.approx(static['loss'], abs=LOGPROB_TOL)
    assert adapted['loss_no_sos'] == pytest.approx(static['loss_no_sos'], abs=LOGPROB_TOL)
    assert logprobs(adapted)[1:] == pytest.approx(logprobs(static)[1:], abs=LOGPROB_TOL)


@pytest.mark.parametrize('method', sorted(METHODS))
def test_a_repeated_unseen_sequence_becomes_easy(model, tmp_path, method):
    """The same 12-word line five times: its first reading is about as hard as under the
    static model (the cache, which weighs 0.3 here, costs up to 1 / 0.7 there), the later
    ones much easier."""
    line = ' '.join(random.Random(9).choices(WORDS, k=12))
    (tmp_path / 'repeat.txt').write_text((line + '\n') * 5)
    static, _ = score(model, tmp_path / 'repeat.txt', '--batch_size', '1')
    adapted, _ = score(model, tmp_path / 'repeat.txt', *METHODS[method])
    first = [row['ppl_no_sos'] for row in adapted['per_line']]
    base = [row['ppl_no_sos'] for row in static['per_line']]
    assert 0.8 * base[0] < first[0] < 1.1 * base[0] / 0.7
    assert first[-1] < 0.5 * base[-1]
    assert adapted['ppl_no_sos'] < 0.7 * static['ppl_no_sos']
    assert method.replace('cache', 'neural cache').split()[0] in adapted['layout']
    assert method in adapted['method']


def test_dynamic_evaluation_leaves_the_checkpoint_unchanged(model):
    before = model['checkpoint'].read_bytes()
    score(model, model['corpus'] / 'test.txt', '--dynamic', '--dynamic_lr', '0.01')
    assert model['checkpoint'].read_bytes() == before


def test_dynamic_statistics_from_a_text_shorter_than_their_rows(model, tmp_path):
    """Two short lines cannot fill --dynamic_stats_rows rows: they are read in fewer rows, and
    the statistics still give steps of a sane size."""
    (tmp_path / 'short.txt').write_text('w1 w2 w3\nw4 w5\n')
    test = model['corpus'] / 'test.txt'
    static, _ = score(model, test, '--batch_size', '1')
    adapted, _ = score(model, test, *METHODS['dynamic'], '--dynamic_stats',
                       tmp_path / 'short.txt', '--dynamic_stats_rows', '64')
    assert math.isfinite(adapted['ppl']) and adapted['ppl'] < 1.5 * static['ppl']


def test_tune_takes_its_values_from_the_tuning_file_alone(model, tmp_path):
    from lm import adapt
    (tmp_path / 'other.txt').write_text('w1 w1 w1 w1 w1 w1\nw2 w2 w2\n' * 20)
    flags = ['--cache', '--dynamic', '--tune', model['corpus'] / 'valid.txt']
    one, err_one = score(model, model['corpus'] / 'test.txt', *flags)
    two, err_two = score(model, tmp_path / 'other.txt', *flags)
    kept = [line for line in err_one.splitlines() if line.startswith('tune: keeping')]
    assert len(kept) == 3  # the rate, the decay, the cache's pair
    assert kept == [line for line in err_two.splitlines() if line.startswith('tune: keeping')]
    assert one['method'] == two['method']
    points = [line for line in err_one.splitlines() if 'perplexity without <sos>' in line]
    assert len(points) == (len(adapt.DYNAMIC_LRS) + len(adapt.DYNAMIC_DECAYS)
                           + len(adapt.CACHE_THETAS) * len(adapt.CACHE_LAMBDAS))


def test_a_tuning_text_too_short_to_tell_the_grid_apart_keeps_the_defaults(model, tmp_path):
    """Shorter than one --dynamic_segment, no step is taken: every rate scores the same."""
    (tmp_path / 'short.txt').write_text('w1 w2 w3\n')
    doc, err = score(model, model['corpus'] / 'test.txt', '--dynamic', '--tune',
                     tmp_path / 'short.txt')
    defaults, _ = score(model, model['corpus'] / 'test.txt', '--dynamic')
    assert 'every grid point scores the same on this text' in err
    assert doc['method'] == defaults['method']  # not the grid's first values


@pytest.mark.parametrize('flags, message', [
    (['--dynamic', '--tune', '-', '-'], "--tune both name standard input ('-')"),
    (['--dynamic', '--dynamic_stats', '-', '-'], "--dynamic_stats both name standard input"),
    (['--cache', '--tune', 'TEST', 'TEST'], 'is the text being scored'),
])
def test_inputs_that_cannot_be_read_as_asked_are_refused_in_one_line(model, flags, message):
    flags = [str(model['corpus'] / 'test.txt') if f == 'TEST' else f for f in flags]
    proc = run_main('score.py', '--checkpoint', model['checkpoint'], *flags)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert message in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize('flags', [['--cache', '--cache_window', '-3'],
                                   ['--cache', '--cache_lambda', '1.5'],
                                   ['--cache', '--cache_lambda', '-0.1'],
                                   ['--dynamic', '--dynamic_segment', '0'],
                                   ['--dynamic', '--dynamic_lr', '-1'],
                                   ['--dynamic', '--dynamic_decay', '-0.5']])
def test_out_of_range_values_are_refused_by_argparse(flags, capsys):
    import score
    with pytest.raises(SystemExit) as exit:
        score.build_parser().parse_args([*flags, 'x.txt'])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('score.py: error: argument') or 'error: argument' in err[-1]


@pytest.mark.parametrize('flags', [['--cache', '--batch_size', '4'],
                                   ['--dynamic', '--independent'],
                                   ['--tune', 'valid.txt']])
def test_layouts_the_methods_cannot_use_are_refused_in_one_line(model, flags):
    proc = run_main('score.py', '--checkpoint', model['checkpoint'], *flags, 'x.txt')
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('score.py: error:')


def test_tuning_shows_its_progress_and_ctrl_c_ends_it_with_a_line(model, tmp_path):
    """--tune scores its text once for each grid point, minutes on a real model: each point
    has a bar and a line as it ends, and Ctrl-C ends the process at once, without a
    traceback (a real process: the handler is installed before PyTorch is imported)."""
    long_text = tmp_path / 'long.txt'
    long_text.write_text((model['corpus'] / 'train.txt').read_text() * 20)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / 'score.py'), '--checkpoint', str(model['checkpoint']),
         '--device', 'cpu', '--dynamic', '--dynamic_stats', str(model['corpus'] / 'train.txt'),
         '--tune', str(long_text), str(model['corpus'] / 'test.txt')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    wait_for(proc, 'tune --dynamic_lr 1e-05')  # the first grid point's bar
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert b'Traceback' not in err and b'SIGINT received: stopped at once' in err

