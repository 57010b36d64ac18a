#!/usr/bin/env bash
# Issue 23: three finishing phases from the regularized 2x650 run, EPOCHS each (default 4), so
# that validation picks the one to carry on (with --resume and a larger --epochs):
#   lr      --finetune BEST --lr 0.00025                          Adam afresh, a quarter of the rate
#   ntasgd  --finetune BEST --optimizer ntasgd --lr 30 --clip 0.25  AWD-LSTM's finetune
#   more    the run itself, continued: a copy of its files, --resume --epochs (its epochs + EPOCHS)
# From the repository root:
#
#     bash experiments/finish_650/probe.sh runs/regularized/regularized.pt runs/finish
#
# Run it again after a stop (SIGTERM saves): each probe resumes where it stopped, finished ones
# are skipped. Logs: OUT/NAME.log, each ending in "exit STATUS". Extra flags for every run
# and resume (e.g. --data_dir) go in FLAGS.
#
# What was run in the end (NT-ASGD stopped after one epoch, the third probe not run, the
# winner continued), and why: docs/recipes.md, "Which finishing phase, measured at 2x650".
set -uo pipefail
best=$1 out=$2 n=${EPOCHS:-4}
last=${best%.pt}.last.pt
mkdir -p "$out"

probe() {  # NAME, then its flags (a --finetune start becomes --resume once it has saved)
  local name=$1; shift
  local log=$out/$name.log
  if grep -q '^exit 0' "$log" 2>/dev/null; then return 0; fi
  if [ "$1" = --finetune ] && [ -f "$out/$name.last.pt" ]; then
    set -- --resume "$out/$name.last.pt"
  fi
  local rc=0
  # shellcheck disable=SC2086
  python demo_tie.py --save_path "$out/$name.pt" "$@" ${FLAGS:-} >> "$log" 2>> "$out/$name.err" || rc=$?
  echo "exit $rc" >> "$log"
  [ "$rc" -eq 0 ] || exit "$rc"  # stopped: run this script again to continue
}

probe lr --finetune "$best" --amp --epochs "$n" --lr 0.00025
probe ntasgd --finetune "$best" --amp --epochs "$n" --optimizer ntasgd --lr 30 --clip 0.25
if [ ! -f "$out/more.last.pt" ]; then
  cp "$best" "$out/more.pt" && cp "$last" "$out/more.last.pt"
fi
done_epochs=$(python -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=True)['epoch'])" "$last")
probe more --resume "$out/more.last.pt" --epochs $((done_epochs + n))
