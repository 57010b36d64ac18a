#!/usr/bin/env bash
# GPU measurements, prepared so that one call on a lent GPU is enough for each. Needs
# data/penn (carry it) and a CUDA GPU. Logs go to $OUT (the device tool's) or ./gpu_check/.
#
#   bash gpu_check.sh              # one PTB epoch of the reference model (2x650 tied), float32
#                                  # and --amp, then bench.py
#   bash gpu_check.sh ref40        # the reference run, all 40 epochs, float32 (issue 9)
#   bash gpu_check.sh regularized  # the same with --recipe regularized (issue 13)
#   bash gpu_check.sh ntasgd       # the regularized recipe with AWD-LSTM's NT-ASGD (issue 13)
#   bash gpu_check.sh cosine       # the regularized recipe with Adam, warm-up and cosine (issue 13)
#   bash gpu_check.sh untied       # the reference run untied, all 40 epochs (issue 23)
#   bash gpu_check.sh finish PATH  # finishing phases from the regularized run's best model at PATH
#                                  # (carry it): Adam at a quarter of the rate, and NT-ASGD's
#                                  # finetune, EPOCHS (default 10) each (issue 23)
#   SIZE="--embed_size 16 --hidden_size 16" EPOCHS=1 DEVICE=cpu bash gpu_check.sh ref40   # dry run
set -euo pipefail
cd "$(dirname "$0")"
out=${OUT:-gpu_check}
mkdir -p "$out"
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee "$out/machine.txt"

full_run() {  # name, flags...: a whole run, keeping its log, stderr tail and CSV
  local name=$1; shift
  python3 demo_tie.py --device "$device" ${SIZE:-} --epochs ${EPOCHS:-40} "$@" \
      --save_path "$out/$name.pt" 2> >(tail -c 20000 > "$out/$name.err") | tee "$out/$name.log"
  rm -f "$out/$name.pt" "$out/$name.last.pt" "$out/$name.lock"  # the device tool returns at most 8 files
}
case "${1:-epoch}" in
  ref40) full_run ref40 --tied; exit ;;
  regularized) full_run regularized --tied --recipe regularized; exit ;;
  ntasgd) full_run ntasgd --tied --recipe regularized --optimizer ntasgd --lr 30 --clip 0.25; exit ;;
  cosine) full_run cosine --tied --recipe regularized --schedule cosine --warmup 1; exit ;;
  untied) full_run untied; exit ;;
  finish)
    source=${2:?gpu_check.sh finish needs the path of the regularized run\'s best model}
    EPOCHS=${EPOCHS:-10} full_run finish_adam --finetune "$source" --lr 0.00025
    EPOCHS=${EPOCHS:-10} full_run finish_ntasgd --finetune "$source" --optimizer ntasgd \
        --lr 30 --clip 0.25
    exit ;;
  epoch) ;;
  *) echo "gpu_check.sh: unknown job $1 (epoch, ref40, regularized, ntasgd, cosine, untied," \
          "finish)" >&2; exit 2 ;;
esac
for mode in float32 amp; do
  flag=""
  if [ "$mode" = amp ]; then flag=--amp; fi
  echo "== one PTB epoch, $mode"
  python3 demo_tie.py --tied --epochs 1 --device "$device" ${SIZE:-} $flag \
      --save_path "$out/$mode.pt" 2> "$out/$mode.err" | tee "$out/$mode.log" | grep -E '^(Epoch|Validation|Test)'
  rm -f "$out/$mode.pt" "$out/$mode.last.pt" "$out/$mode.csv" "$out/$mode.lock"  # the device tool returns at most 8 files
done
echo "== bench.py"
python3 bench.py --device "$device" ${SIZE:-} --windows ${WINDOWS:-200} --repeats 5 --compare_example \
    --json "$out/bench.json" | tee "$out/bench.txt"
