from __future__ import annotations

import pytest

from solov2.data.synthetic import write_synthetic_coco


@pytest.fixture(scope="session")
def small_coco(tmp_path_factory):
    """A tiny COCO-layout data set of shapes: 8 training and 4 validation images."""
    return write_synthetic_coco(tmp_path_factory.mktemp("coco"), train=8, val=4, seed=3)
