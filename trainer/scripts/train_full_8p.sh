#!/usr/bin/env bash
# Train SOLOv2 R50-FPN 1x on 8 devices of one machine with torchrun (hccl on NPU, nccl on GPU, gloo on CPU).
#   bash train_full_8p.sh --data_path=DIR [--work_dir=DIR] [--nproc=8] [--config=NAME] [--device=auto] [--epochs=N]
#       [--pretrained=FILE] [-- solov2 args]
# DIR holds COCO: annotations/instances_{train,val}2017.json, train2017/, val2017/. Backbone weights:
# --pretrained=FILE (a torchvision state dict), by default DIR/../pretrained/resnet50.pth if present.
# The learning rate scales with the total batch (8 x 2 images = the reference's 16).
set -euo pipefail
accepted="data_path work_dir config device nproc epochs pretrained"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
backbone_opts
work_dir="${work_dir:-output/8p}"
nproc="${nproc:-8}"
mkdir -p "$work_dir"
TORCHRUN="${TORCHRUN:-torchrun}"
"$TORCHRUN" --standalone --nnodes 1 --nproc-per-node "$nproc" -m solov2.cli train --config "$config" \
    --data-path "$data_path" --work-dir "$work_dir" --device "$device" \
    --termination-log "$work_dir/termination-log" --resume "${opts[@]}" "${extra[@]}" 2>&1 | tee -a "$work_dir/train.log"
