"""Which device a script runs on, with how many CPU threads, in which precision: the meaning of
--device, --threads and --amp, shared by the trainer, the generator, the scorer and the bench.
"""
import ctypes
import os
import platform
import signal
import sys

import torch


def pick_device(name='auto'):
    """'auto' takes cuda, then mps, then cpu; any other name must be available."""
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
        raise ValueError(f'device {name} asked for, but CUDA is not available here')
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise ValueError('device mps asked for, but MPS is not available here')
    return device


def apply_threads(threads):
    if threads is not None:
        torch.set_num_threads(threads)


def cpu_has_native_bfloat16():
    """True where the CPU multiplies bfloat16 in hardware (x86 AVX-512 BF16 or AMX, Arm BF16).
    Elsewhere PyTorch emulates bfloat16, which is slower than float32."""
    capabilities = getattr(torch.cpu, 'get_capabilities', None)
    if capabilities is not None:
        caps = capabilities()
        return any(caps.get(k, False) for k in ('avx512_bf16', 'amx_bf16', 'bf16', 'sve_bf16'))
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # PyTorch before 2.9


def mixed_precision(device, requested):
    """What --amp means on `device`: (autocast dtype or None, GradScaler or None, warning or
    None). Weights, gradients and optimizer state stay float32 in every case; only the
    matrix products run in the lower precision."""
    if not requested:
        return None, None, None
    if device.type == 'cuda':
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, None, None
        return torch.float16, torch.amp.GradScaler('cuda'), None  # float16 needs loss scaling
    if device.type == 'cpu':
        if cpu_has_native_bfloat16():
            return torch.bfloat16, None, None
        return None, None, ('--amp: this CPU has no native bfloat16 instructions (AVX-512 BF16 '
                            'or AMX), and emulated bfloat16 is slower than float32; running '
                            'in float32')
    return None, None, (f'--amp works on CUDA and on CPUs with bfloat16; running in float32 '
                        f'on {device}')


def apply_device_flags(parser, args, device_name=None):
    """What --device, --threads and --amp say for a script that runs a trained model
    (generate.py, score.py): returns (device, autocast dtype or None)."""
    try:
        device = pick_device(device_name or args.device)
    except ValueError as e:
        parser.error(str(e))
    apply_threads(args.threads)
    autocast_dtype, _, warning = mixed_precision(device, args.amp)
    if warning:
        print(f'warning: {warning}', file=sys.stderr)
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


def memory_of(device):
    """Bytes of memory on `device` (the machine's RAM for a CPU), or None where unknown."""
    if device.type == 'cuda':
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (AttributeError, ValueError, OSError):
        return None
