"""plot.py on real metrics CSVs written by the trainer."""
import importlib.util
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_main

has_matplotlib = importlib.util.find_spec('matplotlib') is not None


@pytest.mark.skipif(not has_matplotlib, reason='matplotlib not installed (optional)')
def test_plot_writes_a_png_from_two_runs(trained, tmp_path):
    first = tmp_path / 'tied.csv'
    second = tmp_path / 'other.csv'
    shutil.copy(trained['folder'] / 'model.csv', first)
    shutil.copy(trained['folder'] / 'model.csv', second)
    out = tmp_path / 'curves.png'
    proc = run_main('plot.py', first, second, '-o', out, '--reference')
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def png_width(path):
    return int.from_bytes(path.read_bytes()[16:20], 'big')  # the IHDR chunk's first field


@pytest.mark.skipif(not has_matplotlib, reason='matplotlib not installed (optional)')
def test_epoch_only_draws_one_panel(trained, tmp_path):
    csv = trained['folder'] / 'model.csv'
    both, one = tmp_path / 'both.png', tmp_path / 'one.png'
    assert run_main('plot.py', csv, '-o', both).returncode == 0
    proc = run_main('plot.py', csv, '-o', one, '--epoch_only', '--label', 'tied')
    assert proc.returncode == 0, proc.stderr
    assert png_width(one) < 0.6 * png_width(both)


def test_missing_csv_fails_cleanly(tmp_path):
    proc = run_main('plot.py', tmp_path / 'none.csv', '-o', tmp_path / 'x.png')
    assert proc.returncode == 1 and 'cannot read' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.parametrize('text', ['', 'a,b\n1,2\n', 'epoch,val_ppl,seconds\n1,abc,3\n'])
def test_malformed_csv_fails_cleanly(tmp_path, text):
    bad = tmp_path / 'bad.csv'
    bad.write_text(text)
    proc = run_main('plot.py', bad, '-o', tmp_path / 'x.png')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'not a metrics CSV' in proc.stderr or 'malformed row' in proc.stderr
    assert not (tmp_path / 'x.png').exists()


def test_without_matplotlib_it_says_how_to_install_it(trained, tmp_path):
    # -S leaves site-packages out, so matplotlib cannot be imported (plot.py needs only the stdlib)
    proc = subprocess.run([sys.executable, '-S', str(ROOT / 'plot.py'),
                           str(trained['folder'] / 'model.csv'), '-o', str(tmp_path / 'x.png')],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert 'pip install matplotlib' in proc.stderr and 'Traceback' not in proc.stderr


def test_plot_labels_two_csvs_of_one_name_by_their_folders():
    import plot
    assert plot.labels(['a/m.csv', 'b/m.csv', 'c/x.csv']) == ['a/m', 'b/m', 'x']
