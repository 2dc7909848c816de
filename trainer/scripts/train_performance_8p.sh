#!/usr/bin/env bash
# Measure training throughput (FPS: images/s of all devices together) on 8 devices of one machine with
# torchrun: --steps iterations of R50-FPN 1x from the start, no evaluation; prints the FPS line at the end.
#   bash train_performance_8p.sh --data_path=DIR [--steps=500] [--nproc=8] [--work_dir=DIR] [--config=NAME]
#       [--device=auto] [--pretrained=FILE] [-- solov2 args, e.g. --compile]
# DIR holds COCO (train2017 is read; val2017 is not needed). The rate leaves out the iterations before the
# first progress line (train.log_interval, 20): start-up, the loaders' first batches and compilation.
# It trains in a new directory under --work_dir (default: ./output/perf_8p), deleted at the end; train.log
# (appended to) and the last run's results.json stay there. --steps must exceed train.log_interval (20)
# for the rate to leave start-up out.
set -euo pipefail
accepted="data_path work_dir config device nproc steps pretrained"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
backbone_opts
performance_opts
work_dir="${work_dir:-output/perf_8p}"
nproc="${nproc:-8}"
performance_run_dir
TORCHRUN="${TORCHRUN:-torchrun}"
"$TORCHRUN" --standalone --nnodes 1 --nproc-per-node "$nproc" -m solov2.cli train --config "$config" \
    --data-path "$data_path" --work-dir "$run_dir" --device "$device" \
    --termination-log "$run_dir/termination-log" "${opts[@]}" "${extra[@]}" 2>&1 | tee -a "$work_dir/train.log"
report_fps
