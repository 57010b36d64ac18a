"""Draw validation perplexity against epoch and against training time from demo_tie.py's CSVs.

    python plot.py runs/tied_200.csv runs/untied_200.csv -o tied_vs_untied.png
    cd docs/runs && python ../../plot.py ref40/ref40.csv regularized/regularized.csv --reference \
        -o recipe.png

One line per CSV, labelled with the file's name (or --label). --epoch_only leaves out the time
panel, for runs timed on different machines. Needs matplotlib (pip install matplotlib),
which nothing else in the project uses.
"""
import argparse
import csv
import os
import sys

from lm import UserError

REQUIRED = ('epoch', 'val_ppl', 'seconds')
# The validation perplexities the reference README prints (2x650 tied, its defaults, a GPU).
REFERENCE_POINTS = {1: 217.7246, 2: 167.3639, 40: 77.9963}


class CurveError(UserError):
    pass


def read_curve(path):
    """(epochs, validation perplexities, cumulative seconds) of one metrics CSV."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise CurveError(f'cannot read {path}: {getattr(e, "strerror", None) or e}') from None
    if not rows or any(c not in rows[0] for c in REQUIRED):
        raise CurveError(f'{path} is not a metrics CSV from demo_tie.py '
                         f'(it needs the columns {", ".join(REQUIRED)} and at least one row)')
    epochs, ppl, clock, elapsed = [], [], [], 0.0
    for line, row in enumerate(rows, start=2):
        try:
            epochs.append(int(row['epoch']))
            ppl.append(float(row['val_ppl']))
            elapsed += float(row['seconds'])
        except (TypeError, ValueError):
            raise CurveError(f'{path}, line {line}: malformed row') from None
        clock.append(elapsed)
    return epochs, ppl, clock


def labels(paths):
    """Each CSV's name without .csv; with its folder when two CSVs share a name."""
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return [os.path.join(os.path.basename(os.path.dirname(os.path.abspath(p))), name)
            if names.count(name) > 1 else name for p, name in zip(paths, names)]


def build_parser():
    parser = argparse.ArgumentParser(
        description='Plot validation perplexity curves',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('csv', nargs='+', help='metrics CSVs written by demo_tie.py')
    parser.add_argument('-o', '--output', default='curves.png',
                        help='image to write (PNG, SVG, PDF)')
    parser.add_argument('--reference', action='store_true',
                        help="mark the reference README's published points (epochs 1, 2 and 40)")
    parser.add_argument('--epoch_only', action='store_true',
                        help='draw only the by-epoch panel (for runs timed on different machines, '
                             'whose training times do not compare)')
    parser.add_argument('--label', action='append', default=None, metavar='NAME',
                        help='legend name of each CSV, in order (default: the file name, with '
                             'its folder where two files share a name)')
    return parser


def draw(plt, curves, epoch_only, reference):
    """The figure: validation perplexity by epoch and, unless epoch_only, by training time.
    `curves` is a list of (label, (epochs, perplexities, cumulative seconds))."""
    from matplotlib.ticker import FuncFormatter, LogLocator
    if epoch_only:
        fig, by_epoch = plt.subplots(figsize=(6, 4.2))
        panels = [by_epoch]
    else:
        fig, panels = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        by_epoch, by_time = panels
        by_time.set_xlabel('training time (minutes, cumulative)')
    for label, (epochs, ppl, clock) in curves:
        by_epoch.plot(epochs, ppl, marker='o', label=label)
        if not epoch_only:
            by_time.plot([s / 60 for s in clock], ppl, marker='o', label=label)
    if reference:
        by_epoch.plot(list(REFERENCE_POINTS), list(REFERENCE_POINTS.values()), 'k*', markersize=11,
                      linestyle='none', label='reference README (epochs 1, 2, 40)')
        by_epoch.axhline(REFERENCE_POINTS[40], color='k', linewidth=0.8, linestyle=':')
    by_epoch.set_xlabel('epoch')
    by_epoch.set_ylabel('validation perplexity (log scale)')
    for ax in panels:
        ax.set_yscale('log')  # perplexity falls fast early, slowly later: log keeps both readable
        plain = FuncFormatter(lambda value, _: f'{value:g}')  # 140, not 1.4 x 10^2
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        # curves often span less than a decade: label 120, 150, 250 too, not only 200, 300
        ax.yaxis.set_minor_locator(LogLocator(subs=(1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.label is not None and len(args.label) != len(args.csv):
        parser.error(f'{len(args.label)} --label for {len(args.csv)} CSVs; give one for each')
    try:
        curves = [(label, read_curve(p)) for label, p in zip(args.label or labels(args.csv),
                                                                args.csv)]
    except CurveError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: plot.py needs matplotlib: pip install matplotlib', file=sys.stderr)
        return 1
    fig = draw(plt, curves, args.epoch_only, args.reference)
    try:
        fig.savefig(args.output, dpi=120)
    except (OSError, ValueError) as e:
        print(f'error: cannot write {args.output}: {e}', file=sys.stderr)
        return 1
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
