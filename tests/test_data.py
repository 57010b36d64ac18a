"""data.py: reading a corpus, the vocabulary, the batch layout and the windows."""
import os
import shutil
import subprocess

import pytest
import torch

import data
from conftest import ROOT, block_reading, list_reader, write_corpus


def test_vocabulary_is_specials_then_training_words_in_first_seen_order(tmp_path):
    write_corpus(tmp_path, 'b a c\na d b\n', 'a b\n', 'c d\n')
    corpus = data.load_corpus(tmp_path)
    assert corpus.vocab == ['<pad>', '<sos>', '<eos>', 'b', 'a', 'c', 'd', '<unk>']
    assert corpus.vocab[data.PAD] == '<pad>' and corpus.vocab[data.SOS] == '<sos>'
    assert corpus.vocab[data.EOS] == '<eos>'


def test_unk_in_training_text_keeps_its_place(tmp_path):
    write_corpus(tmp_path, 'x <unk> y\n')
    assert data.load_corpus(tmp_path).vocab == ['<pad>', '<sos>', '<eos>', 'x', '<unk>', 'y']


def test_each_line_becomes_sos_words_eos(tmp_path):
    write_corpus(tmp_path, 'a b\nc\n')
    corpus = data.load_corpus(tmp_path)
    assert [corpus.vocab[i] for i in corpus.train] == ['<sos>', 'a', 'b', '<eos>', '<sos>', 'c',
                                                       '<eos>']


def test_words_missing_from_training_become_unk_and_are_counted(tmp_path):
    write_corpus(tmp_path, 'a b c\n', 'a zebra b yak\n', 'c c\n')
    corpus = data.load_corpus(tmp_path)
    assert [corpus.vocab[i] for i in corpus.valid] == ['<sos>', 'a', '<unk>', 'b', '<unk>', '<eos>']
    assert corpus.unknown == {'train': 0, 'valid': 2, 'test': 0}


@pytest.mark.parametrize('text', [b'a b  c  \r\n d e\t\r\n\r\n', b'a b c\rd e\r'],
                         ids=['windows', 'old mac'])
def test_windows_and_old_mac_line_endings_and_trailing_spaces_tokenise_like_unix(tmp_path,
                                                                                 text):
    unix = write_corpus(tmp_path / 'unix', 'a b c\nd e\n')
    other = tmp_path / 'other'
    other.mkdir()
    for name in ('train', 'valid', 'test'):
        (other / f'{name}.txt').write_bytes(text)
    a, b = data.load_corpus(unix), data.load_corpus(other)
    assert a.vocab == b.vocab
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)


@pytest.mark.parametrize('marker', data.SPECIALS)
def test_a_marker_written_as_a_word_is_refused_with_its_line(tmp_path, marker):
    write_corpus(tmp_path, 'a b\n', f'a b\nc {marker} d\n')
    with pytest.raises(data.DataError, match=f'valid.txt, line 2: {marker} is a marker'):
        data.load_corpus(tmp_path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    write_corpus(tmp_path, 'a b\n')
    (tmp_path / 'valid.txt').write_bytes(b'a b\nc \xff d\n')
    with pytest.raises(data.DataError, match=r'valid\.txt, line 2: not valid UTF-8'):
        data.load_corpus(tmp_path)


def test_split_of_blank_lines_is_an_error(tmp_path):
    write_corpus(tmp_path, 'a b\n')
    (tmp_path / 'test.txt').write_text('\n  \n\r\n')
    with pytest.raises(data.DataError, match=r'test\.txt is empty'):
        data.load_corpus(tmp_path)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(data.DataError, match='data folder not found'):
        data.load_corpus(tmp_path / 'nope')
    (tmp_path / 'train.txt').write_text('a\n')
    with pytest.raises(data.DataError, match=r'missing data file: .*valid\.txt.*getdata\.sh'):
        data.load_corpus(tmp_path)


@pytest.mark.parametrize('kind, expected', [
    ('folder', 'train.txt is a folder'), ('fifo', 'train.txt is not a regular file'),
    ('device', 'train.txt is not a regular file'),
    ('unreadable', 'cannot read .*train.txt: Permission denied')])
def test_a_data_file_that_cannot_be_read_as_text_is_named_with_the_reason(tmp_path, kind,
                                                                          expected):
    write_corpus(tmp_path, 'a b\n')
    (tmp_path / 'train.txt').unlink()
    block_reading(tmp_path / 'train.txt', kind, b'a b\n')
    with pytest.raises(data.DataError, match=expected):
        data.load_corpus(tmp_path)


def test_batchify_lays_the_stream_out_row_by_row_and_drops_the_tail():
    rows = data.batchify(torch.arange(23), 4)
    assert rows.shape == (4, 5)
    assert rows[1].tolist() == [5, 6, 7, 8, 9]
    assert rows.flatten().tolist() == list(range(20))


def test_windows_shift_targets_by_one_across_window_boundaries():
    batched = data.batchify(torch.arange(4 * 23), 4)  # 23 steps, seq_length 5: windows 5,5,5,5,2
    xs, ys = [], []
    for start in data.window_starts(batched, 5):
        x, y = data.get_window(batched, start, 5)
        assert x.shape == y.shape
        assert torch.equal(y, x + 1)  # the token after each input, also at a window's edge
        assert x.data_ptr() == batched[:, start].data_ptr()  # a view, not a copy
        xs.append(x)
        ys.append(y)
    assert [x.size(1) for x in xs] == [5, 5, 5, 5, 2]  # the last, shorter window is included
    assert torch.equal(torch.cat(xs, 1), batched[:, :-1])
    assert torch.equal(torch.cat(ys, 1), batched[:, 1:])  # every target exactly once


def test_streaming_reader_gives_the_tensors_of_the_list_reader(tmp_path):
    import random
    rng = random.Random(0)
    words = [f'w{i}' for i in range(50)] + ['<unk>', 'N', 'été', 'a-b']

    def text(lines):
        return ''.join(' '.join(rng.choice(words) for _ in range(rng.randint(0, 12))) +
                       rng.choice(['\n', '\r\n', '  \n']) for _ in range(lines))
    write_corpus(tmp_path, '\ufeff' + text(300), text(40) + 'never-seen word\n', text(40))
    vocab, streams = list_reader(tmp_path)
    corpus = data.load_corpus(tmp_path)
    assert corpus.vocab == vocab
    for name in data.SPLITS:
        assert corpus.__dict__[name].dtype == torch.int32  # 4 bytes a token
        assert torch.equal(corpus.__dict__[name].long(), streams[name]), name
    assert corpus.unknown['valid'] >= 2 and corpus.unknown['train'] == 0


def test_min_count_and_max_vocab_send_rare_words_to_unk_and_count_them(tmp_path):
    # counts: a 4, b 3, c 2, d 1, e 1 (first seen in this order: b a c d e)
    write_corpus(tmp_path, 'b a c\na b a\nd b a c e\n', 'a e f\n', 'c\n')
    corpus = data.load_corpus(tmp_path, min_count=2)
    assert corpus.vocab == ['<pad>', '<sos>', '<eos>', 'b', 'a', 'c', '<unk>']
    assert corpus.unknown == {'train': 2, 'valid': 2, 'test': 0}  # d e; e f
    assert [corpus.vocab[i] for i in corpus.train[-7:]] == ['<sos>', '<unk>', 'b', 'a', 'c',
                                                            '<unk>', '<eos>']

    capped = data.load_corpus(tmp_path, max_vocab=6)  # 3 specials, <unk> and the 2 most frequent
    assert capped.vocab == ['<pad>', '<sos>', '<eos>', 'b', 'a', '<unk>']
    assert capped.unknown['train'] == 4  # c c d e
    assert len(data.load_corpus(tmp_path, max_vocab=100).vocab) == 9  # no cap reached: all words


def test_a_literal_unk_in_training_text_is_not_counted_as_unknown(tmp_path):
    write_corpus(tmp_path, 'x <unk> y y\n')
    corpus = data.load_corpus(tmp_path, min_count=2)
    assert corpus.vocab == ['<pad>', '<sos>', '<eos>', '<unk>', 'y']  # <unk> keeps its place
    assert corpus.unknown['train'] == 1  # x, not the literal <unk>


def test_data_dir_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / 'train.txt').write_text('a\n')
    with pytest.raises(data.DataError, match='is a file'):
        data.load_corpus(tmp_path / 'train.txt')


def test_getdata_names_a_folder_as_an_offline_source_when_the_download_fails(tmp_path):
    shutil.copy(ROOT / 'getdata.sh', tmp_path / 'getdata.sh')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'curl').write_text('#!/bin/sh\nexit 6\n')
    (bin_dir / 'curl').chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')
    proc = subprocess.run(['bash', str(tmp_path / 'getdata.sh')], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 1
    assert 'FOLDER' in proc.stderr and 'simple-examples.tgz' in proc.stderr
