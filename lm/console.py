"""What every script shows on stderr besides its output: progress bars, notes and warnings,
from the first process only (under torchrun the others keep quiet: `shown`)."""
import sys

from tqdm import tqdm


def progress(total, desc, *, shown=True, hide_below=0, unit='it', leave=False, **kw):
    """A progress bar on stderr, gone when done unless `leave`; hidden where not `shown`, or
    for fewer than `hide_below` steps, which pass too quickly to wait for."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not shown or total < hide_below,
                leave=leave, unit=unit, unit_scale=unit != 'it', dynamic_ncols=True, **kw)


def say(line, shown=True):
    if shown:
        print(line, file=sys.stderr, flush=True)


def warn(message, shown=True):
    say(f'warning: {message}', shown)
