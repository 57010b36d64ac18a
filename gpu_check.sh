#!/usr/bin/env bash
# The CUDA path, checked and measured by one command on a fresh GPU machine:
#
#   bash gpu_check.sh [DATA]       # the check below; PTB from data/penn, else DATA, else
#                                  # ../shared/data/penn (installed with getdata.sh)
#
# Each step runs whatever the one before did, and the report says which passed, failed or did
# not run (and why): the CUDA tests (pytest -m cuda), one PTB epoch of the reference model
# (2x650 tied) in float32 and with --amp, a stop in mid-epoch and its resume, generate.py and
# score.py with --cuda, bench.py, and a two-process torchrun where there are two GPUs. Every
# figure goes into one file, docs/runs/gpu/GPU-NAME.txt (no-cuda.txt on a machine without a
# GPU, where each CUDA step is listed as not run), copied to $OUT when the device tool runs it.
#
# The long runs, one job each: the log in $OUT (or ./gpu_check/), the checkpoints in a folder
# of their own, $CHECKPOINTS (default ./gpu_check/checkpoints/), which nothing here deletes.
# Run a mode again to go on from its last checkpoint (after Ctrl-C, a lost machine, or with
# a larger EPOCHS); the trainer's exit status is the script's.
#   bash gpu_check.sh ref40        # the reference run, all 40 epochs, float32
#   bash gpu_check.sh regularized  # the same with --recipe regularized
#   bash gpu_check.sh ntasgd       # the regularized recipe with AWD-LSTM's NT-ASGD
#   bash gpu_check.sh cosine       # the regularized recipe with Adam, warm-up and cosine
#   bash gpu_check.sh untied       # the reference run untied, all 40 epochs
#   bash gpu_check.sh finish PATH  # finishing phases from the regularized run's best model at
#                                  # PATH (gpu_check/checkpoints/regularized.pt): Adam at a
#                                  # quarter of the rate, and NT-ASGD's finetune, EPOCHS
#                                  # (default 10) each
# DEVICE (default cuda), SIZE (more trainer flags: a tiny model, another --data_dir) and
# EPOCHS (default 40) apply to every mode.
set -uo pipefail
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1
out=${OUT:-gpu_check}
checkpoints=${CHECKPOINTS:-gpu_check/checkpoints}

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

full_run() {  # name, flags...: a whole run (continued, where its last checkpoint exists),
  # keeping its log and the tail of its stderr. tee -i and the trap keep the log's writers
  # alive through Ctrl-C, so that the trainer can save, print its resume line and test.
  local name=$1; shift
  local flags=("$@")
  if [ -f "$checkpoints/$name.last.pt" ]; then  # a stopped fine-tuning run resumes without
    flags=(--resume)                             # its --finetune PATH
    while [ $# -gt 0 ]; do
      if [ "$1" = --finetune ]; then shift 2; else flags+=("$1"); shift; fi
    done
  fi
  mkdir -p "$checkpoints"
  python3 demo_tie.py --device "${DEVICE:-cuda}" ${SIZE:-} --epochs ${EPOCHS:-40} "${flags[@]}" \
      --save_path "$checkpoints/$name.pt" \
      2> >(trap '' INT TERM; tee /dev/stderr | tail -c 20000 > "$out/$name.err") |
      tee -i -a "$out/$name.log"
}
mode=${1:-check}
case "$mode" in
  -h|--help) usage; exit 0 ;;
  ref40|regularized|ntasgd|cosine|untied|finish) mkdir -p "$out" ;;
  check) ;;
  *) if [ ! -e "$mode" ]; then  # not a mode, nor the DATA of the check
       echo "gpu_check.sh: unknown mode '$mode' (and no such DATA file or folder)" >&2
       usage >&2; exit 2
     fi ;;
esac
case "$mode" in
  ref40) full_run ref40 --tied; exit ;;
  regularized) full_run regularized --tied --recipe regularized; exit ;;
  ntasgd) full_run ntasgd --tied --recipe regularized --optimizer ntasgd --lr 30 --clip 0.25; exit ;;
  cosine) full_run cosine --tied --recipe regularized --schedule cosine --warmup 1; exit ;;
  untied) full_run untied; exit ;;
  finish)
    source=${2:-}
    if [ ! -f "$source" ]; then
      echo "gpu_check.sh finish needs the path of the regularized run's best model" \
           "($checkpoints/regularized.pt after 'bash gpu_check.sh regularized')" >&2
      exit 2
    fi
    EPOCHS=${EPOCHS:-10} full_run finish_adam --finetune "$source" --lr 0.00025
    adam=$?
    EPOCHS=${EPOCHS:-10} full_run finish_ntasgd --finetune "$source" --optimizer ntasgd \
        --lr 30 --clip 0.25
    ntasgd=$?
    [ "$adam" -eq 0 ] || exit "$adam"
    exit "$ntasgd" ;;
esac
mkdir -p "$out"

# ---------------------------------------------------------------------------- the check
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true)
cuda=$(python3 -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
if [ "$cuda" -gt 0 ] 2>/dev/null; then
  name=$(echo "$gpus" | head -n 1 | tr -c 'A-Za-z0-9.\n-' '_' | sed 's/_*$//')
  name=${name:-cuda}
else
  cuda=0; name=no-cuda
fi
mkdir -p docs/runs/gpu
report=docs/runs/gpu/$name.txt
work=$(mktemp -d)
trap 'rm -rf "$work"; if [ -n "${OUT:-}" ]; then cp "$report" "$OUT/"; fi' EXIT
: > "$report"
note() { echo "$*" | tee -a "$report"; }
failed=0
# step NAME REASON-NOT-RUN COMMAND...: runs COMMAND (REASON empty) and notes its outcome
step() {
  local title=$1 skip=$2; shift 2
  if [ -n "$skip" ]; then note "- $title: not run ($skip)"; return 0; fi
  local start=$SECONDS
  echo "== $title"
  if "$@" > "$work/step.log" 2>&1; then
    note "- $title: passed ($((SECONDS - start)) s)"
  else
    note "- $title: FAILED (exit $?, $((SECONDS - start)) s); its last lines:"
    tr '\r' '\n' < "$work/step.log" | grep -v '%|' | tail -n 15 | sed 's/^/    /' |
        tee -a "$report"
    failed=$((failed + 1))
  fi
  grep -E "$FIGURES" "$work/step.log" | sed 's/^/    /' | tee -a "$report" || true
}
FIGURES='^(Epoch: |Test |Loss|[0-9]+ (passed|failed)|train|evaluate|generate|config:|machine:|peak memory|tokens/s|Training stopped|Resuming|--amp)'
no_cuda=""; [ "$cuda" -gt 0 ] || no_cuda="no CUDA device"
# A dry run of the check itself on a CPU, each step on a tiny model:
#   DEVICE=cpu SIZE="--embed_size 16 --hidden_size 16" bash gpu_check.sh
device=${DEVICE:-cuda}
on_device=(--cuda)
if [ "$device" != cuda ]; then no_cuda=""; on_device=(--device "$device"); fi

note "# gpu_check.sh on $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
note "GPU: ${gpus:-none}; $(python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null || echo 'PyTorch cannot be imported by python3')"

data=${1:-}; [ "$data" != check ] || data=${2:-}
penn=""
for source in data/penn "$data" ../shared/data/penn; do
  [ -n "$source" ] || continue
  if [ -f "$source/train.txt" ] || [ -f "$source/ptb.train.txt" ] || [ -f "$source" ]; then
    penn=$source; break
  fi
done
if [ -n "$penn" ] && [ "$penn" != data/penn ]; then
  step "PTB from $penn" "" bash getdata.sh "$penn"
fi
no_ptb=$no_cuda; [ -f data/penn/train.txt ] || no_ptb=${no_ptb:-no PTB: give its folder as DATA}

epoch() {  # mode flags...: one PTB epoch of the reference model, its CSV's tokens/s shown
  local mode=$1; shift
  python3 demo_tie.py --tied --epochs 1 --device "$device" ${SIZE:-} "$@" \
      --save_path "$work/$mode.pt" || return
  echo "tokens/s ($mode): $(tail -n 1 "$work/$mode.csv" | awk -F, '{print $NF}')"
}
stop_and_resume() {  # SIGTERM in mid-epoch, then a resume that finishes that epoch
  timeout --preserve-status -s TERM 20 python3 demo_tie.py --tied --device "$device" ${SIZE:-} --amp \
      --save_path "$work/stopped.pt"
  local status=$?
  [ "$status" -eq 143 ] || { echo "exit $status after SIGTERM, not 143"; return 1; }
  local stopped_in
  stopped_in=$(python3 -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=True)['epoch'])" "$work/stopped.last.pt") || return
  python3 demo_tie.py --save_path "$work/stopped.pt" --epochs "$stopped_in" --resume
}
generate_and_score() {
  python3 generate.py --checkpoint "$work/float32.pt" "${on_device[@]}" --seed_text \
      "the company said" --num_words 20 --seed 1 &&
  python3 score.py --checkpoint "$work/float32.pt" "${on_device[@]}" data/penn/test.txt |
      tail -n 2 &&
  python3 score.py --checkpoint "$work/float32.pt" "${on_device[@]}" --cache --dynamic \
      data/penn/test.txt | tail -n 2
}
no_two=$no_cuda; [ "$cuda" -ge 2 ] || no_two=${no_two:-one GPU}

[ "$device" = cuda ] || no_tests="the CUDA tests need CUDA"
step "CUDA tests (pytest -m cuda)" "${no_tests:-$no_cuda}" python3 -m pytest -q -m cuda tests
step "one PTB epoch, float32" "$no_ptb" epoch float32
step "one PTB epoch, --amp" "$no_ptb" epoch amp --amp
step "SIGTERM in mid-epoch, then --resume" "$no_ptb" stop_and_resume
step "generate.py and score.py with --cuda" "$no_ptb" generate_and_score
step "bench.py" "$no_cuda" python3 bench.py --device "$device" ${SIZE:-} --windows \
    ${WINDOWS:-200} --repeats 5 --compare_example --amp
step "torchrun, two processes" "$no_two" torchrun --standalone --nproc_per_node 2 demo_tie.py \
    --tied --epochs 1 --device "$device" ${SIZE:-} --save_path "$work/ddp.pt"
note "$failed step(s) failed; report: $report"
[ "$failed" -eq 0 ]
