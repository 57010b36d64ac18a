"""The machinery behind the scripts at the top level (demo_tie.py, generate.py, score.py,
bench.py, plot.py), each module one concern:

    flags        every trainer flag, declared once (parser, resume rules, the docs' table)
    recipes      named sets of the regulariser flags (--recipe regularized)
    loss         the training objective: cross-entropy and the opt-in terms, configured once
    loop         one epoch of truncated BPTT, evaluation, and the one token loss
    optim        the optimizer, its schedule, NT-ASGD's weight average
    trainer      the steps of a training run that demo_tie.py's loop calls
    checkpoint   the checkpoint format: built, read safely, checked, restored
    runfiles     a run's files beside --save_path: names, atomic writes, the lock, the claim
                 of the path, the metrics CSV
    resume       what a resume takes from its checkpoint and may change; how a run goes on
    rng          every random generator: seeded, captured and set back
    signals      how SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 stop a run
    console      progress bars, notes and warnings on stderr, from the first process only
    device       --device, --threads and --amp
    distributed  what differs under torchrun
    adapt        scores that adapt to the text: the neural cache, dynamic evaluation
    synth_corpus synthetic corpora, to time reading (python -m lm.synth_corpus)

Nothing here is imported before it is needed: lm.signals, which demo_tie.py imports before
PyTorch, imports nothing heavy.
"""


class UserError(Exception):
    """An error that ends a script with its one line (`error: ...`) and exit status 1: bad data,
    a checkpoint that cannot be used, a save path taken... Never a traceback."""
