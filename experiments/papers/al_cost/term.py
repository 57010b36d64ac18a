"""Time the augmented loss alone, forward and backward, on one window of PTB's training text
(20 x 35 targets, vocabulary 10002, 200-dimensional embedding, tau 20), on one thread: the
median of 9 calls after 2 warm-ups, in ms. Run it from two checkouts to compare commits:

    (cd OLD && python experiments/papers/al_cost/term.py); python experiments/papers/al_cost/term.py
"""
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..'))
import data
from lm.loss import augmented_loss

torch.set_num_threads(1)
torch.manual_seed(0)
corpus = data.load_corpus('data/penn')
targets = data.batchify(corpus.train, 20)[:, 1001:1036].contiguous()
embedding = torch.nn.Parameter(torch.randn(len(corpus.vocab), 200) * 0.3)
logits = (torch.randn(20, 35, 200) @ embedding.t()).detach().requires_grad_()
times = []
for _ in range(11):
    embedding.grad = logits.grad = None
    start = time.perf_counter()
    augmented_loss(logits, None, embedding, targets, 20.0).backward()
    times.append(time.perf_counter() - start)
print(f'{statistics.median(times[2:]) * 1e3:.1f} ms')
