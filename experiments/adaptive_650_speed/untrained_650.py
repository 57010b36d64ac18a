"""Write rand650.pt: an untrained tied 2x650 model with PTB's vocabulary. The time score.py
takes does not depend on the weights, so this times --dynamic at the full size before a
trained 2x650 checkpoint exists. Run from the repository root:

    python experiments/adaptive_650_speed/untrained_650.py
"""
import sys
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import data
from lm import flags
from lm.checkpoint import best_checkpoint
from lm.runfiles import save_checkpoint
from model import LSTMLanguageModel

args = flags.build_parser().parse_args(['--tied'])
corpus = data.load_corpus(args.data_dir)
torch.manual_seed(0)
model = LSTMLanguageModel(len(corpus.vocab), 650, 650, 2, 0.5, True)
save_checkpoint(best_checkpoint(model, corpus.vocab, args, 0, 9.2, uuid.uuid4().hex),
                'rand650.pt')
