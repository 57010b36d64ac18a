"""The random state of the process: seeded, captured for a checkpoint and set back, every
generator a run draws from (PyTorch's, CUDA's, NumPy's, Python's).
"""
import random

import numpy as np
import torch


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CUDA too


def rng_state():
    """Every RNG the run draws from, as tensors and Python values (weights_only can load it)."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': [torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            'random': random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if torch.cuda.is_available():  # the GPUs there are: a run resumes on fewer, or on none
        for index, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    key, pos, has_gauss, cached = state['numpy']
    np.random.set_state(('MT19937', key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['random']
    random.setstate((version, tuple(internal), gauss))


def seed_process(seed, rank):
    """Dropout differs from process to process: each draws from its own seed."""
    if rank:
        seed_everything(seed + 1_000_003 * rank)
