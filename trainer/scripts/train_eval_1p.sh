#!/usr/bin/env bash
# Evaluate a checkpoint on COCO val2017 on one device: mask and box AP, written to --work_dir.
#   bash train_eval_1p.sh --data_path=DIR [--checkpoint=FILE|DIR] [--work_dir=DIR] [--device=auto] [-- solov2 args]
# --checkpoint: a checkpoint file, or a checkpoints directory (its newest); by default
# output/8p/checkpoints/epoch_12.pth, the end of train_full_8p.sh's 1x schedule. The model's config is the
# one the checkpoint holds. Results go to --work_dir (default: ./output/eval), the log to its eval.log.
set -euo pipefail
accepted="data_path work_dir device checkpoint"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work_dir="${work_dir:-output/eval}"
checkpoint="${checkpoint:-output/8p/checkpoints/epoch_12.pth}"
if [ ! -e "$checkpoint" ]; then
    echo "$(basename "$0"): --checkpoint: no file or directory '$checkpoint'" >&2
    exit 2
fi
mkdir -p "$work_dir"
"$SOLOV2" eval --data-path "$data_path" --checkpoint "$checkpoint" --work-dir "$work_dir" --device "$device" \
    "${extra[@]}" 2>&1 | tee -a "$work_dir/eval.log"
