"""Opt-in regularisers (AWD-LSTM's, Merity et al. 2017) and named recipes that set them.

Every flag here is off by default, so `python demo_tie.py --tied` trains the reference's
model exactly. A recipe is a set of flag values, printed at start so the run can be repeated
from its log; flags given on the command line override it:

    python demo_tie.py --tied --recipe regularized
    python demo_tie.py --tied --recipe regularized --wdrop 0.3

None of them adds a parameter: the tied 2x650 model has 13,281,702 with or without them.
"""
import argparse

from options import non_negative_float, positive_int, probability

RECIPES = {
    'reference': {},
    # AWD-LSTM's published Penn Treebank settings (Merity et al. 2017, and the command in
    # their repository's README), kept with the reference's Adam and schedule; not re-tuned
    # for 2x650 here (docs/results.md says what was measured).
    'regularized': {'variational': True, 'dropout': 0.4, 'dropouti': 0.4, 'dropouth': 0.25,
                    'dropoute': 0.1, 'wdrop': 0.5, 'alpha': 2.0, 'beta': 1.0,
                    'variable_bptt': True},
}

# The regularisers that are arguments of the model, with their "off" values. A checkpoint's
# model description names those that are on (alpha and beta act on the loss only).
MODEL_REGULARIZERS = {'variational': False, 'dropouti': None, 'dropouth': None, 'dropoute': 0.0,
                      'wdrop': 0.0}


def add_regularizer_flags(parser):
    group = parser.add_argument_group('regularisers (beyond the reference; all off by default)')
    group.add_argument('--recipe', choices=sorted(RECIPES), default='reference',
                       help='A named set of the flags below; flags given override it')
    group.add_argument('--variational', action=argparse.BooleanOptionalAction,
                       default=MODEL_REGULARIZERS['variational'],
                       help='Locked dropout: one mask per sequence, shared across time steps, on '
                            'the embedding output, between LSTM layers and on the LSTM output')
    group.add_argument('--dropouti', type=probability, default=MODEL_REGULARIZERS['dropouti'],
                       help='Dropout on the embedding output (default: --dropout)')
    group.add_argument('--dropouth', type=probability, default=MODEL_REGULARIZERS['dropouth'],
                       help='Dropout between LSTM layers (default: --dropout)')
    group.add_argument('--dropoute', type=probability, default=MODEL_REGULARIZERS['dropoute'],
                       help='Embedding dropout: whole words dropped from the embedding matrix')
    group.add_argument('--wdrop', type=probability, default=MODEL_REGULARIZERS['wdrop'],
                       help="Weight drop: DropConnect on the LSTM's hidden-to-hidden weights")
    group.add_argument('--alpha', type=non_negative_float, default=0.0,
                       help="Activation regularisation (AR): weight of the last layer's mean "
                            'squared output after dropout')
    group.add_argument('--beta', type=non_negative_float, default=0.0,
                       help='Temporal activation regularisation (TAR): weight of the mean squared '
                            "change of the last layer's output from one step to the next")
    group.add_argument('--variable_bptt', action=argparse.BooleanOptionalAction, default=False,
                       help='Windows of random length around --seq_length, drawn anew each epoch, '
                            'with the learning rate scaled by length / --seq_length')


def add_optimizer_flags(parser):
    group = parser.add_argument_group('optimiser (beyond the reference; Adam by default)')
    group.add_argument('--optimizer', choices=('adam', 'sgd', 'ntasgd'), default='adam',
                       help="adam: the reference's. sgd: plain SGD (give it an --lr of its own; "
                            'AWD-LSTM uses 30 with --clip 0.25). ntasgd: SGD, then the mean of '
                            'the weights from the epoch that --nonmono picks on (validation, the '
                            'best checkpoint and the test use that mean)')
    group.add_argument('--nonmono', type=positive_int, default=5,
                       help='ntasgd starts averaging at the first epoch whose validation loss is '
                            'worse than the best of the epochs before the last --nonmono ones')
    group.add_argument('--schedule', choices=('plateau', 'cosine'), default='plateau',
                       help="plateau: the reference's (--lr_factor after --lr_patience epochs "
                            'without improvement). cosine: from --lr down to 0 over --epochs, '
                            'step by step')
    group.add_argument('--warmup', type=non_negative_float, default=0.0, metavar='EPOCHS',
                       help='Raise the learning rate linearly from near 0 to --lr over the first '
                            'EPOCHS epochs (fractions allowed), step by step, under either '
                            'schedule')


def apply_recipe(args, given):
    """Set the recipe's flags that were not given on the command line."""
    for name, value in RECIPES[args.recipe].items():
        if name not in given:
            setattr(args, name, value)


def describe_recipe(args):
    """The recipe's flags as this run has them, for the log ('' for the reference)."""
    values = {name: getattr(args, name) for name in RECIPES[args.recipe]}
    return ' '.join(f'--{name}' if value is True else f'--no-{name}' if value is False
                    else f'--{name} {value}' for name, value in values.items())
