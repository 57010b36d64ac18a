#!/usr/bin/env bash
# Training and evaluation speed of the 2x200 model (bench.py), alone and beside one Python
# process spinning on one core, for each thread setting: the figures behind --threads' default.
# Two passes, the second in the reverse order, since one bench.py run can be 20% off another
# on a shared virtual machine:
#   bash experiments/contention/contention.sh 1 > docs/runs/contention/pass1.log
#   bash experiments/contention/contention.sh 2 > docs/runs/contention/pass2.log
cd "$(dirname "$0")/../.."
bench() { python bench.py --embed_size 200 --hidden_size 200 --dropout 0.3 --device cpu "$@" 2>&1 |
          grep -E '^(note|train |evaluate )'; }
settings=('' '--threads 2' '--threads 1' 'PASSIVE')
[ "${1:-1}" = 1 ] || settings=('PASSIVE' '--threads 1' '--threads 2' '')
lscpu | grep -E '^(Model name|CPU\(s\))'; python -c 'import torch; print("torch", torch.__version__)'
for busy in alone busy; do
  spinner=
  if [ $busy = busy ]; then python -c 'while True: pass' & spinner=$!; sleep 1; fi
  for setting in "${settings[@]}"; do
    case "$setting" in
      '') echo "== $busy: the default (no --threads)"; bench ;;
      PASSIVE) echo "== $busy: OMP_WAIT_POLICY=PASSIVE --threads 2"
               OMP_WAIT_POLICY=PASSIVE bench --threads 2 ;;
      *) echo "== $busy: $setting"; bench $setting ;;
    esac
  done
  [ -z "$spinner" ] || kill $spinner
done
