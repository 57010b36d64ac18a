#!/usr/bin/env bash
# Peak resident memory of a training run on a synthetic corpus of 20M tokens over 100k word
# types (the tiny 2x16 model): reading the data, then 20 s of training windows, then Ctrl-C.
# With a commit, the same for that commit's code (a git worktree in /tmp).
#   python -m lm.synth_corpus --tokens 20000000 --vocab 100000 --out runs/synth20m
#   bash experiments/memory/peak.sh [COMMIT] >> docs/runs/memory/peak.log
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
code=$root
if [ -n "${1:-}" ]; then
  code=/tmp/peak-$1; rm -rf "$code"; git -C "$root" worktree add -f -q "$code" "$1"
fi
rm -rf /tmp/peak-run
cd "$code"
echo "== $(git rev-parse --short HEAD) ($(lscpu | sed -n 's/^Model name: *//p'))"
/usr/bin/time -f 'peak resident memory: %M KiB' timeout -s INT 35 python demo_tie.py \
    --data_dir "$root/runs/synth20m" --embed_size 16 --hidden_size 16 --threads 2 \
    --save_path /tmp/peak-run/m.pt 2>&1 | tr '\r' '\n' | grep -aE '^(Total|Training stopped|peak)' |
    cut -c1-60
/usr/bin/time -f 'peak resident memory, reading only: %M KiB' python -c "
import sys; sys.path.insert(0, '.')
import data; data.load_corpus('$root/runs/synth20m')" 2>&1 | tail -1
[ -z "${1:-}" ] || git -C "$root" worktree remove --force "$code"
