"""Command-line value types shared by every script (trainer, generator, scorer, bench).

Each type refuses what would fail later, or silently do nothing: argparse then prints a
one-line message naming the flag, instead of a traceback hours into a run.
"""
import argparse
import copy
import math


def checked_number(kind, ok, what):
    def parse(text):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
        if not (ok(value) and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'{text} is not {what}')
        return value
    return parse


positive_int = checked_number(int, lambda v: v > 0, 'a positive integer')
non_negative_int = checked_number(int, lambda v: v >= 0, 'an integer >= 0')
positive_float = checked_number(float, lambda v: v > 0, 'a number > 0')
non_negative_float = checked_number(float, lambda v: v >= 0, 'a number >= 0')
probability = checked_number(float, lambda v: 0 <= v < 1, 'a probability in [0, 1)')
factor = checked_number(float, lambda v: 0 < v < 1, 'a factor in (0, 1)')
# torch.manual_seed takes at most 64 bits; numpy's seed is taken modulo 2**32.
seed_value = checked_number(int, lambda v: 0 <= v < 2**63, 'a seed in [0, 2**63)')


def explicit_flags(parser, argv):
    """The flags given on the command line (not left at their defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))
