"""Print Inan et al.'s small table as docs/papers.md shows it, from the four rows' CSVs and
logs, and each of the paper's claims with its figures:

    python experiments/papers/inan_table.py docs/runs/papers/inan2   # their own configuration
    python experiments/papers/inan_table.py docs/runs/papers/inan    # our first configuration

The rows are FOLDER/NAME_vd, _vd_al, _vd_re and _vd_real, NAME the folder's name. A row's
validation is its best epoch's (the trainer keeps the model of the lowest validation loss),
its test is that model's, both without <sos> (the papers' protocol); a row with no test yet
shows its last epoch.
"""
import csv
import re
import sys
from pathlib import Path

# The paper's small (2x200) rows, validation / test (Inan, Khosravi & Socher 2016, table 1).
PAPER = {'VD': (92.6, 87.3), 'VD + AL': (86.3, 82.9), 'VD + RE': (89.9, 85.1),
         'VD + REAL': (86.3, 82.7)}
SUFFIX = {'VD': 'vd', 'VD + AL': 'vd_al', 'VD + RE': 'vd_re', 'VD + REAL': 'vd_real'}
# The paper's claims: (lower, relation, higher).
CLAIMS = [('VD + RE', '<', 'VD'), ('VD + AL', '<', 'VD'), ('VD + REAL', '<', 'VD + RE'),
          ('VD + REAL', '<=', 'VD + AL')]
TEST = re.compile(r'Test Perplexity without <sos>: ([\d.]+)')


def row(folder, name):
    """(validation, test or None, epochs run) of one row, or None where it has not started."""
    path = folder / f'{name}.csv'
    if not path.exists():
        return None
    with open(path, newline='') as f:
        epochs = list(csv.DictReader(f))
    if not epochs:
        return None
    tests = TEST.findall((folder / f'{name}.log').read_text(encoding='utf-8'))
    if tests:  # the model tested is the best epoch's
        best = min(epochs, key=lambda e: float(e['val_loss']))
        return float(best['val_ppl_no_sos']), float(tests[-1]), len(epochs)
    return float(epochs[-1]['val_ppl_no_sos']), None, len(epochs)


def main(argv):
    folder = Path(argv[0]) if argv else Path('docs/runs/papers/inan2')
    rows = {label: row(folder, f'{folder.name}_{suffix}') for label, suffix in SUFFIX.items()}
    print('| small (200), validation / test | ' + ' | '.join(PAPER) + ' |')
    print('| --- |' + ' --- |' * len(PAPER))
    print('| the paper | ' + ' | '.join(f'{v} / {t}' for v, t in PAPER.values()) + ' |')
    cells = []
    for found in rows.values():
        if found is None:
            cells.append('not started')
        elif found[1] is None:
            cells.append(f'{found[0]:.2f} after epoch {found[2]} (under way)')
        else:
            cells.append(f'**{found[0]:.2f} / {found[1]:.2f}**')
    print(f'| ours ({folder.name}) | ' + ' | '.join(cells) + ' |')
    print()
    for label, (_, test) in PAPER.items():
        found = rows[label]
        if found and found[1] is not None:
            print(f'{label}: test {found[1] - test:+.2f} from the paper\'s {test}')
    for lower, relation, higher in CLAIMS:
        ours, theirs = rows[lower], rows[higher]
        if not (ours and theirs and ours[1] is not None and theirs[1] is not None):
            continue
        gaps = [ours[i] - theirs[i] for i in (0, 1)]
        paper = [PAPER[lower][i] - PAPER[higher][i] for i in (0, 1)]
        held = [g < 0 or (relation == '<=' and g == 0) for g in gaps]
        verdict = 'holds' if all(held) else 'does not hold' if not any(held) else \
            f'holds on {"validation" if held[0] else "test"} only'
        print(f'{lower} {relation} {higher} {verdict}: {gaps[0]:+.2f} / {gaps[1]:+.2f} '
              f'(the paper: {paper[0]:+.1f} / {paper[1]:+.1f})')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
