"""score.py run as a user runs it, against a tiny trained model."""
import json
import math
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

import data
from conftest import LOGPROB_TOL, PATTERN, ROOT, run_main, run_script, train, write_corpus
from lm.checkpoint import build_model, load_checkpoint
from lm.scoring import score_independent


def score(trained, *args):
    return run_main('score.py', '--checkpoint', trained['checkpoint'], *args)


def totals(text):
    loss = re.search(r'^Loss: (\d+\.\d{4}), Perplexity: (\d+\.\d{4})', text, re.MULTILINE)
    no_sos = re.search(r'^Loss without <sos>: (\d+\.\d{4}), Perplexity without <sos>: '
                       r'(\d+\.\d{4})', text, re.MULTILINE)
    return loss.groups(), no_sos.groups()


def test_scoring_the_test_file_repeats_the_trainers_test_lines(trained):
    proc = score(trained, trained['corpus'] / 'test.txt')
    assert proc.returncode == 0, proc.stderr
    test = re.search(r'^Test Loss: (\S+), Test Perplexity: (\S+)\nTest Loss without <sos>: (\S+), '
                     r'Test Perplexity without <sos>: (\S+) ', trained['proc'].stdout,
                     re.MULTILINE).groups()
    (loss, ppl), (loss_no_sos, ppl_no_sos) = totals(proc.stdout)
    assert (loss, ppl, loss_no_sos, ppl_no_sos) == (test[0], test[1].rstrip(','), test[2], test[3])
    assert 'as the trainer evaluates' in proc.stdout


def test_per_token_log_probabilities_add_up_to_the_totals(trained, tmp_path):
    text = tmp_path / 'text.txt'
    text.write_text('one two three\nfive six seven eight one\n\nthree four\n')
    for layout in ([], ['--batch_size', '1'], ['--independent']):
        proc = score(trained, text, '--per_token', '--json', *layout)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        rows = doc['per_token']
        assert [r['word'] for r in rows if r['line'] == 4] == ['<sos>', 'three', 'four', '<eos>']
        scored = [r for r in rows if r['logprob'] is not None]
        words = [r for r in scored if r['word'] != '<sos>']
        assert -math.fsum(r['logprob'] for r in scored) == pytest.approx(
            doc['loss'] * doc['targets'], rel=1e-6)
        assert -math.fsum(r['logprob'] for r in words) == pytest.approx(
            doc['loss_no_sos'] * doc['targets_no_sos'], rel=1e-6)
        assert len(scored) == doc['targets']
    # one continuous stream scores every token but the very first <sos>; independent lines
    # score every word and <eos> of every line
    one_stream = json.loads(score(trained, text, '--per_token', '--json', '--batch_size',
                                  '1').stdout)
    assert [r['logprob'] is None for r in one_stream['per_token']].count(True) == 1
    independent = json.loads(score(trained, text, '--per_token', '--json', '--independent').stdout)
    assert all((r['logprob'] is None) == (r['word'] == '<sos>') for r in independent['per_token'])


def test_per_token_tsv_has_a_row_for_every_token(trained, tmp_path):
    text = tmp_path / 'text.txt'
    text.write_text('one two three\nfour five\n')
    proc = score(trained, text, '--per_token', '--batch_size', '1')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == 'line\tposition\tword\tscored_as\tlogprob'
    assert [l.split('\t')[2] for l in lines[1:]] == ['<sos>', 'one', 'two', 'three', '<eos>',
                                                     '<sos>', 'four', 'five', '<eos>']
    assert all(float(l.split('\t')[4]) <= 0 for l in lines[2:])
    # the summary is kept out of the TSV
    assert 'Perplexity' in proc.stderr and 'Perplexity' not in proc.stdout


def test_a_line_scored_independently_is_scored_as_if_alone(trained, tmp_path):
    both = tmp_path / 'both.txt'
    both.write_text('five six seven\none two three four\n')
    alone = tmp_path / 'alone.txt'
    alone.write_text('one two three four\n')
    together = json.loads(score(trained, both, '--json', '--independent').stdout)
    by_itself = json.loads(score(trained, alone, '--json', '--batch_size', '1').stdout)
    assert together['per_line'][1]['loss'] == pytest.approx(by_itself['loss'], abs=LOGPROB_TOL)
    assert together['per_line'][1]['line'] == 2


def test_the_model_finds_its_training_pattern_likelier_than_a_shuffle(trained, tmp_path):
    text = tmp_path / 'text.txt'
    text.write_text(PATTERN + '\n' + ' '.join(reversed(PATTERN.split())) + '\n')
    lines = json.loads(score(trained, text, '--json', '--independent').stdout)['per_line']
    assert lines[0]['ppl'] < 2 < lines[1]['ppl']


def test_out_of_vocabulary_words_are_reported_and_scored_as_unk(trained, tmp_path):
    text = tmp_path / 'text.txt'
    text.write_text('one zebra three\n')
    proc = score(trained, text, '--per_token', '--batch_size', '1')
    assert proc.returncode == 0, proc.stderr
    assert 'not in the vocabulary, read as <unk>: zebra' in proc.stderr
    row = next(l.split('\t') for l in proc.stdout.splitlines() if '\tzebra\t' in l)
    assert row[3] == '<unk>' and row[4] != ''


def test_stdin_is_read_with_a_dash(trained):
    proc = run_script('score.py', '--checkpoint', trained['checkpoint'], '-',
                      input='one two three\n')
    assert proc.returncode == 0, proc.stderr
    assert 'note: the text is too short for 4 rows' in proc.stderr
    assert totals(proc.stdout)


@pytest.mark.parametrize('case', ['missing checkpoint', 'hostile checkpoint', 'empty input',
                                  'blank input', 'not utf-8', 'a marker', 'missing input'])
def test_bad_input_ends_with_a_message_not_a_traceback(trained, tmp_path, case):
    checkpoint, text = trained['checkpoint'], tmp_path / 'text.txt'
    text.write_text('one two\n')
    marker = tmp_path / 'ran'
    if case == 'missing checkpoint':
        checkpoint, expected = tmp_path / 'nope.pt', 'checkpoint not found'
    elif case == 'hostile checkpoint':
        class Evil:
            def __reduce__(self):
                return (open, (str(marker), 'w'))
        checkpoint = tmp_path / 'evil.pt'
        checkpoint.write_bytes(pickle.dumps(Evil()))
        expected = 'cannot be opened safely|not a checkpoint'
    elif case == 'empty input':
        text.write_text('')
        expected = 'has no words to score'
    elif case == 'blank input':
        text.write_text('\n   \n\r\n')
        expected = 'has no words to score'
    elif case == 'not utf-8':
        text.write_bytes(b'one two\nthree \xff four\n')
        expected = r'line 2: not valid UTF-8'
    elif case == 'a marker':
        text.write_text('one two\nthree <eos> four\n')
        expected = r'line 2: <eos> is a marker that reading adds'
    else:
        text, expected = tmp_path / 'nope.txt', 'cannot read'
    proc = run_main('score.py', '--checkpoint', checkpoint, text)
    assert proc.returncode == 1
    assert re.search(expected, proc.stderr), proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not marker.exists()


def test_first_line_byte_order_mark_is_not_part_of_the_first_word(trained, tmp_path):
    text = tmp_path / 'bom.txt'
    text.write_bytes('\ufeffone two three\n'.encode('utf-8'))
    proc = score(trained, text, '--batch_size', '1')
    assert proc.returncode == 0 and 'read as <unk>' not in proc.stderr, proc.stderr


def test_scores_count_the_words_read_as_unk_or_respelled(tmp_path):
    """A PTB-style vocabulary (lower case, numbers as N): 'The' and '2021' are respelled,
    'bitcoin' and a typed '<unk>' are scored as <unk>."""
    lines = 'the company said N shares rose\nthe stock fell N\n' * 30
    write_corpus(tmp_path / 'corpus', lines)
    proc, save = train(tmp_path, epochs=1)
    assert proc.returncode == 0, proc.stderr
    text = tmp_path / 'odd.txt'
    text.write_text('The bitcoin fell 20% in 2021 <unk>\nthe stock fell\n')
    doc = json.loads(run_main('score.py', '--checkpoint', save, '--json', text).stdout)
    # The -> the, 2021 -> N; bitcoin, 20% and in are not in the vocabulary
    assert [(r['unk'], r['respelled']) for r in doc['per_line']] == [(4, 2), (0, 0)]
    assert doc['scored_as_unk'] == 4 and doc['respelled'] == 2
    assert doc['out_of_vocabulary'] == 3
    table = run_main('score.py', '--checkpoint', save, text).stdout
    assert '<unk>' in table.splitlines()[0] and 'respelled' in table.splitlines()[0]
    assert '3 read as <unk>, 2 respelled; 4 tokens scored as <unk>' in table


def test_a_closed_pipe_ends_scoring_quietly(trained):
    line = (f'{sys.executable} {ROOT}/score.py --checkpoint {trained["checkpoint"]} --per_token '
            f'{trained["corpus"] / "test.txt"} | head -3')
    proc = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.stdout.strip()
    assert 'Traceback' not in proc.stderr and 'BrokenPipe' not in proc.stderr


def test_scoring_from_a_closed_stdin_says_so(trained):
    proc = run_script('score.py', '--checkpoint', trained['checkpoint'], '-',
                      preexec_fn=lambda: os.close(0))
    assert proc.returncode == 1 and 'standard input is closed' in proc.stderr


def test_independent_lines_are_scored_in_pieces_of_bounded_size(trained):
    ckpt = load_checkpoint(trained['checkpoint'])
    model = build_model(ckpt)
    line = ' '.join(['one two three four five six seven eight'] * 40)
    path = trained['folder'] / 'long_line.txt'
    path.write_text(line + '\nfive six\n')
    text = data.read_text(str(path), ckpt['vocab'])
    whole = score_independent(model, text, None, torch.device('cpu'), budget=10**9)
    pieces = score_independent(model, text, None, torch.device('cpu'), budget=50)
    assert pieces == pytest.approx(whole, abs=LOGPROB_TOL, nan_ok=True)  # losses, in nats
