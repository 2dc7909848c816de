"""Data: generated shapes for demos and tests (COCO loading arrives with the training loop)."""
