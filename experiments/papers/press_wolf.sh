#!/usr/bin/env bash
# Press & Wolf 2016, "Using the Output Embedding to Improve Language Models", the PTB table of
# the small model without dropout: its four rows in the configuration of their code (the
# TensorFlow PTB tutorial's small model: 2x200, batch 20, 20 steps, no dropout, every weight
# uniform in +-0.1, SGD at rate 1 on the loss summed over the 20 steps, clip 5, 13 epochs, the
# rate halved after every epoch from the 5th), one after the other, then the similarity
# analysis of the untied and tied models. Rerun it to continue: a row with a last checkpoint
# resumes, a finished one is tested again. Logs and CSVs go to runs/papers/ (or $OUT).
#
#   bash experiments/papers/press_wolf.sh                # the four rows, then the similarities
#   bash experiments/papers/press_wolf.sh seeds SEED...  # WT + PR again at each seed, side by
#                                                        # side at one thread each, each model
#                                                        # then tested as they test (below)
#   bash experiments/papers/press_wolf.sh stream         # WT + PR on PTB as their reader sees
#                                                        # it: no <sos> (below)
#
# This trainer minimises the per-token mean loss, 1/20 of their summed one, so their rate 1 is
# --lr 20 here and their clip 5 is --clip 0.25. Their penalty, tf.nn.l2_loss(P) / (20 x 6.5)
# = ||P||^2 / 260 on the summed loss, is ||P||^2 / 5200 on the mean one: --proj_reg 0.000192308.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/papers}
mkdir -p "$out"
. experiments/papers/row.sh
SMALL=(--embed_size 200 --hidden_size 200 --num_layers 2 --dropout 0 --batch_size 20
       --seq_length 20 --init_range 0.1 --optimizer sgd --lr 20 --clip 0.25 --schedule step
       --decay_start 5 --lr_factor 0.5 --weight_decay 0 --epochs 13 --seed 1111)
PR=(--projection --proj_reg 0.000192308)

if [ "${1:-}" = seeds ]; then
  shift
  [ $# -ge 1 ] || { echo "usage: $0 seeds SEED..." >&2; exit 2; }
  for seed in "$@"; do
    echo "pw_wt_pr_seed$seed ${SMALL[*]} --tied ${PR[*]} --seed $seed"
  done | THREADS=${THREADS:-1} side_by_side
  # Their test: the last epoch's model (the last checkpoint's weights, whichever epoch
  # validated best) on the test text as one stream, batch 1.
  for seed in "$@"; do
    # Its summary (from the "Scored" line on) without the per-line table before it.
    python score.py --checkpoint "$out/pw_wt_pr_seed$seed.last.pt" --batch_size 1 \
        data/penn/test.txt 2> "$out/pw_wt_pr_seed$seed.test.err" \
        | sed -n '/^Scored /,$p' > "$out/pw_wt_pr_seed$seed.test.txt"
  done
  exit
fi
if [ "${1:-}" = stream ]; then
  # Their reader turns each split into one stream, "w1 .. wn <eos> w1 ..", where ours reads
  # "<sos> w1 .. wn <eos> <sos> w1 ..". Each split as one line, with a plain word _eos_ ending
  # each sentence but the last (whose end is the <eos> our reader adds), is their stream after
  # a single <sos>: the same targets, in the same number.
  penn=$out/penn_stream
  mkdir -p "$penn"
  for split in train valid test; do
    awk 'NR > 1 { printf " _eos_" } { printf "%s", $0 } END { print "" }' \
        "data/penn/$split.txt" > "$penn/$split.txt"
  done
  THREADS=${THREADS:-1} row pw_wt_pr_stream "${SMALL[@]}" --tied "${PR[@]}" --data_dir "$penn"
  exit
fi
row pw_small "${SMALL[@]}"
row pw_wt "${SMALL[@]}" --tied
row pw_pr "${SMALL[@]}" "${PR[@]}"
row pw_wt_pr "${SMALL[@]}" --tied "${PR[@]}"
python embeddings.py --checkpoint "$out/pw_small.pt" "$out/pw_wt.pt" > "$out/embeddings.txt"
python embeddings.py --checkpoint "$out/pw_small.pt" "$out/pw_wt.pt" --json > "$out/embeddings.json"
