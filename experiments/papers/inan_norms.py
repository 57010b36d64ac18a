"""The lengths of <sos>'s and <eos>'s vectors in a tied model's embedding, beside the median
word's, and their decoder biases: where the augmented loss with y~ held constant goes wrong.

    python experiments/papers/inan_norms.py runs/papers/inan_grid_re.last.pt ...
"""
import sys

import torch

print('| run | epoch | length of `<sos>` | of `<eos>` | median word | bias of `<sos>` '
      '| of `<eos>` |')
print('| --- | --- | --- | --- | --- | --- | --- |')
for path in sys.argv[1:]:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    vocab, state = checkpoint['vocab'], checkpoint['model_state']
    lengths, bias = state['embedding.weight'].norm(dim=1), state['fc.bias']
    sos, eos = vocab.index('<sos>'), vocab.index('<eos>')
    name = path.rsplit('/', 1)[-1].removesuffix('.pt').removesuffix('.last')
    print(f"| {name} | {checkpoint['epoch']} | {lengths[sos]:.1f} | {lengths[eos]:.1f} | "
          f'{lengths.median():.2f} | {bias[sos]:.1f} | {bias[eos]:.1f} |')
