#!/usr/bin/env bash
# A raw English text (the Lee news corpus that ships with gensim: 300 articles, one a line,
# punctuation glued to words) trained on as it is and after prepare.py, with the same small
# model: the share of <unk> and the test perplexity, before and after.
#   bash experiments/raw_text/run.sh > docs/runs/raw_text/run.log 2>&1
set -euo pipefail
cd "$(dirname "$0")/../.."
raw=$(python -c 'from gensim.test.utils import datapath; print(datapath("lee_background.cor"))')
out=${OUT:-runs/raw_text}
rm -rf "$out"; mkdir -p "$out"
lscpu | sed -n 's/^Model name: *//p'
train() {  # NAME: the small model on $out/NAME, its <unk> line and test perplexities
  python demo_tie.py --data_dir "$out/$1" --tied --embed_size 64 --hidden_size 64 \
      --dropout 0.3 --batch_size 10 --seq_length 35 --epochs 10 --min_count 2 --seed 1 \
      --save_path "$out/$1.pt" 2>/dev/null | grep -E '^(Vocabulary|Words not|Test)'
}
echo '== before: the lines as they are (prepare.py without --ptb)'
python prepare.py "$raw" "$out/before" --min_count 2
train before
echo '== after: prepare.py --ptb --unit sentences'
python prepare.py "$raw" "$out/after" --ptb --unit sentences --min_count 2
train after
