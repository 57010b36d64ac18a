"""The README and the docs pages: every relative link resolves, and the README stays one
screen's worth of reading with the result and the Quick start at its top."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def anchors(page):
    """GitHub's anchor of each heading: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in page.read_text(encoding='utf-8').splitlines():
        if line.startswith('#'):
            title = line.lstrip('#').strip().lower()
            found.add(re.sub(r'[^\w\- ]', '', title).replace(' ', '-'))
    return found


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    text = re.sub(r'```.*?```', '', page.read_text(encoding='utf-8'), flags=re.DOTALL)
    broken = []
    for target in LINK.findall(text):
        if re.match(r'[a-z]+:', target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or (anchor and resolved.suffix == '.md'
                                     and anchor not in anchors(resolved)):
            broken.append(target)
    assert not broken, f'{page.name}: broken links {broken}'


def test_the_readme_is_short_and_starts_with_the_quick_start():
    lines = (ROOT / 'README.md').read_text(encoding='utf-8').splitlines()
    assert len(lines) <= 250
    assert '## Quick start' in lines[:30]
    assert len(PAGES) - 1 >= 3


def logged_test_figures(folder):
    """(test perplexity, without <sos>) of every test block in the logs of `folder`."""
    found = set()
    for log in folder.glob('*.log'):
        text = log.read_text(encoding='utf-8')
        for ppl, no_sos in re.findall(r'^Test Loss: [\d.]+, Test Perplexity: ([\d.]+)\n'
                                      r'Test Loss without <sos>: [\d.]+, Test Perplexity '
                                      r'without <sos>: ([\d.]+)', text, re.MULTILINE):
            found.add((f'{float(ppl):.2f}', f'{float(no_sos):.2f}'))
    return found


def test_the_readmes_headline_figures_are_the_test_lines_of_the_logs_it_links():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    rows = [line for line in text.split('## Results')[1].split('\n## ')[0].splitlines()
            if line.startswith('|') and '](docs/runs/' in line]
    assert len(rows) >= 5
    for row in rows:
        cells = [cell.strip().strip('*') for cell in row.strip('|').split('|')]
        folder = ROOT / re.search(r'\]\((docs/runs/[^)]+)\)', row)[1]
        assert (cells[2], cells[3]) in logged_test_figures(folder), row


def test_the_documented_test_command_installs_what_the_tests_import():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    install = next(line for line in readme.splitlines()
                   if line.startswith('pip install') and 'pytest' in line)
    for package in ('pytest', 'pytest-xdist', 'matplotlib', 'ruff'):
        assert package in install.split()
    assert 'python -m pytest -q tests' in readme  # the one-core command
