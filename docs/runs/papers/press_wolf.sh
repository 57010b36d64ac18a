#!/usr/bin/env bash
# Press & Wolf 2016, "Using the Output Embedding to Improve Language Models", the PTB table of
# the small model without dropout: its four rows in their configuration (Zaremba et al.'s small
# model: 2x200, batch 20, 20 steps, no dropout, uniform init, SGD, clip 5 on the loss summed
# over the 20 steps, 13 epochs, the rate halved after every epoch from the 4th), one after the
# other. Rerun it to continue: a row with a last checkpoint resumes, a finished one is tested
# again. Logs and CSVs go to runs/papers/ (or $OUT).
#
# This trainer minimises the per-token mean loss, 1/20 of their summed one, so their rate 1 is
# --lr 20 here, their clip 5 is --clip 0.25, and their projection penalty ||P||^2 / (2 x 6.5)
# is --proj_reg 0.00385 (docs/recipes.md).
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${OUT:-runs/papers}
mkdir -p "$out"
SMALL=(--embed_size 200 --hidden_size 200 --num_layers 2 --dropout 0 --batch_size 20
       --seq_length 20 --optimizer sgd --lr 20 --clip 0.25 --schedule step --decay_start 4
       --lr_factor 0.5 --weight_decay 0 --epochs 13 --seed 1111)
PR=(--projection --proj_reg 0.00385)

row() {  # name, flags...: one row, started or continued
  local name=$1; shift
  local save=$out/$name.pt
  if [ -f "$out/$name.last.pt" ]; then
    python demo_tie.py --save_path "$save" --resume >> "$out/$name.log" 2> "$out/$name.err"
  else
    python demo_tie.py "${SMALL[@]}" "$@" --save_path "$save" >> "$out/$name.log" \
        2> "$out/$name.err"
  fi
}
row pw_small
row pw_wt --tied
row pw_pr "${PR[@]}"
row pw_wt_pr --tied "${PR[@]}"
