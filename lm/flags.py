"""Every flag of the trainer, declared once: its type, default and help, and what becomes of it
under --resume and --finetune. The parser (`build_parser`), the resume and fine-tune rules
(lm.resume) and the flags table of docs/training.md (`python -m lm.flags` prints it) are all
made from FLAGS. Also the rules between flags (check_combinations), the value types the other
scripts share, and the flags they share (--checkpoint, the device flags, their --amp).

Each type refuses what would fail later, or silently do nothing: argparse then prints a
one-line message naming the flag, instead of a traceback hours into a run.
"""
import argparse
import copy
import math
import sys
from dataclasses import dataclass

import torch

from data import SPECIALS
from lm.recipes import RECIPES
from model import MODEL_REGULARIZERS, tied_size_problem


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


# A trainer flag's number goes into float32 tensors: beyond this range it becomes inf or 0
# there, and the run can only diverge (--al_weight 1e300, --al_temperature 1e-300).
FLOAT32_MAX, FLOAT32_TINY = (float(torch.finfo(torch.float32).max),
                             float(torch.finfo(torch.float32).tiny))


def in_float32(parse):
    """`parse`, refusing a non-zero number that float32 cannot hold."""
    def parse_float32(text):
        value = parse(text)
        if isinstance(value, float) and value and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
            raise argparse.ArgumentTypeError(
                f'{text} is beyond float32, the precision the model computes in '
                f'(from {FLOAT32_TINY:.1e} to {FLOAT32_MAX:.1e})')
        return value
    return parse_float32


positive_int = checked_number(int, lambda v: v > 0, 'a positive integer')
non_negative_int = checked_number(int, lambda v: v >= 0, 'an integer >= 0')
positive_float = checked_number(float, lambda v: v > 0, 'a number > 0')
non_negative_float = checked_number(float, lambda v: v >= 0, 'a number >= 0')
probability = checked_number(float, lambda v: 0 <= v < 1, 'a probability in [0, 1)')
factor = checked_number(float, lambda v: 0 < v < 1, 'a factor in (0, 1)')
# Zaremba's and Press & Wolf's ranges are 0.04 to 0.1; past 1 the LSTM starts saturated
init_scale = checked_number(float, lambda v: 0 < v <= 1, 'a range in (0, 1]')
# torch.manual_seed takes at most 64 bits; numpy's seed is taken modulo 2**32.
seed_value = checked_number(int, lambda v: 0 <= v < 2**63, 'a seed in [0, 2**63)')

# What --resume does with a flag (the `resume` of a Flag), as the docs' table says it:
RESUME_RULES = {
    'fixed': 'from the checkpoint; another value is refused',
    'changeable': 'from the checkpoint unless given; a new value applies from the next window',
    'layout': 'as changeable, but only between epochs',
    'ignored': 'ignored: the random state continues from the checkpoint',
    'command': "this command's",
}
NOT_SET = object()  # a Flag's `before`: the flag has been in every checkpoint
REGULARISERS = 'regularisers (beyond the reference; all off by default)'
OPTIMISER = 'optimiser (beyond the reference; Adam by default)'


@dataclass(frozen=True)
class Flag:
    name: str
    default: object
    help: str
    type: object = None          # a value type above, or str; None for switches
    switch: str = None           # 'store_true', or 'on/off' (--x and --no-x)
    choices: tuple = None
    resume: str = 'command'      # a key of RESUME_RULES
    from_model: bool = False     # under --finetune: the trained model's value unless given
    before: object = NOT_SET     # what checkpoints made before the flag existed had
    group: str = None            # the --help section, REGULARISERS or OPTIMISER
    metavar: str = None
    optional_value: bool = False  # --resume alone, or --resume PATH
    shown: str = None            # the default as the docs' table says it, where not the value

    def add_to(self, parser):
        kw = {'default': self.default, 'help': self.help}
        if self.switch == 'store_true':
            kw['action'] = 'store_true'
        elif self.switch == 'on/off':
            kw['action'] = argparse.BooleanOptionalAction
        else:
            kw.update(type=self.type if self.type in (str, None) else in_float32(self.type),
                      choices=self.choices, metavar=self.metavar)
            if self.optional_value:
                kw.update(nargs='?', const='')
        parser.add_argument(f'--{self.name}', **{k: v for k, v in kw.items() if v is not None
                                                  or k == 'default'})


def _rate_of(name, what):
    default = MODEL_REGULARIZERS[name]
    return Flag(name, default, what, probability, resume='changeable', from_model=True,
                group=REGULARISERS, shown='`--dropout`' if default is None else None)


FLAGS = [
    # The reference's fifteen, with its names, defaults and help texts.
    Flag('data_dir', './data/penn/', 'Directory containing train.txt, valid.txt, test.txt', str),
    Flag('batch_size', 20, 'Batch size', positive_int, resume='layout', from_model=True),
    Flag('embed_size', 650, 'Embedding size', positive_int, resume='fixed', from_model=True),
    Flag('hidden_size', 650, 'Hidden size of LSTM', positive_int, resume='fixed',
         from_model=True),
    Flag('num_layers', 2, 'Number of LSTM layers', positive_int, resume='fixed',
         from_model=True),
    Flag('dropout', 0.5, 'Dropout probability', probability, resume='changeable',
         from_model=True),
    Flag('lr', 0.001, 'Learning rate', positive_float, resume='changeable'),
    Flag('epochs', 40, 'Number of training epochs', positive_int, resume='changeable'),
    Flag('clip', 5.0, 'Gradient clipping', positive_float, resume='changeable'),
    Flag('seq_length', 30, 'Sequence length', positive_int, resume='layout', from_model=True),
    Flag('save_path', 'best_model.pt', 'Path to save the best model', str),
    Flag('weight_decay', 1e-5, 'Weight decay (L2 regularization)', non_negative_float,
         resume='changeable'),
    Flag('lr_factor', 0.5, 'Factor by which the learning rate will be reduced', factor,
         resume='changeable'),
    Flag('lr_patience', 2, 'Number of epochs with no improvement after which learning rate '
         'will be reduced', non_negative_int, resume='changeable'),
    Flag('tied', False, 'Enable weight tying', switch='store_true', resume='fixed',
         from_model=True),
    # Beyond the reference:
    Flag('seed', 1111, 'Random seed (torch, numpy, random)', seed_value, resume='ignored'),
    Flag('device', 'auto', 'auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps', str),
    Flag('threads', None, 'CPU threads for PyTorch (default: one for each core that other work '
         "leaves free at start, at most PyTorch's one per core; OMP_NUM_THREADS, where set)",
         positive_int, shown='the free cores'),
    Flag('resume', None, 'Continue training from a last checkpoint; without PATH, the one '
         'beside --save_path (best_model.pt -> best_model.last.pt)', str, metavar='PATH',
         optional_value=True),
    Flag('max_vocab', 0, 'Keep at most this many words in the vocabulary, specials and <unk> '
         'included, the most frequent first; the rest become <unk> (0: no limit)',
         non_negative_int, resume='fixed', from_model=True),
    Flag('min_count', 1, 'Words seen fewer times in train.txt become <unk>', positive_int,
         resume='fixed', from_model=True),
    Flag('finetune', None, "Start a new run from a trained model's weights (a best or last "
         'checkpoint), with its sizes, vocabulary, regularisers and layout (unless given) and '
         "this command's optimizer, --lr, schedule and --epochs: a finishing phase. With "
         "--optimizer ntasgd the weights are averaged from the first step, as in AWD-LSTM's "
         'finetune', str, metavar='PATH'),
    Flag('overwrite', False, 'Start afresh where an earlier run left its files at --save_path '
         '(they are deleted)', switch='store_true'),
    Flag('eval_only', False, 'Only print the validation and test results of the checkpoint at '
         '--save_path', switch='store_true'),
    Flag('amp', False, 'Mixed precision, float32 weights: on CUDA float16 autocast with loss '
         'scaling; on a CPU bfloat16 autocast where the model\'s matrix products measure '
         'faster in it at start-up', switch='store_true'),
    Flag('compile', False, 'torch.compile the model (first windows are slower while it '
         'compiles)', switch='store_true'),
    Flag('init_range', None, "Zaremba's initialisation, as in Press & Wolf's code: every "
         "parameter uniform in +-R, the LSTM's biases 0. Off: the embedding and decoder uniform "
         "in +-0.1, a zero decoder bias, PyTorch's own for the LSTM", init_scale,
         resume='fixed', before=None, metavar='R'),
    # The opt-in regularisers (AWD-LSTM's, Merity et al. 2017; lm.recipes names sets of them).
    Flag('recipe', 'reference', 'A named set of the flags below; flags given override it', str,
         choices=tuple(sorted(RECIPES)), resume='fixed', from_model=True,
         before='reference', group=REGULARISERS),
    Flag('variational', MODEL_REGULARIZERS['variational'], 'Locked dropout: one mask per '
         'sequence, shared across time steps, on the embedding output, between LSTM layers and '
         'on the LSTM output', switch='on/off', resume='fixed', from_model=True, before=False,
         group=REGULARISERS),
    _rate_of('dropouti', 'Dropout on the embedding output (default: --dropout)'),
    _rate_of('dropouth', 'Dropout between LSTM layers (default: --dropout)'),
    _rate_of('dropoute', 'Embedding dropout: whole words dropped from the embedding matrix'),
    _rate_of('wdrop', "Weight drop: DropConnect on the LSTM's hidden-to-hidden weights"),
    Flag('dropout_recurrent', MODEL_REGULARIZERS['dropout_recurrent'], "Inan et al.'s dropout "
         'of the hidden state: one mask per row and layer for the whole window, on h(t-1) where '
         'the recurrence reads it and on the output the next layer or the decoder reads '
         '(replacing --dropouth and the output dropout); the LSTM steps through time in '
         'training', probability, resume='fixed', from_model=True, before=0.0,
         group=REGULARISERS),
    Flag('alpha', 0.0, "Activation regularisation (AR): weight of the last layer's mean squared "
         'output after dropout', non_negative_float, resume='changeable', from_model=True,
         group=REGULARISERS),
    Flag('beta', 0.0, 'Temporal activation regularisation (TAR): weight of the mean squared '
         "change of the last layer's output from one step to the next", non_negative_float,
         resume='changeable', from_model=True, group=REGULARISERS),
    Flag('projection', MODEL_REGULARIZERS['projection'], 'A linear layer (with a bias) from '
         "the LSTM's output to --embed_size before the decoder (Press & Wolf's P), so that "
         '--tied takes any sizes',
         switch='store_true', resume='fixed', from_model=True, before=False, group=REGULARISERS),
    Flag('decoder_bias', MODEL_REGULARIZERS['decoder_bias'], "The decoder's bias; "
         "--no-decoder_bias leaves it out (Inan et al.'s reused embeddings: the output layer "
         'is the embedding, with a zero bias)', switch='on/off', resume='fixed',
         from_model=True, before=True, group=REGULARISERS),
    Flag('proj_reg', 0.0, "Press & Wolf's projection regularisation: this times the squared "
         "Frobenius norm of --projection's matrix, added to the loss", non_negative_float,
         resume='changeable', from_model=True, before=0.0, group=REGULARISERS),
    Flag('al_weight', 0.0, "Inan et al.'s augmented loss (AL): its weight alpha; the KL "
         'divergence from the target estimated by the input embedding to the tempered '
         'prediction (0: off)', non_negative_float, resume='changeable', from_model=True,
         before=0.0, group=REGULARISERS, metavar='ALPHA'),
    Flag('al_temperature', 10.0, "The augmented loss's temperature tau", positive_float,
         resume='changeable', from_model=True, before=10.0, group=REGULARISERS, metavar='TAU'),
    Flag('al_through_target', True, "Let the augmented loss's gradient reach the input "
         'embedding through the estimated target too; --no-al_through_target holds the '
         'target constant', switch='on/off', resume='changeable', from_model=True,
         before=False, group=REGULARISERS),
    Flag('variable_bptt', False, 'Windows of random length around --seq_length, drawn anew '
         'each epoch, with the learning rate scaled by length / --seq_length', switch='on/off',
         resume='layout', from_model=True, before=False, group=REGULARISERS),
    # The optimiser and its schedule (lm.optim).
    Flag('optimizer', 'adam', "adam: the reference's. sgd: plain SGD (give it an --lr of its "
         'own; AWD-LSTM uses 30 with --clip 0.25). ntasgd: SGD, then the mean of the weights '
         'from the epoch that --nonmono picks on (validation, the best checkpoint and the test '
         'use that mean)', str, choices=('adam', 'sgd', 'ntasgd'), resume='fixed',
         before='adam', group=OPTIMISER),
    Flag('nonmono', 5, 'ntasgd starts averaging at the first epoch whose validation loss is '
         'worse than the best of the epochs before the last --nonmono ones', positive_int,
         resume='changeable', group=OPTIMISER),
    Flag('schedule', 'plateau', "plateau: the reference's (--lr_factor after --lr_patience "
         'epochs without improvement). cosine: from --lr down to 0 over --epochs, step by step. '
         "step: Zaremba's, which both papers use: --lr_factor at the end of every epoch from "
         '--decay_start on', str, choices=('plateau', 'cosine', 'step'), resume='fixed',
         before='plateau', group=OPTIMISER),
    Flag('decay_start', 1, 'With --schedule step: the first epoch at whose end the rate is '
         'multiplied by --lr_factor', positive_int, resume='changeable', before=1,
         group=OPTIMISER, metavar='EPOCH'),
    Flag('early_stop', 0, 'End training once N epochs in a row have not bettered the best '
         'validation perplexity, and test the best model (0: off, every --epochs)',
         non_negative_int, resume='changeable', before=0, group=OPTIMISER, metavar='N'),
    Flag('warmup', 0.0, 'Raise the learning rate linearly from near 0 to --lr over the first '
         'EPOCHS epochs (fractions allowed), step by step, under either schedule',
         non_negative_float, resume='changeable', before=0.0, group=OPTIMISER, metavar='EPOCHS'),
]
BY_NAME = {flag.name: flag for flag in FLAGS}
REGULARIZER_FLAGS = [flag.name for flag in FLAGS if flag.group == REGULARISERS]


def names(**rule):
    """The flags whose fields have the given values: names(resume='fixed')."""
    return tuple(f.name for f in FLAGS if all(getattr(f, k) == v for k, v in rule.items()))


def build_parser():
    parser = argparse.ArgumentParser(description='LSTM Language Model on Penn Treebank',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(parser, [f.name for f in FLAGS])
    return parser


def add_flags(parser, wanted):
    """Add the flags named in `wanted` to `parser`, each in its --help section (bench.py
    takes the model's and the regularisers')."""
    groups = {}
    for name in wanted:
        flag = BY_NAME[name]
        target = parser
        if flag.group:
            if flag.group not in groups:
                groups[flag.group] = parser.add_argument_group(flag.group)
            target = groups[flag.group]
        flag.add_to(target)


def add_checkpoint_flag(parser, help='Checkpoint written by demo_tie.py (its --save_path)'):
    """--checkpoint, for the scripts that read a trained model."""
    parser.add_argument('--checkpoint', default='best_model.pt', help=help)


def add_device_flags(parser, amp=None):
    """--device, --cuda and --threads, for the scripts that run a trained model; with `amp`
    (what runs under autocast: 'Score', say), their --amp too."""
    add_flags(parser, ['device', 'threads'])
    parser.add_argument('--cuda', action='store_true',
                        help="Use CUDA: the reference's flag, the same as --device cuda")
    if amp:
        parser.add_argument('--amp', action='store_true',
                            help=f"{amp} under autocast where the trainer's --amp would "
                                 '(default: float32)')


# ------------------------------------------------------------------ the rules between flags

def check_combinations(parser, args, given):
    """Refuse, with argparse's one-line message, flags that cannot go together. On resume
    the sizes and the optimizer come from the checkpoint (lm.resume.settle_resume); under
    --finetune the sizes do."""
    fresh = args.resume is None and args.finetune is None
    if args.finetune is not None:
        check_finetune_combinations(parser, args)
    problem = tied_size_problem(args.tied, args.embed_size, args.hidden_size, args.projection)
    if problem and fresh:
        parser.error(problem)
    if args.proj_reg and not args.projection and fresh:
        parser.error('--proj_reg penalises the matrix of --projection; give --projection too')
    if args.schedule == 'step' and args.decay_start > args.epochs and args.resume is None:
        parser.error(f'--decay_start {args.decay_start} is after the last epoch (--epochs '
                     f'{args.epochs}): the rate would never decay')
    if args.optimizer != 'adam' and 'lr' not in given and args.resume is None:
        parser.error(f'--optimizer {args.optimizer} needs an --lr of its own: the default 0.001 '
                     "is Adam's and far too small for SGD (AWD-LSTM uses --lr 30 --clip 0.25)")
    if args.schedule == 'cosine' and {'lr_factor', 'lr_patience'} & given and args.resume is None:
        parser.error('--lr_factor and --lr_patience belong to --schedule plateau; the cosine '
                     'schedule takes the learning rate from --lr down to 0 over --epochs')
    if args.schedule == 'step' and 'lr_patience' in given and args.resume is None:
        parser.error('--lr_patience belongs to --schedule plateau; the step schedule multiplies '
                     'the rate by --lr_factor at the end of every epoch from --decay_start on')
    if 'decay_start' in given and args.schedule != 'step' and args.resume is None:
        parser.error('--decay_start belongs to --schedule step')
    if 0 < args.max_vocab < len(SPECIALS) + 2:
        parser.error(f'--max_vocab {args.max_vocab} leaves no room for words (the specials and '
                     '<unk> take 4 places); use 0 for no limit')


def check_finetune_combinations(parser, args):
    if args.resume is not None:
        parser.error('--finetune starts a new run from a trained model and --resume continues '
                     'a run: a stopped fine-tuning run resumes without --finetune')
    if args.eval_only:
        parser.error('--finetune trains; --eval_only evaluates the model at --save_path')
    if args.init_range is not None:
        parser.error('--init_range initialises a new model; --finetune starts from the trained '
                     "model's weights")


def explicit_flags(parser, argv):
    """The flags given on the command line (not left at their defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def shown_default(flag, default):
    """A flag's default, as the parser has it, the way the docs' table shows it."""
    if flag.shown is not None:
        return flag.shown
    if default is False or default is None:
        return 'off'
    return 'on' if default is True else f'`{default}`'


def markdown_table():
    """The flags table of docs/training.md, from the parser's own flags and the rules above."""
    parser = build_parser()
    rows = ['| flag | default | under `--resume` | under `--finetune` | meaning |',
            '| --- | --- | --- | --- | --- |']
    for action in parser._actions:
        if action.dest == 'help':
            continue
        flag = BY_NAME[action.dest]
        spelled = f'`--{flag.name}`' + (f' / `--no-{flag.name}`' if flag.switch == 'on/off'
                                        else '')
        finetune = "the model's unless given" if flag.from_model else ''
        help_text = action.help.replace('<unk>', '`<unk>`').replace('|', '/')
        rows.append(f'| {spelled} | {shown_default(flag, action.default)} | '
                    f'{RESUME_RULES[flag.resume]} | {finetune} | {help_text} |')
    return '\n'.join(rows)


if __name__ == '__main__':
    print(markdown_table())
    sys.exit(0)
