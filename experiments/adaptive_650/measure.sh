#!/usr/bin/env bash
# The adaptive-score table for one checkpoint: PTB test read as one stream, static, --cache,
# --dynamic and both, the values tuned with --tune on valid.txt. From the repository root:
#
#     bash experiments/adaptive_650/measure.sh runs/regularized/best.pt docs/runs/adaptive_650/regularized
#
# Writes, in the output folder, for each method M: score_M.json (the summary), score_M.log
# (each grid point, the values kept, the wall time; progress bars dropped). One job at a time:
# the times are what the table reports. TUNE_TOKENS (default 20000) limits dynamic tuning.
# Run it again after a stop: a method whose score_M.json exists is skipped.
set -euo pipefail
ckpt=$1 out=$2 penn=${PENN:-data/penn}
mkdir -p "$out"
declare -A flags=(
  [static]="--batch_size 1"
  [cache]="--cache --tune $penn/valid.txt"
  [dynamic]="--dynamic --tune $penn/valid.txt --tune_tokens ${TUNE_TOKENS:-20000}"
  [both]="--cache --dynamic --tune $penn/valid.txt --tune_tokens ${TUNE_TOKENS:-20000}"
)
for method in static cache dynamic both; do
  [ -f "$out/score_$method.json" ] && continue
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  python score.py --checkpoint "$ckpt" --json ${flags[$method]} "$penn/test.txt" \
    > "$out/score_$method.full.json" 2> "$out/score_$method.err"
  wall=$(python -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  python - "$out/score_$method" "$method" "$wall" <<'PY'
import json, os, sys
stem, method, wall = sys.argv[1:]
doc = json.load(open(stem + '.full.json'))
summary = {k: v for k, v in doc.items() if k not in ('per_line', 'per_token')}
json.dump(summary, open(stem + '.json.tmp', 'w'), indent=1)
os.replace(stem + '.json.tmp', stem + '.json')  # its presence marks the method done
err = open(stem + '.err').read().replace('\r', '\n').splitlines()
bars = [line for line in err if 'tok/s' in line]
keep = [line for line in err if line.strip() and line not in bars]
last = bars[-1].strip() if bars else ''
with open(stem + '.log', 'w') as f:
    f.write('\n'.join(keep + [f'last progress bar: {last}', f'{method} wall {wall} s']) + '\n')
print(f"{method}: ppl {summary['ppl']:.4f}, without <sos> {summary['ppl_no_sos']:.4f}, "
      f"{wall} s; {summary['layout']}")
PY
  rm "$out/score_$method.full.json" "$out/score_$method.err"
done
