"""The README and the docs pages: every relative link resolves, the README stays one
screen's worth of reading with the result and the Quick start at its top, and its commands
run as written."""
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import random_corpus, run_main

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


def test_every_page_of_the_docs_is_linked_from_the_readme():
    """A reader who starts at the README can reach every page."""
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    linked = {(ROOT / target.partition('#')[0]).resolve() for target in LINK.findall(readme)}
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


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
    for package in ('pytest', 'pytest-xdist', 'matplotlib', 'ruff', 'gensim', 'nltk', 'onnx',
                    'onnxruntime'):
        assert package in install.split()
    assert 'python -m pytest -q tests' in readme  # the one-core command


def readme_commands(heading):
    """The command lines of the first bash block under `heading` in the README."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8').split(f'\n{heading}\n')[1]
    block = re.search(r'```bash\n(.*?)```', text, re.DOTALL)[1]
    return [line for line in block.splitlines() if line.strip()]


# Lines that install (they need a network, and this environment has what they install).
INSTALLS = ('python3 -m venv', 'pip install', 'bash getdata.sh')


def run_readme_line(line, variables):
    """One README command line, in this process: `python SCRIPT.py ...` through its main(),
    fed by `echo` or followed by `tail -N` in a pipe, and `NAME=value` assignments."""
    words = [re.sub(r'\$(\w+)', lambda m: variables[m[1]], w)
             for w in shlex.split(line, comments=True)]
    if len(words) == 1 and '=' in words[0]:
        name, value = words[0].split('=', 1)
        variables[name] = value
        return None
    stages = [[]]
    for word in words:
        stages[-1].append(word) if word != '|' else stages.append([])
    stdin, proc = sys.stdin, None
    for stage in stages:
        if stage[0] == 'echo':
            sys.stdin = io.TextIOWrapper(io.BytesIO((' '.join(stage[1:]) + '\n').encode()))
        elif stage[0] == 'tail':
            proc.stdout = ''.join(proc.stdout.splitlines(keepends=True)[-int(stage[1][1:]):])
        else:
            assert stage[:1] == ['python'] and stage[1].endswith('.py'), f'cannot run: {line}'
            try:
                proc = run_main(stage[1], *stage[2:])
            finally:
                sys.stdin = stdin
    return proc


def test_the_quick_start_and_the_generating_examples_run_as_written(tmp_path, monkeypatch):
    """The README's Quick start, then its generating and scoring examples, in order, in a
    folder whose data/penn holds a tiny corpus, as getdata.sh would leave PTB: each command
    but the installs runs exactly as printed, and succeeds."""
    random_corpus(tmp_path / 'data' / 'penn', ['the', 'company', 'said', 'it', 'would', 'buy',
                                              'stock', 'shares', 'of', 'a', 'new', 'plan',
                                              'for', 'its', 'unit'],
                  lines=(240, 30, 30), length=(4, 12))
    monkeypatch.chdir(tmp_path)
    variables, ran = {}, []
    for line in [*readme_commands('## Quick start'),
                 *readme_commands('## Generating and scoring text')]:
        if line.startswith(INSTALLS):
            continue
        proc = run_readme_line(line, variables)
        if proc is not None:
            assert proc.returncode == 0, f'{line}\n{proc.stderr}'
            assert proc.stdout.strip(), line
            ran.append(proc.args[0])
    assert ran[:3] == ['demo_tie.py', 'generate.py', 'score.py'] and len(ran) >= 8
    assert (tmp_path / 'runs' / 'tied_200.pt').exists()
