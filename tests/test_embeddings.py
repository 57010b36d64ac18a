"""embeddings.py on tiny tied and untied models with a tiny pair file (gensim needed: skipped
with the reason where it is absent)."""
import json
import os

import pytest
import torch

from conftest import TINY, pattern_corpus, run_main, run_script, train, write_corpus

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
    # two files named model.pt: each is labelled by its path, so that neither disappears
    u, t = str(untied), str(tied)
    assert list(found['similarity']) == [f'input ({u})', f'output ({u})', f'tied ({t})']
    for scores in found['similarity'].values():
        assert scores['pairs.tsv']['oov_percent'] == pytest.approx(20.0)  # 1 of 5 pairs
        assert -1 <= scores['pairs.tsv']['spearman'] <= 1
    assert [(r['a'], r['b']) for r in found['agreement']] == [
        (f'input ({u})', f'output ({u})'), (f'input ({u})', f'tied ({t})'),
        (f'output ({u})', f'tied ({t})')]
    assert all(r['words'] == 8 for r in found['agreement'])
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


@pytest.fixture(scope='module')
def other_vocabulary(tmp_path_factory):
    """A model of eight other words, and one of those eight words and four of the pattern's."""
    folder = tmp_path_factory.mktemp('other')
    models = {}
    for name, line in (('other', 'uno dos tres cuatro cinco seis siete ocho'),
                       ('mixed', 'uno dos tres cuatro five six seven eight')):
        corpus = write_corpus(folder / name / 'corpus', (line + '\n') * 300)
        proc, models[name] = train(folder / name, epochs=1, corpus=corpus)
        assert proc.returncode == 0, proc.stderr
    return models


def test_models_of_other_vocabularies_are_compared_on_the_words_they_share(two_models,
                                                                           other_vocabulary):
    tied = two_models[1]
    proc = run_main('embeddings.py', '--checkpoint', tied, other_vocabulary['mixed'],
                    other_vocabulary['other'], '--pairs', two_models[2], '--json')
    assert proc.returncode == 0, proc.stderr
    words = {(r['a'].split()[1], r['b'].split()[1]): (r['words'], r['spearman'])
             for r in json.loads(proc.stdout)['agreement']}
    ours, mixed, other = (f'({p})' for p in (tied, other_vocabulary['mixed'],
                                             other_vocabulary['other']))
    # the words in common, and <unk>, which every vocabulary has
    assert words[ours, mixed][0] == 5 and -1 <= words[ours, mixed][1] <= 1
    assert words[ours, other] == (1, None)  # same size, no word in common: nothing to compare
    assert words[mixed, other][0] == 5


def damaged_copy(source, folder, change):
    ckpt = torch.load(source, weights_only=True)
    change(ckpt['model_state'])
    path = folder / 'damaged.pt'
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize('change, message', [
    (lambda state: state['embedding.weight'][3].fill_(float('nan')), 'NaN or infinite weights'),
    (lambda state: state.update({'embedding.weight': state['embedding.weight'].to_sparse()}),
     'must be dense floating-point tensors'),
])
def test_a_checkpoint_with_unusable_weights_is_refused_in_one_line(two_models, tmp_path, change,
                                                                   message):
    path = damaged_copy(two_models[1], tmp_path, change)
    proc = run_main('embeddings.py', '--checkpoint', path, '--pairs', two_models[2], '--json')
    assert proc.returncode == 1 and proc.stdout == '' and message in proc.stderr
    assert proc.stderr.count('\n') == 1


def test_a_pair_file_without_a_readable_pair_is_refused(two_models, tmp_path):
    pairs = tmp_path / 'pairs.csv'
    pairs.write_text('one,two,5\nthree,four,2\n')  # commas, not tabs
    proc = run_main('embeddings.py', '--checkpoint', two_models[1], '--pairs', pairs)
    assert proc.returncode == 1 and 'has no word pairs to read' in proc.stderr


def test_a_gensim_that_fails_to_import_gets_one_line(two_models, tmp_path):
    """An installed gensim built for another numpy raises ValueError on import (a real
    process, with such a gensim first on its path)."""
    broken = tmp_path / 'site' / 'gensim'
    broken.mkdir(parents=True)
    (broken / '__init__.py').write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'site'))
    proc = run_script('embeddings.py', '--checkpoint', two_models[1], env=env)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert 'gensim is installed but fails to import (ValueError: numpy.dtype' in proc.stderr
