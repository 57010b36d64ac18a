"""Print the tied-against-untied table of docs/results.md from the two runs' CSVs:

    python experiments/untied_650/table.py
"""
import csv
from pathlib import Path

RUNS = Path(__file__).resolve().parents[2] / 'docs' / 'runs'  # the runs' logs and CSVs


def by_epoch(path):
    with open(path, newline='') as f:
        return {int(row['epoch']): row for row in csv.DictReader(f)}


tied = by_epoch(RUNS / 'ref40' / 'ref40.csv')
untied = by_epoch(RUNS / 'untied_650' / 'untied.csv')
print('| epoch | tied: validation | without `<sos>` | untied: validation | without `<sos>` |')
print('| --- | --- | --- | --- | --- |')
for epoch in sorted(untied):
    cells = [f"{float(run[epoch][key]):.4f}" for run in (tied, untied)
             for key in ('val_ppl', 'val_ppl_no_sos')]
    print(f'| {epoch} | ' + ' | '.join(cells) + ' |')
