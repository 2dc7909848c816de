"""Data: COCO instances, transforms, aspect-ratio canvases (buckets), loaders, generated shapes."""
