"""Where the locale cannot encode the text (LC_ALL=C with PYTHONUTF8=0: ASCII on standard
output and on the command line), the scripts write escapes and read typed words as UTF-8,
as real processes under that environment."""
import os

import pytest

from conftest import run_script, train, write_corpus

WORDS = 'café naïve über straße one two'


@pytest.fixture(scope='module')
def accented(tmp_path_factory):
    """A tiny model whose vocabulary is mostly non-ASCII, saved under a non-ASCII name."""
    folder = tmp_path_factory.mktemp('locale')
    corpus = write_corpus(folder / 'corpus', (WORDS + '\n') * 200, (WORDS + '\n') * 20)
    proc, save = train(folder, epochs=1, corpus=corpus)
    assert proc.returncode == 0, proc.stderr
    renamed = save.with_name('modèle.pt')
    save.rename(renamed)
    return {'checkpoint': renamed, 'corpus': corpus}


ASCII_ONLY = dict(os.environ, LC_ALL='C', PYTHONUTF8='0')
ASCII_ONLY.pop('PYTHONIOENCODING', None)


def run_ascii(script, *args):
    proc = run_script(script, *args, env=ASCII_ONLY)
    assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr
    return proc


def test_generate_escapes_the_words_it_cannot_print_and_reads_typed_ones_as_utf8(accented):
    proc = run_ascii('generate.py', '--checkpoint', accented['checkpoint'], '--seed_text',
                     'café naïve', '--num_words', 20, '--seed', 0, '--device', 'cpu')
    assert proc.stdout.startswith('caf\\xe9 na\\xefve')
    assert '<unk>' not in proc.stderr  # the typed words were found in the vocabulary


def test_score_and_eval_only_escape_words_and_paths(accented):
    test = accented['corpus'] / 'test.txt'
    scored = run_ascii('score.py', '--checkpoint', accented['checkpoint'], '--per_token', test)
    assert 'stra\\xdfe' in scored.stdout + scored.stderr
    evaluated = run_ascii('demo_tie.py', '--eval_only', '--data_dir', accented['corpus'],
                          '--save_path', accented['checkpoint'], '--device', 'cpu')
    assert 'Test Perplexity' in evaluated.stdout
