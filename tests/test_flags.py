"""The trainer's flags (lm/flags.py): one declaration each, from which the parser, the resume
rules and the docs' table come; and the values every script refuses with one line."""
import itertools
import re

import pytest

from conftest import ROOT, run_main
from lm import flags
from lm.resume import CHANGEABLE_ON_RESUME, FIXED_ON_RESUME, FROM_THE_MODEL, LAYOUT
from model import MODEL_ARGS, MODEL_REGULARIZERS

REFERENCE = ['data_dir', 'batch_size', 'embed_size', 'hidden_size', 'num_layers', 'dropout', 'lr',
             'epochs', 'clip', 'seq_length', 'save_path', 'weight_decay', 'lr_factor',
             'lr_patience', 'tied']


def test_the_flags_table_in_the_docs_is_the_parsers():
    """docs/training.md's table is what `python -m lm.flags` prints: every flag the parser
    has, with its default, help and resume rule. A flag added, renamed or given another
    default or rule without the table fails here."""
    lines = (ROOT / 'docs' / 'training.md').read_text(encoding='utf-8').splitlines()
    start = lines.index(flags.markdown_table().splitlines()[0])
    table = list(itertools.takewhile(lambda line: line.startswith('|'), lines[start:]))
    assert '\n'.join(table) == flags.markdown_table()
    parser_flags = {a.dest for a in flags.build_parser()._actions} - {'help'}
    documented = set(re.findall(r'^\| `--(\w+)`', '\n'.join(table), re.MULTILINE))
    assert documented == parser_flags


def test_the_reference_flags_come_first_with_its_defaults_and_help():
    parser = flags.build_parser()
    ours = [a for a in parser._actions if a.dest != 'help']
    assert [a.dest for a in ours[:15]] == REFERENCE
    assert {a.dest: a.default for a in ours[:15]} == {
        'data_dir': './data/penn/', 'batch_size': 20, 'embed_size': 650, 'hidden_size': 650,
        'num_layers': 2, 'dropout': 0.5, 'lr': 0.001, 'epochs': 40, 'clip': 5.0,
        'seq_length': 30, 'save_path': 'best_model.pt', 'weight_decay': 1e-5, 'lr_factor': 0.5,
        'lr_patience': 2, 'tied': False}
    assert ours[13].help == ('Number of epochs with no improvement after which learning rate '
                             'will be reduced')


def test_the_resume_rules_are_the_declared_ones():
    assert 'schedule' in FIXED_ON_RESUME and 'optimizer' in FIXED_ON_RESUME
    assert 'warmup' in CHANGEABLE_ON_RESUME and 'lr' in CHANGEABLE_ON_RESUME
    assert LAYOUT == ('batch_size', 'seq_length', 'variable_bptt')
    assert set(FROM_THE_MODEL) >= set(LAYOUT) and 'lr' not in FROM_THE_MODEL
    # a flag that describes the model has a rule (a new flag's default rule is the command's,
    # which would build another model on resume): the trained model's under --finetune, on
    # resume the checkpoint's, or a rate the resumed run may change
    described = set(MODEL_ARGS) - {'vocab_size'} | set(MODEL_REGULARIZERS)
    assert described <= set(FROM_THE_MODEL)
    assert described <= set(FIXED_ON_RESUME) | set(CHANGEABLE_ON_RESUME)


def test_help_shows_the_reference_defaults():
    text = ' '.join(run_main('demo_tie.py', '--help').stdout.split())
    for flag, default in (('--batch_size', '20'), ('--lr', '0.001'), ('--epochs', '40'),
                          ('--save_path', 'best_model.pt'), ('--dropout', '0.5')):
        assert re.search(re.escape(flag) + r' \S+ .*?\(default: ' + re.escape(default) + r'\)',
                         text), flag


@pytest.mark.parametrize('flag,value', [('--batch_size', '0'), ('--seq_length', '-3'),
                                        ('--epochs', '0'), ('--embed_size', 'x'),
                                        ('--dropout', '1'), ('--dropout', '-0.1'),
                                        ('--lr', '0'), ('--lr', 'nan'), ('--clip', '-1'),
                                        ('--lr_factor', '1.5'), ('--device', 'tpu'),
                                        # what float32 cannot hold, or a range that can only
                                        # diverge
                                        ('--init_range', '1e300'), ('--init_range', '2'),
                                        ('--al_weight', '1e300'), ('--al_temperature', '1e-300'),
                                        ('--al_temperature', '1e308'), ('--lr', '1e39')])
def test_bad_flag_values_are_usage_errors(flag, value, tmp_path):
    proc = run_main('demo_tie.py', flag, value, '--data_dir', tmp_path)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert re.search(f'argument {flag}|{value}', proc.stderr), proc.stderr


@pytest.mark.parametrize('script', ['demo_tie.py', 'generate.py', 'bench.py', 'score.py'])
def test_threads_flag_and_defaults_in_help(script):
    proc = run_main(script, '--help')
    assert proc.returncode == 0 and '--threads' in proc.stdout and '(default: ' in proc.stdout
    assert run_main(script, '--threads', '0').returncode == 2


@pytest.mark.parametrize('script', ['demo_tie.py', 'generate.py'])
def test_a_huge_seed_is_refused_by_argparse(script):
    proc = run_main(script, '--seed', '99999999999999999999999')
    assert proc.returncode == 2 and 'argument --seed' in proc.stderr


def test_a_decay_that_would_start_after_the_last_epoch_is_refused(tmp_path):
    proc = run_main('demo_tie.py', '--schedule', 'step', '--decay_start', '6', '--epochs', '5',
                    '--data_dir', tmp_path)
    assert proc.returncode == 2
    assert '--decay_start 6 is after the last epoch (--epochs 5)' in proc.stderr


def test_tied_with_different_sizes_is_refused(tmp_path):
    proc = run_main('demo_tie.py', '--tied', '--embed_size', '8', '--hidden_size', '16',
                    '--data_dir', tmp_path)
    assert proc.returncode == 2
    assert '--tied needs --embed_size equal to --hidden_size' in proc.stderr


def test_model_sizes_that_cannot_fit_are_refused_before_reading_data(tmp_path):
    proc = run_main('demo_tie.py', '--hidden_size', 100000, '--data_dir', tmp_path / 'none')
    assert proc.returncode == 2 and 'GiB' in proc.stderr and 'parameters' in proc.stderr
    assert 'data folder' not in proc.stderr  # refused before reading the data
