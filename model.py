"""An LSTM language model whose output layer can share its weights with the embedding.

Weight tying (Press & Wolf 2016; Inan et al. 2016): the decoder `fc` maps a hidden state to
one score per word with a (vocab_size x hidden_size) matrix, the same shape as the
embedding's (vocab_size x embed_size) when embed_size == hidden_size. Using one matrix for
both removes vocab_size x hidden_size parameters and usually lowers perplexity.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size, embed_size, hidden_size, num_layers, dropout, tied):
        super().__init__()
        if tied and embed_size != hidden_size:
            raise ValueError(f'weight tying needs embed_size == hidden_size '
                             f'(got {embed_size} and {hidden_size})')
        self.embedding = nn.Embedding(vocab_size, embed_size)
        # nn.LSTM's dropout acts between layers only, so a 1-layer LSTM takes none.
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, vocab_size)
        self.num_layers, self.hidden_size, self.tied = num_layers, hidden_size, tied
        self.sparse_tied_grad = True  # see forward(); DistributedDataParallel turns it off

        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)
        if tied:
            self.fc.weight = self.embedding.weight  # one Parameter, two uses
        else:
            nn.init.uniform_(self.fc.weight, -0.1, 0.1)

    def forward(self, x, hidden):
        """x: (batch, time) word ids -> logits (batch, time, vocab), new hidden state."""
        # Tied, the shared matrix gets a dense gradient from the decoder anyway; the
        # embedding's share touches only this window's rows, so on a CPU it is handed over
        # sparse and added row by row instead of as a second dense, mostly-zero matrix (same
        # gradient, about a tenth less time per step at 2x650). On a GPU the dense way costs
        # microseconds, and sparse gradients would make it wait for the device each step.
        sparse = self.tied and self.sparse_tied_grad and x.device.type == 'cpu'
        emb = self.dropout(F.embedding(x, self.embedding.weight, sparse=sparse))
        output, hidden = self.lstm(emb, hidden)
        return self.fc(self.dropout(output)), hidden

    def init_hidden(self, batch_size):
        weight = self.fc.bias
        shape = (self.num_layers, batch_size, self.hidden_size)
        return (weight.new_zeros(shape), weight.new_zeros(shape))


def count_parameters(model):
    """Parameters counted once each: a tied matrix is one Parameter, so it counts once."""
    return sum(p.numel() for p in model.parameters())


def detach_hidden(hidden):
    """Cut the graph between windows (truncated BPTT) while keeping the state's values."""
    return tuple(h.detach() for h in hidden)


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
