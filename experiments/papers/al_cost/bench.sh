#!/usr/bin/env bash
# The augmented loss's cost in training tokens/s (bench.py, PTB's vocabulary), at Inan's small
# size and at the reference's: without it, with it (y~ passing the gradient, the default), and
# with y~ held constant. Alone on the machine; the JSON files and bench.log go to
# docs/runs/papers/al_cost/.
set -euo pipefail
cd "$(dirname "$0")/../../../docs/runs/papers/al_cost"
bench="python ../../../../bench.py"
S="--embed_size 200 --hidden_size 200 --seq_length 35 --dropout 0.5 --variational --windows 40 --repeats 5"
R="--windows 10 --repeats 5"
AL="--al_weight 0.5"
{
  for size in S R; do
    flags=${!size} name=$([ $size = S ] && echo s200 || echo r650)
    echo "+ bench.py $flags"
    $bench $flags --json ${name}_al0.json
    echo "+ bench.py $flags $AL"
    $bench $flags $AL --json ${name}_al05.json
    echo "+ bench.py $flags $AL --no-al_through_target"
    $bench $flags $AL --no-al_through_target --json ${name}_al05_held.json
  done
} > bench.log 2>&1
