#!/usr/bin/env bash
# Inan's small rows on 2 cores, one at a time on two threads or two side by side on one thread
# each? bench.py's training tokens/s for their small configuration, tied with their dropout of
# h(t-1) (RE), without and with the augmented loss (REAL): one process on two threads, then two
# processes at once on one thread each (their sum is what the pair gets done). Alone on the
# machine; bench.log goes to docs/runs/papers/inan2_speed/.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=docs/runs/papers/inan2_speed
mkdir -p "$out"
SMALL="--embed_size 200 --hidden_size 200 --num_layers 2 --variational --dropout 0.3
       --dropouti 0 --dropout_recurrent 0.3 --seq_length 35 --tied --no-decoder_bias
       --windows 20 --repeats 3 --gen_words 1"
{
  for al in "" "--al_weight 0.5 --al_temperature 20"; do
    echo "+ bench.py" $SMALL $al --threads 2
    python bench.py $SMALL $al --threads 2
    echo "+ two at once: bench.py" $SMALL $al --threads 1
    python bench.py $SMALL $al --threads 1 > "$out/first.tmp" 2>&1 &
    python bench.py $SMALL $al --threads 1 > "$out/second.tmp" 2>&1
    wait
    cat "$out/first.tmp" "$out/second.tmp"
    rm "$out/first.tmp" "$out/second.tmp"
  done
} > "$out/bench.log" 2>&1
