"""A ground-truth batch the model cannot train on is refused with a message naming the field."""

from __future__ import annotations

import pytest
import torch

from solov2.data.synthetic import synthetic_batch
from solov2.errors import GroundTruthError


@pytest.fixture
def gt():
    return synthetic_batch(2, (64, 64), max_instances=4, instance_counts=[2, 3], seed=0)[1]


def test_a_good_batch_passes(gt):
    gt.validate(num_classes=3, image_size=(64, 64))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda g: g.boxes[0, 0].copy_(torch.tensor([10.0, 5.0, 80.0, 20.0])),
            r"gt\.boxes: 1 valid box\(es\) outside the 64x64 canvas",
        ),
        (lambda g: g.boxes[1, 1].copy_(torch.tensor([-3.0, 5.0, 20.0, 20.0])), r"gt\.boxes: .*outside"),
        (lambda g: g.boxes[0, 1].copy_(torch.tensor([30.0, 5.0, 20.0, 20.0])), r"gt\.boxes: x2 < x1"),
        (lambda g: g.boxes[0, 0, 0].fill_(float("nan")), r"gt\.boxes: non-finite"),
        (lambda g: g.labels[0, 0].fill_(7), r"gt\.labels: values must lie in \[0, 3\)"),
        (lambda g: g.masks[0, 0, 0, 0].fill_(255), r"gt\.masks: values must be 0 or 1"),
    ],
)
def test_bad_values_name_the_field(gt, mutate, message):
    mutate(gt)
    with pytest.raises(GroundTruthError, match=message):
        gt.validate(num_classes=3, image_size=(64, 64))


def test_bad_shapes_and_dtypes_name_the_field(gt):
    with pytest.raises(GroundTruthError, match=r"gt\.masks: expected the canvas size \(32, 32\)"):
        gt.validate(num_classes=3, image_size=(32, 32))
    with pytest.raises(GroundTruthError, match=r"gt\.labels: expected int64"):
        gt._replace(labels=gt.labels.int()).validate(num_classes=3)
    with pytest.raises(GroundTruthError, match=r"gt\.valid: expected leading shape"):
        gt._replace(valid=gt.valid[:, :2]).validate(num_classes=3)
    # Padding entries may hold anything: only valid instances are checked.
    gt.boxes[0, 3] = torch.tensor([-50.0, -50.0, 500.0, 500.0])
    gt.validate(num_classes=3, image_size=(64, 64))
