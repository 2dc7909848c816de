"""Training and evaluation machinery: the training loop, COCO evaluation, checkpoints and the schedule."""
