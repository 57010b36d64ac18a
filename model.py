"""An LSTM language model whose output layer can share its weights with the embedding.

Weight tying (Press & Wolf 2016; Inan et al. 2016): the decoder `fc` maps a hidden state to
one score per word with a (vocab_size x hidden_size) matrix, the same shape as the
embedding's (vocab_size x embed_size) when embed_size == hidden_size. Using one matrix for
both removes vocab_size x hidden_size parameters and usually lowers perplexity.
"""
import torch
import torch.nn.functional as F
from torch import nn

# The regularisers that are arguments of the model, with their "off" values, Press & Wolf's
# projection, whose penalty (--proj_reg) makes their projection regularisation, and Inan et
# al.'s decoder without a bias. A checkpoint's model description names those that are on
# (alpha, beta and proj_reg act on the loss only).
MODEL_REGULARIZERS = {'variational': False, 'dropouti': None, 'dropouth': None, 'dropoute': 0.0,
                      'wdrop': 0.0, 'dropout_recurrent': 0.0, 'projection': False,
                      'decoder_bias': True}


def tied_size_problem(tied, embed_size, hidden_size, projection=False):
    """Why these sizes cannot be tied ('' when they can): one matrix cannot be both, unless
    a projection maps the LSTM's output to the embedding's size."""
    if tied and embed_size != hidden_size and not projection:
        return (f'--tied needs --embed_size equal to --hidden_size '
                f'(got {embed_size} and {hidden_size}), or --projection')
    return ''


class LSTMLanguageModel(nn.Module):
    """Embedding -> LSTM -> decoder, with the reference's dropout (rate `dropout`) on the
    embedding output, between LSTM layers and on the LSTM output.

    The other arguments are opt-in regularisers from AWD-LSTM (Merity et al. 2017), all off
    by default, none adding a parameter:
      variational  one dropout mask per sequence, shared across time steps ("locked"),
                   at the same three places; the LSTM then runs layer by layer so that a
                   mask can go between layers (same weights, other parameter names)
      dropouti     rate on the embedding output (default: `dropout`)
      dropouth     rate between LSTM layers (default: `dropout`)
      dropoute     whole words dropped from the embedding matrix
      wdrop        DropConnect on the hidden-to-hidden weights: one mask per window
      dropout_recurrent  Inan et al.'s dropout of the hidden state (Gal & Ghahramani's, with
                   their tying): each layer draws one mask per row for the whole window, and
                   drops with it h(t-1) where the recurrence reads it and h(t) where the next
                   layer (or the decoder) reads it; it replaces the between-layer and output
                   dropout. The LSTM then steps through time in training (lstm_steps);
                   evaluation runs the fused kernel
    and `projection`, a linear layer (with a bias) from the LSTM's output to `embed_size`
    before the decoder (Press & Wolf), which lets a tied model have any two sizes, and
    `decoder_bias` False, a decoder without a bias (Inan et al.'s reused embeddings, whose
    output bias is zero).
    """

    def __init__(self, vocab_size, embed_size, hidden_size, num_layers, dropout, tied, *,
                 variational=False, dropouti=None, dropouth=None, dropoute=0.0, wdrop=0.0,
                 dropout_recurrent=0.0, projection=False, decoder_bias=True):
        super().__init__()
        problem = tied_size_problem(tied, embed_size, hidden_size, projection)
        if problem:
            raise ValueError(problem)
        self.dropouti = dropout if dropouti is None else dropouti
        self.dropouth = dropout if dropouth is None else dropouth
        self.dropoute, self.wdrop, self.variational = dropoute, wdrop, variational
        self.dropout_recurrent = dropout_recurrent
        self.embedding = nn.Embedding(vocab_size, embed_size)
        if variational or dropout_recurrent:
            self.lstm = nn.ModuleList(
                nn.LSTM(embed_size if k == 0 else hidden_size, hidden_size, 1, batch_first=True)
                for k in range(num_layers))
        else:
            # nn.LSTM's dropout acts between layers only, so a 1-layer LSTM takes none.
            self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True,
                                dropout=self.dropouth if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        # Press & Wolf's projection P: logits = (h P + b_P) V^T + b
        self.projection = nn.Linear(hidden_size, embed_size) if projection else None
        self.fc = nn.Linear(embed_size if projection else hidden_size, vocab_size,
                            bias=decoder_bias)
        self.num_layers, self.hidden_size, self.tied = num_layers, hidden_size, tied
        self.sparse_tied_grad = True  # see forward(); DistributedDataParallel turns it off

        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if decoder_bias:
            nn.init.zeros_(self.fc.bias)
        if projection:
            nn.init.uniform_(self.projection.weight, -0.1, 0.1)
            nn.init.zeros_(self.projection.bias)
        if tied:
            self.fc.weight = self.embedding.weight  # one Parameter, two uses
        else:
            nn.init.uniform_(self.fc.weight, -0.1, 0.1)

    def forward(self, x, hidden, with_outputs=False):
        """x: (batch, time) word ids -> logits (batch, time, vocab), new hidden state; with
        `with_outputs`, also the last LSTM layer's output (batch, time, hidden) before and
        after its dropout, for activation regularisation."""
        # Tied, the shared matrix gets a dense gradient from the decoder anyway; the
        # embedding's share touches only this window's rows, so on a CPU it is handed over
        # sparse and added row by row instead of as a second dense, mostly-zero matrix (the
        # same gradient, in less time: docs/performance.md). On a GPU the dense way costs
        # microseconds, and sparse gradients would make it wait for the device each step.
        sparse = self.tied and self.sparse_tied_grad and x.device.type == 'cpu'
        emb = F.embedding(x, self.embedding.weight, sparse=sparse)
        if self.dropoute and self.training:
            emb = emb * word_mask(self.embedding.num_embeddings, self.dropoute, emb)[x]
        if self.dropout_recurrent and self.training:
            output, dropped, hidden = self._lstm_recurrent_dropout(emb, hidden)
        elif self.variational or self.dropout_recurrent:
            output, hidden = self._lstm_layer_by_layer(emb, hidden)
            dropped = locked_dropout(output, self.dropout.p, self.training)
        else:
            emb = F.dropout(emb, self.dropouti, self.training)
            output, hidden = run_lstm(self.lstm, emb, hidden, self.wdrop if self.training else 0.0)
            dropped = self.dropout(output)
        logits = self.fc(dropped if self.projection is None else self.projection(dropped))
        if with_outputs:
            return logits, hidden, output, dropped
        return logits, hidden

    def _lstm_layer_by_layer(self, emb, hidden):
        """The LSTM under --variational: a locked dropout mask on each layer's input."""
        wdrop = self.wdrop if self.training else 0.0
        layer_input, rate, states = emb, self.dropouti, []
        for k, lstm in enumerate(self.lstm):
            layer_input = locked_dropout(layer_input, rate, self.training)
            layer_input, state = run_lstm(lstm, layer_input, (hidden[0][k:k + 1],
                                                              hidden[1][k:k + 1]), wdrop)
            states.append(state)
            rate = self.dropouth
        h, c = zip(*states)
        return layer_input, (torch.cat(h), torch.cat(c))

    def _lstm_recurrent_dropout(self, emb, hidden):
        """The LSTM under --dropout_recurrent, in training: (last layer's output, the same
        dropped, new state). Each layer's mask drops both its h(t-1) and its output."""
        p, wdrop = self.dropout_recurrent, self.wdrop
        if self.variational:
            layer_input = locked_dropout(emb, self.dropouti, True)
        else:
            layer_input = F.dropout(emb, self.dropouti, True)
        states = []
        for k, lstm in enumerate(self.lstm):
            mask = emb.new_empty(emb.size(0), self.hidden_size).bernoulli_(1 - p).div_(1 - p)
            output, state = lstm_steps(lstm, layer_input, (hidden[0][k], hidden[1][k]), mask,
                                       wdrop)
            states.append(state)
            layer_input = output * mask.unsqueeze(1)
        h, c = zip(*states)
        return output, layer_input, (torch.stack(h), torch.stack(c))

    def init_hidden(self, batch_size):
        weight = self.fc.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        return (weight.new_zeros(shape), weight.new_zeros(shape))


def init_uniform(model, init_range):
    """Zaremba et al.'s initialisation, as Press & Wolf's TensorFlow code has it: every
    parameter uniform in +-init_range, except the LSTM's biases, which start at 0 (TensorFlow's
    LSTM cell sets its own). Returns the model."""
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied matrix is listed once
            if name.startswith('lstm.') and name.rsplit('.', 1)[-1].startswith('bias'):
                p.zero_()
            else:
                p.uniform_(-init_range, init_range)
    return model


def locked_dropout(x, p, training):
    """Variational dropout of x (batch, time, features): each sequence draws one mask and
    keeps it for every time step (Gal & Ghahramani 2016)."""
    if not training or p == 0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


def lstm_steps(lstm, x, hidden, mask, wdrop=0.0):
    """A one-layer `lstm` (nn.LSTM's weights and gate order i, f, g, o) over x (batch, time,
    input), one step at a time, with h(t-1) multiplied by `mask` (batch, hidden) where the
    recurrence reads it: what the fused kernel cannot do. The input's share of every gate is
    one product for the whole window; each step adds the recurrent product. `hidden`: (h, c),
    each (batch, hidden). Returns the output (batch, time, hidden) and (h, c)."""
    w_hh = dropconnect(lstm.weight_hh_l0, wdrop) if wdrop else lstm.weight_hh_l0
    from_input = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    recurrent = w_hh.t()
    h, c = hidden
    outputs = []
    for t in range(x.size(1)):
        gates = torch.addmm(from_input[:, t], h * mask, recurrent)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, 1), (h, c)


def word_mask(vocab_size, p, like):
    """Embedding dropout: (vocab_size, 1), zero for the words dropped from this window (every
    occurrence of them), 1/(1-p) for the rest. Indexed by the window's ids and multiplied
    into their embeddings, it drops rows of the matrix without touching the whole matrix,
    so the embedding's gradient can stay sparse."""
    return like.new_empty(vocab_size, 1).bernoulli_(1 - p) / (1 - p)


def run_lstm(lstm, x, hidden, wdrop):
    """`lstm` on x with DropConnect at rate `wdrop` on its hidden-to-hidden weights: one mask
    per call, so the same dropped weights act at every time step. The dropped weights are
    passed in with torch.func.functional_call, so the module keeps its own parameters and
    runs its usual fused kernel."""
    if not wdrop:
        return lstm(x, hidden)
    dropped = {name: dropconnect(getattr(lstm, name), wdrop)
               for name in (f'weight_hh_l{k}' for k in range(lstm.num_layers))}
    return torch.func.functional_call(lstm, dropped, (x, hidden))


def dropconnect(weight, p):
    """`weight` with each entry zeroed with probability p and the rest scaled by 1/(1-p): what
    F.dropout(weight, p) computes, from a uniform draw rather than bernoulli_, which is slower
    on a CPU (measured in docs/performance.md)."""
    return weight * torch.rand_like(weight).ge_(p).mul_(1 / (1 - p))


def lstm_parameters(embed_size, hidden_size, num_layers):
    """The LSTM's parameters alone, from the sizes: 4 gates of (input + hidden + 2 biases)."""
    first = 4 * hidden_size * (embed_size + hidden_size + 2)
    return first + (num_layers - 1) * 4 * hidden_size * (2 * hidden_size + 2)


def count_parameters(model):
    """Parameters counted once each: a tied matrix is one Parameter, so it counts once."""
    return sum(p.numel() for p in model.parameters())


def detach_hidden(hidden):
    """Cut the graph between windows (truncated BPTT) while keeping the state's values."""
    return tuple(h.detach() for h in hidden)


MODEL_ARGS = ('vocab_size', 'embed_size', 'hidden_size', 'num_layers', 'dropout', 'tied')


def model_args(args, vocab_size):
    """The model's description, as LSTMLanguageModel's arguments. Regularisers appear only
    when set, so a reference model's description is the reference's."""
    described = {'vocab_size': vocab_size, **{k: getattr(args, k) for k in MODEL_ARGS[1:]}}
    described.update({k: getattr(args, k) for k, off in MODEL_REGULARIZERS.items()
                      if getattr(args, k, off) != off})
    return described


def build(described):
    """The model a description (model_args, or a checkpoint's `model_args`) gives, with
    fresh weights."""
    return LSTMLanguageModel(**{k: described[k] for k in MODEL_ARGS},
                             **{k: described[k] for k in MODEL_REGULARIZERS if k in described})
