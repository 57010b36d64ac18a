"""embeddings.py on tiny tied and untied models with a tiny pair file (gensim needed: skipped
with the reason where it is absent)."""
import json

import pytest

from conftest import TINY, pattern_corpus, run_main, train

pytest.importorskip('gensim', reason='embeddings.py needs gensim (pip install gensim)')

# the pattern corpus's words, and one it does not have
PAIRS = 'one\ttwo\t5\nthree\tfour\t2\nfive\tsix\t7\nseven\teight\t1\none\tnine\t3\n'


@pytest.fixture(scope='module')
def two_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp('embeddings')
    corpus = pattern_corpus(folder / 'corpus')
    untied_path = folder / 'untied' / 'model.pt'
    untied = run_main('demo_tie.py', '--data_dir', corpus, *TINY, '--epochs', 1,
                      '--save_path', untied_path)
    tied, tied_path = train(folder / 'tied', epochs=1, corpus=corpus)
    assert untied.returncode == 0 and tied.returncode == 0, untied.stderr + tied.stderr
    (folder / 'pairs.tsv').write_text('# word1 word2 rating\n' + PAIRS)
    return untied_path, tied_path, folder / 'pairs.tsv'


def test_each_matrix_is_scored_on_the_pairs_and_every_two_are_compared(two_models):
    untied, tied, pairs = two_models
    proc = run_main('embeddings.py', '--checkpoint', untied, tied, '--pairs', pairs, '--json',
                    '--agreement_words', 8)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert list(found['similarity']) == ['input (model)', 'output (model)', 'tied (model)']
    for scores in found['similarity'].values():
        assert scores['pairs.tsv']['oov_percent'] == pytest.approx(20.0)  # 1 of 5 pairs
        assert -1 <= scores['pairs.tsv']['spearman'] <= 1
    assert [(r['a'], r['b']) for r in found['agreement']] == [
        ('input (model)', 'output (model)'), ('input (model)', 'tied (model)'),
        ('output (model)', 'tied (model)')]
    table = run_main('embeddings.py', '--checkpoint', untied, '--pairs', pairs,
                     '--agreement_words', 8)
    assert table.returncode == 0 and '| input (model) |' in table.stdout
    assert 'input (model) vs output (model)' in table.stdout


def test_gensims_own_benchmarks_are_the_default(two_models):
    proc = run_main('embeddings.py', '--checkpoint', two_models[1], '--json')
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)['similarity']['tied (model)']
    assert set(scores) == {'SimLex-999', 'WordSim-353'}
    # the pattern's 8 words are none of theirs: every pair is left out, and said so
    assert all(s['oov_percent'] == 100 and s['spearman'] is None for s in scores.values())


@pytest.mark.parametrize('flags, message', [
    (['--checkpoint', 'missing.pt'], 'checkpoint not found'),
    (['--pairs', 'missing.tsv'], 'pair file not found'),
])
def test_missing_files_get_one_line(flags, message, two_models):
    proc = run_main('embeddings.py', *flags)
    assert proc.returncode in (1, 2) and 'Traceback' not in proc.stderr
    assert message in proc.stderr
