#!/usr/bin/env bash
# Train SOLOv2 R50-FPN 1x on one device (NPU, GPU or CPU, whichever is present), then evaluate.
#   bash train_full_1p.sh --data_path=DIR [--work_dir=DIR] [--config=NAME] [--device=auto] [--epochs=N] [--pretrained=FILE] [-- solov2 args]
# DIR holds COCO: annotations/instances_{train,val}2017.json, train2017/, val2017/. Backbone weights:
# --pretrained=FILE (a torchvision state dict), by default DIR/../pretrained/resnet50.pth if present.
# Checkpoints, results.json and train.log go to --work_dir (default: ./output/1p).
set -euo pipefail
accepted="data_path work_dir config device epochs pretrained"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
backbone_opts
work_dir="${work_dir:-output/1p}"
mkdir -p "$work_dir"
"$SOLOV2" train --config "$config" --data-path "$data_path" --work-dir "$work_dir" --device "$device" \
    --termination-log "$work_dir/termination-log" --resume "${opts[@]}" "${extra[@]}" 2>&1 | tee -a "$work_dir/train.log"
