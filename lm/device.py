"""Which device a script runs on, with how many CPU threads, in which precision: the meaning of
--device, --threads and --amp, shared by the trainer, the generator, the scorer and the bench.
"""
import collections
import ctypes
import math
import os
import platform
import signal
import sys
import time

import torch

from lm import UserError
from lm.console import say, warn


class DeviceUnavailable(UserError, ValueError):
    """A device that exists in PyTorch's names but not on this machine: not a usage mistake,
    so the scripts say it in one line rather than with their usage."""


def pick_device(name='auto'):
    """'auto' takes cuda, then mps, then cpu; any other name must be available (else
    DeviceUnavailable; a name PyTorch does not know is a ValueError)."""
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f'unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise DeviceUnavailable(f'device {name} asked for, but CUDA is not available here')
    if device.type == 'cuda' and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise DeviceUnavailable(f'device {name} asked for, but this machine has {count} '
                                    f'CUDA device(s): cuda:0 to cuda:{count - 1}')
        torch.cuda.set_device(device)  # so that nothing opens a context on cuda:0 meanwhile
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise DeviceUnavailable('device mps asked for, but MPS is not available here')
    return device


def apply_threads(threads, device):
    """--threads N, or where it is not given on a CPU, as many threads as this process has
    cores that other work leaves free now (PyTorch's default at most). Threads that wait for
    one another spin, so a thread on a core that another process keeps busy slows every other
    thread down: beside one busy process on two cores, two threads train at half the speed of
    one (docs/performance.md). OMP_NUM_THREADS, where set, is the user's or the launcher's
    (torchrun's) choice and is kept. Says on stderr when it takes fewer threads than the
    default."""
    if threads is not None:
        torch.set_num_threads(threads)
        return
    if device.type != 'cpu' or 'OMP_NUM_THREADS' in os.environ:
        return
    default, cores = torch.get_num_threads(), available_cores()
    busy = busy_cores(cores)
    chosen = threads_beside(default, len(cores), busy)
    if chosen < default:
        torch.set_num_threads(chosen)
        print(f'note: other work keeps {busy:.1f} of this process\'s {len(cores)} cores busy: '
              f'{chosen} CPU thread{"s" if chosen > 1 else ""} instead of {default} (--threads '
              'N to choose)', file=sys.stderr, flush=True)


BUSY_CORE = 0.7  # a core that other work uses this much of counts as taken


def threads_beside(default, cores, busy):
    """The threads to run beside other work using `busy` cores' worth of `cores`: one for each
    core left free, at least one, at most `default`."""
    taken = math.floor(busy + 1 - BUSY_CORE)
    return max(1, min(default, cores - taken))


def available_cores():
    """The cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def busy_cores(cores, seconds=0.2):
    """How many of `cores` other processes keep busy, in cores' worth, from /proc/stat over
    `seconds` while this process sleeps; 0.0 where there is no /proc/stat (not Linux)."""
    def times():
        found = {}
        with open('/proc/stat') as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith('cpu') and name[3:].isdigit() and int(name[3:]) in cores:
                    ticks = [int(v) for v in fields[:8]]  # user .. steal; guest is in user
                    found[name] = (sum(ticks), ticks[3] + ticks[4])  # all, idle + iowait
        return found
    try:
        before = times()
        time.sleep(seconds)
        after = times()
    except OSError:
        return 0.0
    busy = 0.0
    for name, (total, idle) in after.items():
        elapsed = total - before[name][0]
        if elapsed > 0:
            busy += 1 - (idle - before[name][1]) / elapsed
    return busy


def cpu_has_native_bfloat16():
    """True where the CPU multiplies bfloat16 in hardware (x86 AVX-512 BF16 or AMX, Arm BF16).
    Elsewhere PyTorch emulates bfloat16, which is slower than float32."""
    capabilities = getattr(torch.cpu, 'get_capabilities', None)
    if capabilities is not None:
        caps = capabilities()
        return any(caps.get(k, False) for k in ('avx512_bf16', 'amx_bf16', 'bf16', 'sve_bf16'))
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # PyTorch before 2.9


def products(weight_shapes, rows):
    """The (m, k, n) of the matrix products that weights of `weight_shapes` (out, in) make in a
    training window of `rows` token positions: each one's forward product and its two
    backward ones."""
    return [shape for out, inner in weight_shapes
            for shape in ((rows, inner, out), (rows, out, inner), (out, rows, inner))]


def matrix_shapes(model, rows):
    """products() of every Linear and LSTM weight of `model`."""
    weights = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weights.append(module.weight.shape)
        elif isinstance(module, torch.nn.LSTM):
            weights += [p.shape for name, p in module.named_parameters()
                        if name.startswith('weight_')]
    return products(weights, rows)


# The reference model's (2x650: four LSTM weights of 2600x650, the 10002x650 decoder; batch 20
# x 30 steps), for the scripts that decide before they load a model.
REFERENCE_SHAPES = products([(2600, 650)] * 4 + [(10002, 650)], 600)


def bfloat16_speedup(shapes, seconds=0.1, max_rows=256):
    """How many times faster this CPU computes the products `shapes` in bfloat16 than in
    float32. Each distinct shape is timed both ways in turns, on at most `max_rows` of its
    rows (the time scaled up to all of them, and by how often it occurs), at least twice and
    for about `seconds`; the best round of each precision is kept."""
    counts = collections.Counter(shapes)
    weights = [count * m / min(m, max_rows) for (m, _, _), count in counts.items()]
    operands = {dtype: [(torch.full((min(m, max_rows), k), 0.5, dtype=dtype),
                         torch.full((k, n), 0.5, dtype=dtype)) for m, k, n in counts]
                for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(operands, float('inf'))
    deadline, rounds = time.perf_counter() + seconds, 0
    while rounds < 2 or time.perf_counter() < deadline:
        for dtype, pairs in operands.items():
            took = 0.0
            for (a, b), weight in zip(pairs, weights):
                start = time.perf_counter()
                torch.mm(a, b)
                took += weight * (time.perf_counter() - start)
            best[dtype] = min(best[dtype], took)
        rounds += 1
    return best[torch.float32] / best[torch.bfloat16]


def cpu_autocast(speedup):
    """--amp on a CPU with native bfloat16, given bfloat16's measured speed-up over float32
    on the model's products: (bfloat16 or None, the line that says which and why). AVX-512
    BF16 without AMX is such a CPU where bfloat16 products are slower, and only a
    measurement tells it from one where they are faster."""
    if speedup > 1.0:
        return torch.bfloat16, (f'--amp: bfloat16 autocast (this model\'s matrix products ran '
                                f'{speedup:.2f}x as fast as in float32 on this CPU)')
    return None, (f'--amp: this model\'s matrix products ran {speedup:.2f}x as fast in bfloat16 '
                  'as in float32 on this CPU, so it gains nothing; running in float32')


def amp_needs_measuring(device, requested):
    """True where --amp's choice depends on bfloat16_speedup: a CPU with native bfloat16."""
    return bool(requested) and device.type == 'cpu' and cpu_has_native_bfloat16()


def mixed_precision(device, requested, shapes=REFERENCE_SHAPES, speedup=None):
    """What --amp means on `device`: (autocast dtype or None, GradScaler or None, a line to
    print or None). Weights, gradients and optimizer state stay float32 in every case; only
    the matrix products (and on CUDA the LSTM) run in the lower precision. On CUDA, float16
    with loss scaling; on a CPU, bfloat16 only where it measures faster than float32 on
    `shapes` (`speedup`, measured when not given)."""
    if not requested:
        return None, None, None
    if device.type == 'cuda':
        # float16 with loss scaling, not bfloat16: under autocast cuDNN's LSTM runs in float16
        # whatever dtype autocast is given (PyTorch's AutocastRNN rule), so its small
        # recurrent gradients need the scaling in any case
        return torch.float16, torch.amp.GradScaler('cuda'), None
    if device.type == 'cpu':
        if not amp_needs_measuring(device, requested):
            return None, None, ('warning: --amp: this CPU has no native bfloat16 instructions '
                                '(AVX-512 BF16 or AMX), and emulated bfloat16 is slower than '
                                'float32; running in float32')
        dtype, line = cpu_autocast(bfloat16_speedup(shapes) if speedup is None else speedup)
        return dtype, None, line if dtype is not None else f'warning: {line}'
    return None, None, (f'warning: --amp works on CUDA and on CPUs with bfloat16; running in '
                        f'float32 on {device}')


def apply_device_flags(parser, args, cpu_amp_refusal=None):
    """What --device, --cuda (the reference's, the same as --device cuda), --threads and
    --amp say for a script that runs a trained model (generate.py, score.py): returns
    (device, autocast dtype or None). `cpu_amp_refusal`, if given, is why --amp stays off on
    a CPU for this script: it is printed instead."""
    if args.cuda and args.device not in ('auto', 'cuda') and not args.device.startswith('cuda:'):
        parser.error(f'--cuda and --device {args.device} disagree; give one of them')
    try:
        device = pick_device('cuda' if args.cuda and args.device == 'auto' else args.device)
    except DeviceUnavailable as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as e:
        parser.error(str(e))
    apply_threads(args.threads, device)
    if args.amp and device.type == 'cpu' and cpu_amp_refusal:
        print(f'warning: --amp: {cpu_amp_refusal}; running in float32', file=sys.stderr)
        return device, None
    autocast_dtype, _, line = mixed_precision(device, args.amp)
    if line:
        print(line, file=sys.stderr)
    return device, autocast_dtype


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of handing it back to the system.

    A CPU step allocates and frees tensors of tens of MB (logits, the decoder's gradient); by
    default glibc serves each from fresh pages that the kernel must fault in and zero, every
    window. PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for the same reason
    (docs/performance.md has what it gained). Elsewhere than glibc this does nothing.
    """
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest allowed value on 64-bit
    libc.mallopt(M_TRIM_THRESHOLD, 2**30)


def quiet_on_closed_pipe():
    """Behave like a Unix tool when the reader of our output goes away (`| head`): end at
    once and quietly, as SIGPIPE's default does, rather than with a BrokenPipeError."""
    if hasattr(signal, 'SIGPIPE'):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def escape_what_output_cannot_encode():
    """Where standard output cannot encode a word or a path (LC_ALL=C with PYTHONUTF8=0,
    PYTHONIOENCODING=ascii), write it as backslash escapes (caf\\xe9), as standard error
    does, rather than end in a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, 'reconfigure'):
            stream.reconfigure(errors='backslashreplace')


def memory_of(device):
    """(bytes of memory on `device` this process may use, where that figure comes from), or
    (None, None) where unknown. On a CPU: the machine's RAM, or less where ulimit -v
    (RLIMIT_AS) or the process's cgroup sets a lower limit."""
    if device.type == 'cuda':
        return torch.cuda.get_device_properties(device).total_memory, str(device)
    try:
        found = [(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'), 'this machine')]
    except (AttributeError, ValueError, OSError):
        found = []
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            found.append((soft, 'this process under its limit (ulimit -v)'))
    except (ImportError, ValueError, OSError):
        pass
    for path in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
        try:
            with open(path) as f:
                found.append((int(f.read().strip()), f'this process under its cgroup ({path})'))
            break
        except (OSError, ValueError):  # absent, or "max": no limit
            continue
    return min(found) if found else (None, None)


def out_of_memory(error):
    """Whether `error` is an allocation that failed: Python's, CUDA's, or PyTorch's CPU
    allocator's (a RuntimeError that says so)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def allocation_failure(error):
    """The line of an out-of-memory error that says what was asked for."""
    lines = [line for line in str(error).splitlines() if 'allocate' in line]
    text = lines[0] if lines else str(error).splitlines()[0] if str(error) else 'MemoryError'
    return text.split('DefaultCPUAllocator: ')[-1][:200]


def speedups(args, model, forward, device, rows, group):
    """(forward, autocast dtype, GradScaler) for --amp and --compile, with the line that
    says what --amp chose, and a warning where one is unsupported and the default path
    instead. `forward` is the model, or its DistributedDataParallel wrapper; `rows` this
    process's batch rows."""
    speedup = None
    if amp_needs_measuring(device, args.amp) and group.is_main:
        speedup = bfloat16_speedup(matrix_shapes(model, rows * args.seq_length))
    speedup = group.gather_objects(speedup)[0]  # the first process decides for all
    dtype, scaler, line = mixed_precision(device, args.amp, speedup=speedup)
    say(line, shown=bool(line) and group.is_main)
    if args.compile:
        eager = forward
        try:
            forward = torch.compile(eager)
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), \
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                x = torch.zeros(rows, args.seq_length, dtype=torch.long, device=device)
                forward(x, model.init_hidden(rows))[0].sum().backward()
            model.zero_grad(set_to_none=True)
        except Exception as e:  # noqa: BLE001  compilers fail in many ways; all mean: run eagerly
            warn(f'--compile is not supported here ({type(e).__name__}); running uncompiled',
                 group.is_main)
            forward = eager
    return forward, dtype, scaler
