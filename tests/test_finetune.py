"""--finetune: a new run that starts from a trained model's weights (a finishing phase), with
the model's own sizes, vocabulary and regularisers and the command's optimizer and schedule."""
import shlex
import shutil

import pytest
import torch

from conftest import printed_test_lines, run_main, states_equal
from lm.resume import resume_command


def validation_perplexities(proc):
    return [float(line.split('Validation Perplexity: ')[1].split(',')[0])
            for line in proc.stdout.splitlines() if line.startswith('Epoch: ')]


def test_a_finetuning_run_starts_from_the_trained_weights_with_their_sizes(trained, tmp_path):
    """No size flag given: the model's come from the checkpoint, and with a step too small to
    move anything, the first epoch validates where the trained model did (a fresh model of
    this vocabulary validates near perplexity 12)."""
    source = trained['checkpoint']
    trained_ppl = validation_perplexities(trained['proc'])[-1]
    proc = run_main('demo_tie.py', '--data_dir', trained['corpus'], '--finetune', source,
                      '--lr', '1e-9', '--epochs', '1', '--dropout', '0.3',
                      '--save_path', tmp_path / 'finish.pt')
    assert proc.returncode == 0, proc.stderr
    assert f'Fine-tuning {source} (epoch 3 of its run, validation perplexity {trained_ppl:.4f})' \
        in proc.stdout
    assert 'Changed for fine-tuning: --dropout 0.1 -> 0.3' in proc.stdout
    total = [line for line in trained['proc'].stdout.splitlines() if line.startswith('Total')]
    assert total[0] in proc.stdout.splitlines()
    assert validation_perplexities(proc) == pytest.approx([trained_ppl], rel=1e-3)
    finished = torch.load(tmp_path / 'finish.pt', weights_only=True)
    assert finished['args']['dropout'] == 0.3 and finished['args']['lr'] == 1e-9
    assert finished['model_args']['embed_size'] == 16


def test_an_ntasgd_finetuning_run_averages_from_the_start_and_resumes_exactly(trained, tmp_path):
    """AWD-LSTM's finetune: SGD with the weights averaged from the first step. Cut after its
    first epoch and resumed (without --finetune), it ends where the whole run does: the mean
    is carried, not started again."""
    corpus, source = trained['corpus'], trained['checkpoint']
    flags = ('--data_dir', corpus, '--optimizer', 'ntasgd', '--lr', '1')
    whole = run_main('demo_tie.py', *flags, '--finetune', source, '--epochs', '2',
                       '--save_path', tmp_path / 'whole.pt')
    assert whole.returncode == 0, whole.stderr
    assert 'Averaging the weights from the first step' in whole.stdout
    cut = run_main('demo_tie.py', *flags, '--finetune', source, '--epochs', '1',
                     '--save_path', tmp_path / 'cut.pt')
    assert cut.returncode == 0, cut.stderr
    resumed = run_main('demo_tie.py', '--data_dir', corpus, '--save_path', tmp_path / 'cut.pt',
                         '--resume', '--epochs', '2')
    assert resumed.returncode == 0, resumed.stderr
    assert 'Fine-tuning' not in resumed.stdout
    assert printed_test_lines(resumed) == printed_test_lines(whole)
    assert states_equal(tmp_path / 'cut.last.pt', tmp_path / 'whole.last.pt')
    last = torch.load(tmp_path / 'whole.last.pt', weights_only=True)
    best = torch.load(tmp_path / 'whole.pt', weights_only=True)
    assert last['weight_average']['count'] > 0
    assert best['epoch'] == last['epoch'] == 2
    assert all(torch.equal(best['model_state'][name], mean)  # the best model is the mean
               for name, mean in last['weight_average']['mean'].items())
    assert not states_equal(tmp_path / 'whole.pt', tmp_path / 'whole.last.pt')
    resumed_last = torch.load(tmp_path / 'cut.last.pt', weights_only=True)
    assert resumed_last['weight_average']['count'] == last['weight_average']['count']


@pytest.mark.parametrize('source', [['--finetune', 'best.pt'], ['--finetune=best.pt']])
def test_a_stopped_finetuning_run_is_told_to_resume_without_finetune(source):
    """The "Resume with:" line of a stopped fine-tuning run is a command that runs: --resume
    refuses --finetune, and the last checkpoint holds everything --finetune brought."""
    command = resume_command('ft.last.pt', [*source, '--lr', '0.5', '--save_path', 'ft.pt'])
    assert shlex.split(command) == ['python', 'demo_tie.py', '--lr', '0.5', '--save_path',
                                    'ft.pt', '--resume', 'ft.last.pt']


@pytest.mark.parametrize('flags, message', [
    (['--embed_size', '32', '--hidden_size', '32'],
     'was made with --embed_size 16, --hidden_size 16; leave these flags out'),
    (['--resume'], '--finetune starts a new run from a trained model and --resume continues'),
    (['--save_path', 'SOURCE'], 'is a file of this run\'s --save_path'),
    (['--finetune', 'missing.pt'], 'checkpoint not found: missing.pt'),
    (['--init_range', '0.1'], '--init_range initialises a new model'),  # it would do nothing
    (['--proj_reg', '0.1'], '--proj_reg penalises the matrix of --projection, and the model of'),
])
def test_finetuning_flags_that_cannot_work_are_refused_in_one_line(trained, tmp_path, flags,
                                                                   message, monkeypatch):
    source = tmp_path / 'source.pt'
    shutil.copy(trained['checkpoint'], source)
    flags = [str(source) if flag == 'SOURCE' else flag for flag in flags]
    monkeypatch.chdir(tmp_path)
    proc = run_main('demo_tie.py', '--data_dir', trained['corpus'], '--finetune', source,
                    '--save_path', tmp_path / 'finish.pt', *flags)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert source.read_bytes() == trained['checkpoint'].read_bytes()

