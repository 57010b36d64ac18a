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


def test_the_readme_is_short_and_starts_with_the_result_and_the_quick_start():
    lines = (ROOT / 'README.md').read_text(encoding='utf-8').splitlines()
    assert len(lines) <= 250
    top = '\n'.join(lines[:60])
    assert '## Quick start' in top and '66.77' in top and '61.03' in top and '75.11' in top
    assert len(PAGES) - 1 >= 3
