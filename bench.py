"""Measure the trainer's own code: training and evaluation tokens/s, generation words/s, peak
memory.

    python bench.py                        # the reference model (2x650 tied, batch 20, seq 30)
    python bench.py --embed_size 200 --hidden_size 200 --windows 50 --json bench.json
    python bench.py --compare_example      # also time the word_language_model example's loop
    python bench.py --onnx                 # also score and generate with the ONNX export
    python bench.py --amp                  # each loop in float32 and bfloat16, and --amp's choice
    python bench.py --recipe regularized   # the model and loss of demo_tie.py's recipe
    python bench.py --read_corpus DIR      # time reading a corpus folder, and its peak memory

It imports train_epoch, evaluate and sample, so it times exactly what demo_tie.py and
generate.py run. PTB is used when data/penn exists, else random tokens over a vocabulary of
the same size. It is a measurement, not a test: nothing here asserts a speed.
"""
import argparse
import copy
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

import data
from generate import sample
from lm import flags
from lm.device import (
    DeviceUnavailable,
    amp_needs_measuring,
    apply_threads,
    bfloat16_speedup,
    keep_freed_memory,
    matrix_shapes,
    mixed_precision,
    pick_device,
)
from lm.flags import non_negative_int, positive_int
from lm.loop import Stepping, evaluate, train_epoch
from lm.loss import Objective
from lm.optim import make_optimizer
from lm.recipes import apply_recipe
from lm.rng import seed_everything
from model import build, detach_hidden, model_args, tied_size_problem

PTB_VOCAB = 10002
EXAMPLE = 'train (word_language_model loop)'


def example_train(model, train_data, optimizer, seq_length, clip):
    """The training loop of PyTorch's word_language_model example, kept as the baseline the
    trainer is compared with (and checked against in tests/test_loop.py): the model's layers
    called one by one as in a plain forward, log_softmax then NLLLoss, gradients zeroed with
    zero_grad(), the loss read with .item() every window."""
    criterion = nn.NLLLoss()
    model.train()
    hidden = model.init_hidden(train_data.size(0))
    losses = []
    for start in data.window_starts(train_data, seq_length):
        x, y = data.get_window(train_data, start, seq_length)
        model.zero_grad()
        hidden = detach_hidden(hidden)
        output, hidden = model.lstm(model.dropout(model.embedding(x)), hidden)
        logits = model.fc(model.dropout(output))
        loss = criterion(F.log_softmax(logits, dim=-1).view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
    return losses


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def timed(fns, device, repeats, warmup):
    """Seconds of each of `repeats` calls of every function in `fns` (name -> fn), after
    `warmup` calls that are not counted. The functions take turns within each repeat, so a
    machine that slows down or speeds up during the run affects them alike."""
    times = {name: [] for name in fns}
    for repeat in range(warmup + repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if repeat >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def token_stream(n_tokens):
    penn = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'penn')
    if os.path.exists(os.path.join(penn, 'train.txt')):
        corpus = data.load_corpus(penn)
        return corpus.train[:n_tokens], len(corpus.vocab), 'PTB train'
    return torch.randint(3, PTB_VOCAB, (n_tokens,)), PTB_VOCAB, 'random tokens'


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform != 'darwin' else kb / 2**20


def bench_reading(data_dir, max_vocab, min_count):
    """Time data.load_corpus on a folder and report the process's peak memory against the
    size of the token arrays it returns."""
    baseline = peak_memory_mb(torch.device('cpu'))  # the interpreter and PyTorch, before reading
    t0 = time.perf_counter()
    corpus = data.load_corpus(data_dir, max_vocab=max_vocab, min_count=min_count)
    seconds = time.perf_counter() - t0
    tokens = sum(getattr(corpus, s).numel() for s in data.SPLITS)
    array_mb = sum(getattr(corpus, s).nbytes for s in data.SPLITS) / 2**20
    peak = peak_memory_mb(torch.device('cpu'))
    print(f'read {data_dir}: {tokens} tokens ({corpus.train.numel()} in train), vocabulary '
          f'{len(corpus.vocab)}, {seconds:.1f} s ({tokens / seconds:,.0f} tokens/s)')
    print(f'peak memory (process RSS) {peak:.0f} MiB, of which {baseline:.0f} MiB before reading; '
          f'token arrays {array_mb:.0f} MiB ({corpus.train.dtype})')
    return {'seconds': seconds, 'tokens': tokens, 'vocab': len(corpus.vocab),
            'peak_rss_mib': peak, 'baseline_rss_mib': baseline, 'arrays_mib': array_mb}


def build_parser():
    p = argparse.ArgumentParser(
        description='Benchmark the trainer, evaluator and generator',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # the trainer's own flags, with its defaults: the reference model
    flags.add_flags(p, ['embed_size', 'hidden_size', 'num_layers', 'dropout', 'batch_size',
                        'seq_length', 'device', 'threads'])
    p.add_argument('--tied', action=argparse.BooleanOptionalAction, default=True,
                   help='Enable weight tying')
    p.add_argument('--amp', action='store_true',
                   help='Also time each loop under --amp (taking turns with float32)')
    p.add_argument('--compile', action='store_true',
                   help="Also time training with the model under torch.compile, as the "
                        "trainer's --compile runs it (compiled in the warm-up repeats)")
    p.add_argument('--windows', type=positive_int, default=20, help='Training windows per repeat')
    p.add_argument('--repeats', type=positive_int, default=5)
    p.add_argument('--warmup', type=non_negative_int, default=1,
                   help='Repeats run first and not counted')
    p.add_argument('--gen_words', type=positive_int, default=200)
    p.add_argument('--onnx', action='store_true',
                   help='Also time scoring and generation by the model exported by export.py, '
                        'run by ONNX Runtime (on the CPU, with as many threads)')
    p.add_argument('--compare_example', action='store_true',
                   help="Also time the word_language_model example's loop")
    p.add_argument('--json', metavar='FILE', help='Also write the results as JSON')
    p.add_argument('--read_corpus', metavar='DIR',
                   help='Only time reading this corpus folder (and its peak memory)')
    flags.add_flags(p, ['max_vocab', 'min_count'])  # for --read_corpus
    flags.add_flags(p, flags.REGULARIZER_FLAGS)  # as in demo_tie.py: --recipe, and its flags
    return p


def loops_to_time(args, device):
    """(config line, {kind: ({name: fn}, amount per call, unit)}): the trainer's, evaluator's
    and generator's own functions on the benchmark model, under --amp too when asked."""
    seed_everything(0)
    keep_freed_memory()  # as demo_tie.py does
    steps = args.windows * args.seq_length + 1
    stream, vocab_size, source = token_stream(steps * args.batch_size)
    batched = data.batchify(stream, args.batch_size).to(device)
    windows = (data.variable_windows(batched, args.seq_length, random.Random(0))
               if args.variable_bptt else data.fixed_windows(batched, args.seq_length))
    model = build(model_args(args, vocab_size)).to(device)
    # The trainer's --amp decision on this model's products, printed; on a CPU that has
    # bfloat16, its rows are timed whatever it decided: they are the figures behind it.
    speedup = (bfloat16_speedup(matrix_shapes(model, args.batch_size * args.seq_length))
               if amp_needs_measuring(device, args.amp) else None)
    amp_dtype, amp_scaler, line = mixed_precision(device, args.amp, speedup=speedup)
    if line:
        print(line if amp_dtype or speedup is not None else f'{line}; no --amp rows',
              file=sys.stderr)
    if speedup is not None:
        amp_dtype = torch.bfloat16
    stepping = Stepping(make_optimizer(model, 1e-3, 1e-5), clip=5.0,
                        objective=Objective.from_flags(args))
    tokens = batched.size(0) * (batched.size(1) - 1)
    prompt = [data.SOS] + stream[:10].tolist()
    generator = torch.Generator().manual_seed(0)

    def precisions(name, run):  # {name: fn} in float32, and in --amp's dtype where it applies
        fns = {name: lambda: run(None)}
        if amp_dtype is not None:
            dtype_name = str(amp_dtype).replace('torch.', '')
            fns[f'{name} ({dtype_name} autocast)'] = lambda: run(amp_dtype)
        return fns

    training = precisions('train', lambda dtype: train_epoch(
        model, batched, windows, replace(stepping, autocast_dtype=dtype,
                                         scaler=amp_scaler if dtype else None)))
    if args.compile:
        compiled = torch.compile(model)
        training['train (compiled)'] = lambda: train_epoch(
            model, batched, windows, replace(stepping, forward=compiled))
    if args.compare_example:
        baseline = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5, foreach=True)
        training[EXAMPLE] = lambda: example_train(model, batched, baseline, args.seq_length, 5.0)
    loops = {'train': (training, tokens, 'tokens/s'),
             'evaluate': (precisions('evaluate', lambda dtype: evaluate(
                 model, batched, args.seq_length, autocast_dtype=dtype)), tokens, 'tokens/s'),
             'generate': (precisions('generate', lambda dtype: sample(
                 model, prompt, args.gen_words, generator=generator, autocast_dtype=dtype)),
                 args.gen_words, 'words/s')}
    if args.onnx:
        onnx_evaluate, onnx_generate = onnx_loops(model, batched, args.seq_length, prompt,
                                                  args.gen_words)
        loops['evaluate'][0]['evaluate (onnxruntime)'] = onnx_evaluate
        loops['generate'][0]['generate (onnxruntime)'] = onnx_generate
    config = (f'{args.num_layers}x{args.hidden_size} {"tied" if args.tied else "untied"}, embed '
              f'{args.embed_size}, batch {args.batch_size}, seq {args.seq_length}, vocab '
              f'{vocab_size} ({source}), {args.windows} windows a repeat, recipe {args.recipe}'
              + (f', bfloat16 products {speedup:.2f}x float32' if speedup is not None else ''))
    return config, loops


def onnx_loops(model, batched, seq_length, prompt, n_words):
    """The evaluator's and the generator's work done by ONNX Runtime on the model as export.py
    writes it: every window's cross-entropy with the state carried, and `n_words` words
    sampled one at a time after `prompt`."""
    import onnxruntime  # an optional dependency: main() has checked it is there

    from export import export
    path = os.path.join(tempfile.mkdtemp(), 'bench.onnx')
    export(copy.deepcopy(model).cpu(), path)  # export changes the model it is given
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch's
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])

    def run(ids, state):
        out = session.run(None, {'ids': ids, 'h': state[0], 'c': state[1]})
        return torch.from_numpy(out[0]), out[1:]

    def evaluate_windows():
        state, total = [s.numpy() for s in model.init_hidden(batched.size(0))], 0.0
        for start in data.window_starts(batched, seq_length):
            x, y = data.get_window(batched, start, seq_length)
            logits, state = run(x.numpy(), state)
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                           reduction='sum'))
        return total

    generator = torch.Generator().manual_seed(0)

    def generate_words():
        state = [s.numpy() for s in model.init_hidden(1)]
        logits, state = run(torch.tensor([prompt]).numpy(), state)
        for _ in range(n_words):  # as generate.py samples: float64 on the CPU
            word = torch.multinomial(F.softmax(logits[0, -1].double(), -1), 1,
                                     generator=generator)
            logits, state = run(word.view(1, 1).numpy(), state)
    return evaluate_windows, generate_words


def print_results(config, device, results, peak):
    processor = (torch.cuda.get_device_name(device) if device.type == 'cuda'
                 else platform.processor() or platform.machine())
    machine = (f'{device} ({processor}, {torch.get_num_threads()} threads), '
               f'torch {torch.__version__}')
    if device.type == 'cuda':  # PyTorch's defaults: TF32 in cuDNN (the LSTM), not in matmuls
        machine += (f', TF32 in matmuls {torch.backends.cuda.matmul.allow_tf32}, in cuDNN '
                    f'{torch.backends.cudnn.allow_tf32}')
    print(f'config:  {config}')
    print(f'machine: {machine}')
    print(f'{"measure":<34} {"median":>12} {"min":>12} {"max":>12}  unit')
    for name, r in results.items():
        print(f'{name:<34} {r["median"]:>12.1f} {r["min"]:>12.1f} {r["max"]:>12.1f}  {r["unit"]}')
    if EXAMPLE in results:
        for name in (n for n in results if n.startswith('train') and n != EXAMPLE):
            ratio = results[name]['median'] / results[EXAMPLE]['median']
            print(f'{name + " speed-up over the example":<34} {ratio:>12.3f}x')
    memory = 'CUDA allocated' if device.type == 'cuda' else 'process RSS'
    print(f'{"peak memory":<34} {peak:>12.1f} {"":>12} {"":>12}  MiB ({memory})')
    return machine


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    apply_recipe(args, flags.explicit_flags(p, argv))
    if args.compare_example and args.variational:
        p.error("--compare_example times the example's loop on the reference's model: "
                'it cannot run the layer-by-layer LSTM of --variational')
    if tied_size_problem(args.tied, args.embed_size, args.hidden_size, args.projection):
        p.error(tied_size_problem(args.tied, args.embed_size, args.hidden_size, args.projection)
                + ' (or pass --no-tied)')
    try:
        device = pick_device(args.device)
    except DeviceUnavailable as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as e:
        p.error(str(e))
    if args.onnx:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            print('error: --onnx needs onnx and onnxruntime: pip install onnx onnxruntime',
                  file=sys.stderr)
            return 1
    if args.json:  # fail now, not after the whole benchmark
        try:
            open(args.json, 'a').close()
        except OSError as e:
            p.error(f'cannot write --json {args.json}: {e.strerror or e}')
    apply_threads(args.threads, device)

    if args.read_corpus:
        try:
            report = bench_reading(args.read_corpus, args.max_vocab, args.min_count)
        except data.DataError as e:
            print(f'error: {e}', file=sys.stderr)
            return 1
    else:
        config, loops = loops_to_time(args, device)
        results = {}
        for fns, amount, unit in loops.values():
            for name, times in timed(fns, device, args.repeats, args.warmup).items():
                rates = sorted(amount / t for t in times)
                results[name] = {'median': statistics.median(rates), 'min': rates[0],
                                 'max': rates[-1], 'unit': unit, 'repeats': len(rates)}
        peak = peak_memory_mb(device)
        machine = print_results(config, device, results, peak)
        report = {'config': config, 'machine': machine, 'results': results,
                  'peak_memory_mib': peak, 'args': vars(args)}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
