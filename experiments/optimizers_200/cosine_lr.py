"""The learning rate the 2x200 cosine run applied, epoch by epoch, against the plateau run's:
each window's factor as train_epoch applies it (schedule x window length / 30, from the
windows --variable_bptt drew for seed 1111), summed over the epoch.

    python experiments/optimizers_200/cosine_lr.py      # from the repository's root, PTB installed
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
import data
from lm.optim import window_lr_factors

EPOCHS = 8
train = data.batchify(data.load_corpus('data/penn').train, 20)
cosine_total = plateau_total = 0.0
for epoch in range(1, EPOCHS + 1):
    windows = data.epoch_windows(train, 30, epoch, variable=True, seed=1111)
    cosine = sum(window_lr_factors(windows, 30, epoch, EPOCHS, 'cosine', 1.0, True))
    plateau = sum(window_lr_factors(windows, 30, epoch, EPOCHS, 'plateau', 0.0, True))
    cosine_total, plateau_total = cosine_total + cosine, plateau_total + plateau
    print(f'epoch {epoch}: cosine applied {cosine / plateau:.3f} of the plateau run\'s rate')
print(f'all {EPOCHS} epochs: {cosine_total / plateau_total:.3f}')
steps = 100_000  # the intended curve, warm-up over epoch 1 then the half cosine, integrated
intended = sum(min(1.0, (i + 0.5) / steps * EPOCHS) * (1 + math.cos(math.pi * (i + 0.5) / steps))
               / 2 for i in range(steps)) / steps
print(f'intended: {intended:.3f}')
