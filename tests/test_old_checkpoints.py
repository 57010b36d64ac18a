"""Checkpoints written by the code of commit c01eae7 (before the trainer was restructured)
still resume, evaluate and generate. tests/fixtures/old_run holds what that code wrote: a tiny
tied model (8 units, 2 layers, --recipe regularized, seed 5) after epoch 1 (model.pt,
model.last.pt, model.csv, epoch1.log) and the same run's two whole epochs (whole.csv,
whole.log), all on the corpus beside them."""
import csv
import shutil
from pathlib import Path

import pytest

from conftest import run_script

OLD = Path(__file__).resolve().parent / 'fixtures' / 'old_run'


@pytest.fixture
def old_run(tmp_path):
    folder = tmp_path / 'old_run'
    shutil.copytree(OLD, folder)
    return folder


def rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_an_old_last_checkpoint_resumes_to_the_figures_of_the_uninterrupted_run(old_run):
    proc = run_script('demo_tie.py', '--data_dir', old_run / 'corpus', '--save_path',
                      old_run / 'model.pt', '--resume', '--epochs', '2')
    assert proc.returncode == 0, proc.stderr
    assert 'Resuming from' in proc.stdout and 'at epoch 2' in proc.stdout
    resumed, whole = rows(old_run / 'model.csv'), rows(OLD / 'whole.csv')
    assert [r['epoch'] for r in resumed] == ['1', '2']
    for column in ('train_loss', 'val_loss', 'val_loss_no_sos'):  # the same steps were taken
        assert float(resumed[1][column]) == pytest.approx(float(whole[1][column]), rel=1e-4)


def test_an_old_best_checkpoint_evaluates_as_the_old_run_printed(old_run):
    proc = run_script('demo_tie.py', '--eval_only', '--data_dir', old_run / 'corpus',
                      '--save_path', old_run / 'model.pt')
    assert proc.returncode == 0, proc.stderr
    printed = (OLD / 'epoch1.log').read_text()
    old_test = [line for line in printed.splitlines() if line.startswith('Test Loss')]
    new_test = [line for line in proc.stdout.splitlines() if line.startswith('Test Loss')]
    assert len(new_test) == 2 and new_test == old_test


def test_an_old_best_checkpoint_generates_and_scores(old_run):
    gen = run_script('generate.py', '--checkpoint', old_run / 'model.pt', '--seed_text',
                     'the company', '--num_words', '5', '--seed', '1')
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith('the company ') and len(gen.stdout.split()) >= 7
    score = run_script('score.py', '--checkpoint', old_run / 'model.pt',
                       old_run / 'corpus' / 'test.txt')
    assert score.returncode == 0, score.stderr
    assert 'Perplexity without <sos>' in score.stdout
