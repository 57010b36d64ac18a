"""Named recipes: sets of flag values for the opt-in regularisers (lm.flags declares them).

Every regulariser is off by default, so `python demo_tie.py --tied` trains the reference's
model exactly. A recipe is printed at start so the run can be repeated from its log; flags
given on the command line override it:

    python demo_tie.py --tied --recipe regularized
    python demo_tie.py --tied --recipe regularized --wdrop 0.3

None of them adds a parameter: the tied 2x650 model has 13,281,702 with or without them.
"""

RECIPES = {
    'reference': {},
    # AWD-LSTM's published Penn Treebank settings (Merity et al. 2017, and the command in
    # their repository's README), kept with the reference's Adam and schedule; not re-tuned
    # for 2x650 here (docs/results.md says what was measured).
    'regularized': {'variational': True, 'dropout': 0.4, 'dropouti': 0.4, 'dropouth': 0.25,
                    'dropoute': 0.1, 'wdrop': 0.5, 'alpha': 2.0, 'beta': 1.0,
                    'variable_bptt': True},
}


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
