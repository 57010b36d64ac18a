# row NAME FLAGS...: one run of the papers' experiments, started, or continued where its last
# checkpoint is (a finished one is tested again). A resume is given the same FLAGS, so that the
# script's flags rule: one edited since the start (--epochs, say) applies from there on and the
# log says so, one that defines the model is refused. Its log and CSV go to $out (set by the
# script that sources this file), its progress bars to NAME.err beside them. THREADS, where
# set, is --threads for every run (the same count keeps a resumed run bit-identical).
row() {
  local name=$1; shift
  local save=$out/$name.pt
  local threads=(${THREADS:+--threads "$THREADS"})
  local resume=()
  [ -f "$out/$name.last.pt" ] && resume=(--resume)
  python demo_tie.py "$@" "${threads[@]}" --save_path "$save" "${resume[@]}" \
      >> "$out/$name.log" 2> "$out/$name.err"
}

side_by_side() {  # run each "name flags..." line of stdin as a row, all at once; fail if any does
  local pids=() status=0 line
  while read -r line; do
    eval "row $line" & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
