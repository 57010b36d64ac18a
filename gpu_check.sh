#!/usr/bin/env bash
# The GPU check of the performance issue, prepared so that one run on a lent GPU is enough:
# one full PTB epoch of the reference configuration (2x650 tied, batch 20, seq 30) in float32
# and with --amp, then bench.py. Needs data/penn (carry it) and a CUDA GPU.
#
#   bash gpu_check.sh                      # logs go to $OUT (the device tool's) or ./gpu_check/
#   SIZE="--embed_size 16 --hidden_size 16" DEVICE=cpu bash gpu_check.sh   # a dry run on a CPU
set -euo pipefail
cd "$(dirname "$0")"
out=${OUT:-gpu_check}
mkdir -p "$out"
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee "$out/machine.txt"
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
