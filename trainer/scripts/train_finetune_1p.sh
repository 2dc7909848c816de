#!/usr/bin/env bash
# Fine-tune from a trained checkpoint's weights (not its optimizer) on one device, e.g. on your own
# COCO-format data set with another class count (the category branch is then re-initialised); give that
# count after `--`, e.g. `-- --opts model.head.num_classes=3` (the COCO configs have 80).
#   bash train_finetune_1p.sh --data_path=DIR --checkpoint=FILE|DIR [--work_dir=DIR] [--config=NAME] [--device=auto]
#       [--epochs=N] [-- solov2 args]
# --config must describe the checkpoint's model (backbone, FPN, head; the class count may differ):
# default solov2_r50_fpn_1x_coco.
set -euo pipefail
accepted="data_path work_dir config device checkpoint epochs"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work_dir="${work_dir:-output/finetune}"
if [ -z "$checkpoint" ] || [ ! -e "$checkpoint" ]; then
    echo "$(basename "$0"): --checkpoint=FILE|DIR is required and must exist (got '$checkpoint')" >&2
    exit 2
fi
mkdir -p "$work_dir"
"$SOLOV2" train --config "$config" --data-path "$data_path" --work-dir "$work_dir" --device "$device" \
    --load-from "$checkpoint" --termination-log "$work_dir/termination-log" --resume "${opts[@]}" "${extra[@]}" \
    2>&1 | tee -a "$work_dir/train.log"
