"""Shared helpers: tiny corpora written into tmp folders, the real scripts run through their
main(argv) in this process (run_main, train) or, where a real process is the point (signals,
locks held by another process, resource limits, pipes, torchrun), as subprocesses
(run_script), and the trained and stopped runs that many tests read."""
import contextlib
import importlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from several threads, and threads of concurrent runs fighting for
# two cores make everything crawl: one thread each, here and in every subprocess.
os.environ.setdefault('OMP_NUM_THREADS', '1')

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import data

# A corpus whose next word is always determined: a model that learns it reaches perplexity ~1.
PATTERN = 'one two three four five six seven eight'
# How far two float32 computations of one quantity may differ when they go through other
# matrix kernels: the kernels (and their summation order) are chosen by the CPU, the thread
# count and the shapes, so a batching or a code path that differs gives other last bits on
# every CPU kind these tests run on (Intel with AMX or AVX-512 BF16, AMD Zen 1 to 4). In nats,
# compared absolutely: a log-probability near 0 (a loss of 0.009) has no meaningful relative
# error, and a wrong result is off by far more (a token scored in the wrong context: 0.1+).
LOGPROB_TOL = 1e-5   # a token's log-probability, or a mean loss, of one model's weights
TRAINED_TOL = 1e-3   # a loss after training steps that took other kernels (on another CPU:
                     # tests/fixtures/old_run was trained on one, and moves 1.2e-4 on a Zen 3)
# --device cpu: the tests check CPU behaviour (bit-exact resumes, the CPU's --amp) even on a host
# with a GPU; the CUDA path has tests of its own, marked `cuda`.
TINY = ['--embed_size', '16', '--hidden_size', '16', '--num_layers', '1', '--batch_size', '4',
        '--seq_length', '8', '--lr', '0.01', '--dropout', '0.1', '--device', 'cpu']


def tiny_flags(**changed):
    """TINY with some flags changed: tiny_flags(num_layers=2, dropout=0)."""
    flags = dict(zip(TINY[::2], TINY[1::2]))
    flags.update({f'--{name}': str(value) for name, value in changed.items()})
    return [item for pair in flags.items() for item in pair]


def fails(proc, message, status=1):
    """A script that ended in one line: `message` (a regular expression) on stderr, no
    traceback, exit status `status` (2: a usage error)."""
    assert proc.returncode == status, proc.stderr
    assert 'Traceback' not in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr


def random_corpus(folder, words, seed=0, lines=(400, 40, 40), length=(3, 12)):
    """train, valid and test.txt of `lines` lines each, every line `length` (inclusive) words
    drawn from `words`, the same for the same `seed`."""
    rng = random.Random(seed)

    def text(n):
        return ''.join(' '.join(rng.choice(words) for _ in range(rng.randint(*length))) + '\n'
                       for _ in range(n))
    return write_corpus(folder, *(text(n) for n in lines))


def write_corpus(folder, train, valid=None, test=None):
    """Write train/valid/test.txt (strings) into `folder`; valid and test default to train."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (('train', train), ('valid', valid or train), ('test', test or train)):
        (folder / f'{name}.txt').write_text(text, encoding='utf-8')
    return folder


def pattern_corpus(folder, train_lines=300, eval_lines=40):
    """The pattern, line after line: 94 training windows of TINY's layout."""
    return write_corpus(folder, (PATTERN + '\n') * train_lines, (PATTERN + '\n') * eval_lines,
                        (PATTERN + '\n') * eval_lines)


def block_reading(path, kind, content=b'x'):
    """Put at `path` what a reader must refuse, of `kind`: a folder, a fifo, a device (a link
    to /dev/zero), or an unreadable file (mode 0: skipped as root, who reads any file)."""
    path = Path(path)
    if kind == 'folder':
        path.mkdir()
    elif kind == 'fifo':
        os.mkfifo(path)
    elif kind == 'device':
        path.symlink_to('/dev/zero')
    else:
        if os.geteuid() == 0:
            pytest.skip('root reads files whatever their mode')
        path.write_bytes(content)
        path.chmod(0)


def run_script(script, *args, cwd=None, timeout=300, env=None, **kw):
    """`script` as its own process, the way a user runs it (in `env`, default ours)."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env,
                          check=False, **kw)


def run_main(script, *args, **kw):
    """Call `script`'s main(args, **kw) in this process: it prints what the command line
    would, without the seconds a subprocess spends importing PyTorch, and an exception that
    would be a user's traceback fails the test. Returns a CompletedProcess, as run_script
    does."""
    if script in ('generate.py', 'score.py') and not {'--device', '--cuda'} & set(map(str, args)):
        args = (*args, '--device', 'cpu')  # as TINY pins the trainer: CPU unless a test says
    module = importlib.import_module(script.removesuffix('.py'))
    # byte-backed, as sys.stdout is: demo_tie.py reconfigures its line buffering
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding='utf-8', write_through=True)
                for _ in range(2))
    sigpipe = signal.getsignal(signal.SIGPIPE)  # generate.py and score.py set their own
    argv, sys.argv = sys.argv, [script]  # argparse names the program after sys.argv[0]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = module.main([str(a) for a in args], **kw)
    except SystemExit as e:
        status = e.code
    finally:
        signal.signal(signal.SIGPIPE, sigpipe)
        sys.argv = argv
    return subprocess.CompletedProcess([script, *args], status, out.buffer.getvalue().decode(),
                                       err.buffer.getvalue().decode())


# The stop is polled when a window's step is done, before the per-window hook runs; a signal
# sent from the hook after window SIGNALLED (0-based) is therefore seen after the next one:
# the stopped run's checkpoint resumes at window STOPPED_AT.
SIGNALLED, STOPPED_AT = 40, 42


def signal_at(epoch, window, signum=signal.SIGTERM):
    """An on_window for demo_tie.main: a real `signum` to this process after training
    window `window` (0-based) of `epoch`, so that the run stops there, every time."""
    def on_window(e, k):
        if (e, k) == (epoch, window):
            os.kill(os.getpid(), signum)
    return on_window


def train(folder, *extra, epochs=3, corpus=None, on_window=None):
    """Train TINY, tied, on the pattern corpus in `folder` (or `corpus`) into folder/model.pt,
    in this process; returns (completed process, checkpoint path)."""
    folder = Path(folder)
    if corpus is None:
        corpus = folder / 'corpus'
        if not corpus.exists():
            pattern_corpus(corpus)
    save = folder / 'model.pt'
    proc = run_main('demo_tie.py', '--data_dir', corpus, *TINY, '--tied', '--epochs', epochs,
                    '--save_path', save, *extra, on_window=on_window)
    return proc, save


def trainer_process(folder, *extra, corpus=None):
    """demo_tie.py started in the background on the pattern corpus of `folder`."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, str(ROOT / 'demo_tie.py'), '--data_dir',
                             corpus or folder / 'corpus', *TINY, '--tied',
                             '--save_path', folder / 'model.pt', *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(proc, text, stream='stderr'):
    """Read `proc`'s stream until `text` has been printed."""
    seen, pipe = b'', getattr(proc, stream)
    while text.encode() not in seen:
        chunk = os.read(pipe.fileno(), 4096)
        assert chunk, f'the process ended before printing {text!r}'
        seen += chunk


def run_whole_and_interrupted(folder, *flags):
    """The same tiny run twice on the pattern corpus in `folder`: once whole (folder/model.pt),
    once stopped by SIGTERM after window 40 of epoch 1 and resumed with --resume
    (folder/stopped/model.pt). Returns the whole and the resumed runs' completed processes."""
    corpus = pattern_corpus(folder / 'corpus')
    whole, _ = train(folder, *flags, epochs=2)
    assert whole.returncode == 0, whole.stderr
    stopped, save = train(folder / 'stopped', *flags, epochs=2, corpus=corpus,
                          on_window=signal_at(1, SIGNALLED))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert torch.load(folder / 'stopped' / 'model.last.pt',
                      weights_only=True)['position']['window'] == STOPPED_AT
    resumed = run_main('demo_tie.py', '--save_path', save, '--data_dir', corpus, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    return whole, resumed


def states_equal(a, b):
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return a['model_state'].keys() == b['model_state'].keys() and all(
        torch.equal(a['model_state'][k], b['model_state'][k]) for k in a['model_state'])


def printed_test_lines(proc):
    return [l for l in proc.stdout.splitlines() if l.startswith('Test Loss')]


def check_the_scripts_read_it(folder, whole):
    """The best model of the run in `folder` (trained to `whole`, a completed process) tests
    with --eval_only to the run's own Test lines, and generate.py and score.py read it."""
    evaluated = run_main('demo_tie.py', '--eval_only', '--save_path', folder / 'model.pt',
                         '--data_dir', folder / 'corpus')
    assert printed_test_lines(evaluated) == printed_test_lines(whole), evaluated.stderr
    for proc in (run_main('generate.py', '--checkpoint', folder / 'model.pt', '--num_words', 4),
                 run_main('score.py', '--checkpoint', folder / 'model.pt',
                          folder / 'corpus' / 'test.txt')):
        assert proc.returncode == 0, proc.stderr


def snapshot(folder, names=('model.pt', 'model.last.pt', 'model.csv')):
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


def list_reader(folder):
    """Today's reader before streaming, kept as the oracle: whole files into lists of lists of
    words, a vocabulary in order of first appearance, then one LongTensor per split."""
    splits = {}
    for name in data.SPLITS:
        text = (folder / f'{name}.txt').read_text(encoding='utf-8-sig')
        splits[name] = [line.split() for line in text.splitlines() if line.split()]
    vocab = list(data.SPECIALS)
    seen = set(vocab)
    for sentence in splits['train']:
        for w in sentence:
            if w not in seen:
                seen.add(w)
                vocab.append(w)
    if data.UNK not in vocab:
        vocab.append(data.UNK)
    index = {w: i for i, w in enumerate(vocab)}
    unk = index[data.UNK]
    streams = {name: torch.tensor([i for s in sents
                                   for i in [data.SOS, *(index.get(w, unk) for w in s), data.EOS]])
               for name, sents in splits.items()}
    return vocab, streams


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    """One tiny tied model trained for three epochs, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp('trained')
    proc, save = train(folder)
    assert proc.returncode == 0, proc.stderr
    return {'proc': proc, 'checkpoint': save, 'folder': folder, 'corpus': folder / 'corpus'}


@pytest.fixture(scope='session')
def one_epoch(tmp_path_factory):
    """A tiny tied model trained for one epoch, to be copied by the tests that continue,
    damage or contest it (training it afresh in each would cost seconds each)."""
    folder = tmp_path_factory.mktemp('one_epoch')
    proc, _ = train(folder, epochs=1)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture(scope='session')
def stopped_run(tmp_path_factory):
    """A run stopped by SIGTERM in epoch 1, after window 40: model.last.pt holds its position
    in mid-epoch, and no epoch has ended. Tests copy what they change."""
    folder = tmp_path_factory.mktemp('stopped')
    proc, _ = train(folder, epochs=3, on_window=signal_at(1, SIGNALLED))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    return folder


@pytest.fixture(scope='session')
def long_corpus(tmp_path_factory):
    """A pattern corpus of about 800 windows an epoch, for runs that another process must
    catch while they train."""
    return pattern_corpus(tmp_path_factory.mktemp('long') / 'corpus', train_lines=3000)


def copy_run(run, folder):
    """Copy a trained run's corpus and files (not its lock) into `folder`, as if it had
    been trained there; returns the path of its best checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run / 'corpus', folder / 'corpus')
    for name in ('model.pt', 'model.last.pt', 'model.csv'):
        if (run / name).exists():
            shutil.copy(run / name, folder / name)
    return folder / 'model.pt'
