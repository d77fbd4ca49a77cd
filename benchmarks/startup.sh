#!/bin/bash
# Start-up time of the toolbox command: best of 3 wall seconds per command, for each source tree
# given (default: this checkout), run alternately back to back.
#   benchmarks/startup.sh [TREE ...]     e.g. benchmarks/startup.sh /tmp/old-checkout .
# A tree is a folder holding toolbox/ (and toolbox_plugins/); it goes first on PYTHONPATH.
trees=("${@:-.}")
export OMP_NUM_THREADS=1 COLUMNS=80
for args in "--help" "run --help" "plugins list"; do
  for tree in "${trees[@]}"; do
    best=999
    for _ in 1 2 3; do
      start=$(date +%s.%N); PYTHONPATH=$tree toolbox $args >/dev/null 2>&1; end=$(date +%s.%N)
      best=$(echo "t = $end - $start; if (t < $best) t else $best" | bc)
    done
    echo "toolbox $args | $tree | $best s"
  done
done
uptime
