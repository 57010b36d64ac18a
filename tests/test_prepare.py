"""prepare.py: a raw text made into a corpus the trainer reads, through the real script (NLTK
needed for --ptb: skipped with the reason where it is absent)."""
import sys

import pytest

from conftest import TINY, run_main

pytest.importorskip('nltk', reason='prepare.py --ptb needs NLTK (pip install nltk)')

RAW = ('The company said, in 1990, it would pay $3.5 million (about 10%).\n'
       '"We expect more," Mr. Smith added; sales rose 12-fold.\n') * 30 + \
      'A line with <sos> typed in it.\n'


def prepare(tmp_path, *flags, raw=RAW):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / 'raw.txt'
    source.write_text(raw, encoding='utf-8')
    return run_main('prepare.py', source, tmp_path / 'corpus', *flags)


def test_a_raw_text_is_split_tokenised_the_ptb_way_and_its_unk_share_said(tmp_path):
    proc = prepare(tmp_path, '--ptb', '--shares', '0.2', '0.2', '--min_count', '2')
    assert proc.returncode == 0, proc.stderr
    corpus = tmp_path / 'corpus'
    lines = {s: (corpus / f'{s}.txt').read_text(encoding='utf-8').splitlines()
             for s in ('train', 'valid', 'test')}
    assert sum(map(len, lines.values())) == 61 and all(lines.values())
    everything = [line for split in lines.values() for line in split]
    assert 'the company said , in N , it would pay $ N million ( about N % ) .' in everything
    assert '`` we expect more , \'\' mr. smith added ; sales rose N-fold .' in everything
    # the shares printed are the trainer's own count of <unk>
    said = {line.split(':')[0]: line for line in proc.stdout.splitlines()}
    trained = run_main('demo_tie.py', '--data_dir', corpus, *TINY, '--epochs', 1,
                       '--min_count', 2, '--save_path', tmp_path / 'm.pt')
    assert trained.returncode == 0, trained.stderr
    unknown = next(line for line in trained.stdout.splitlines() if line.startswith('Words not'))
    for split in ('valid', 'test'):
        count = said[split].split(' read as <unk>')[0].rsplit(', ', 1)[1]
        assert f'{split} {count} (' in unknown or count == '0', (said[split], unknown)


def test_the_same_seed_gives_the_same_corpus_and_another_seed_another(tmp_path):
    first = prepare(tmp_path / 'a', '--shares', '0.3', '0.3')
    again = prepare(tmp_path / 'b', '--shares', '0.3', '0.3')
    other = prepare(tmp_path / 'c', '--shares', '0.3', '0.3', '--seed', '1')
    assert first.returncode == again.returncode == other.returncode == 0
    read = [(tmp_path / d / 'corpus' / 'valid.txt').read_text() for d in 'abc']
    assert read[0] == read[1] != read[2]
    assert '(about 10%).' in read[0]  # without --ptb the words stay as written
    written = ''.join((tmp_path / 'a' / 'corpus' / f'{s}.txt').read_text()
                      for s in ('train', 'valid', 'test'))
    assert 'A line with <sos_> typed in it.' in written  # not the marker the trainer adds


def test_sentences_of_paragraphs_become_lines(tmp_path):
    nouns = ['cat', 'dog', 'house', 'river', 'tree', 'car', 'road', 'book', 'lamp', 'door']
    raw = ''.join(f'The {a} saw the {b}. Then the {b}\nmet the {a} again.\n\n'
                  for a in nouns for b in nouns if a != b)
    proc = prepare(tmp_path, '--unit', 'sentences', raw=raw)
    assert proc.returncode == 0, proc.stderr
    lines = [line for s in ('train', 'valid', 'test')
             for line in (tmp_path / 'corpus' / f'{s}.txt').read_text().splitlines()]
    assert len(lines) == 180 and 'The cat saw the dog.' in lines
    assert 'Then the dog met the cat again.' in lines  # joined across the line break


def test_what_cannot_work_gets_one_line(tmp_path, monkeypatch):
    assert prepare(tmp_path).returncode == 0
    again = prepare(tmp_path)  # the corpus is there
    assert again.returncode == 1 and 'exists; give another OUT_DIR, or --overwrite' in again.stderr
    assert prepare(tmp_path, '--overwrite').returncode == 0
    missing = run_main('prepare.py', tmp_path / 'none.txt', tmp_path / 'out')
    assert missing.returncode == 1 and 'none.txt not found' in missing.stderr
    short = prepare(tmp_path / 'short', raw='one line only\n')
    assert short.returncode == 1 and 'too few' in short.stderr
    monkeypatch.setitem(sys.modules, 'nltk.tokenize', None)  # as where NLTK is not installed
    no_nltk = prepare(tmp_path / 'no', '--ptb')
    assert no_nltk.returncode == 1 and 'need NLTK: pip install nltk' in no_nltk.stderr
