"""What the training loop reports: every loss term by name, throughput per window, non-finite steps."""

from __future__ import annotations

import pytest
import torch

from solov2.engine.checkpoint import periodic_checkpoint_due
from solov2.engine.counters import WindowCounts
from solov2.engine.reporting import (
    LossWindow,
    RunClock,
    ThroughputWindow,
    loss_values,
    nonfinite_verdict,
    results_losses,
)


def test_every_loss_term_is_reported_by_name():
    out = {
        "loss_cls": torch.tensor(0.25),
        "loss_mask": torch.tensor(1.5),
        "loss_boundary": torch.tensor(0.125),  # a new term needs no edit in the loop
        "num_positives": torch.tensor(7),
        "loss": torch.tensor(1.875),
    }
    losses = loss_values(out)
    assert losses == {"total": 1.875, "cls": 0.25, "mask": 1.5, "boundary": 0.125}
    assert results_losses(losses) == {
        "loss": 1.875,
        "loss_cls": 0.25,
        "loss_mask": 1.5,
        "loss_boundary": 0.125,
    }


def test_logged_losses_are_the_mean_of_the_finite_steps_since_the_last_line():
    """One batch's loss jumps by 10x on this data: the progress line shows the interval's mean, as
    mmdetection's logs do, and a skipped non-finite step does not poison it."""
    window = LossWindow()

    def step(total: float, cls: float, applied: bool = True) -> None:
        out = {"loss": torch.tensor(total), "loss_cls": torch.tensor(cls), "num_positives": torch.tensor(3)}
        window.add(out, torch.tensor(applied))

    step(1.0, 0.25)
    step(3.0, 0.75)
    step(float("nan"), float("nan"), applied=False)
    assert window.read() == {"total": 2.0, "cls": 0.5}
    step(5.0, 1.0)
    assert window.read() == {"total": 5.0, "cls": 1.0}  # a new window
    step(float("inf"), 1.0, applied=False)
    assert window.read() == {}  # nothing applied: the caller shows the last step's values


def test_throughput_window_averages_over_its_steps():
    window = ThroughputWindow(start=10.0)
    window.add(images=8, data_wait=0.5)
    window.add(images=8, data_wait=0.1)
    figures = window.figures(now=14.0)
    assert figures == pytest.approx({"images_per_second": 4.0, "data_wait": 0.3, "step_time": 2.0})
    window.restart()
    assert (window.images, window.steps, window.data_wait) == (0, 0, 0.0)


def _counts(nonfinite: int, longest: int, first: int = 0, last: int = 0) -> WindowCounts:
    return WindowCounts(nonfinite, longest, 0, first, last, 0)


def test_nonfinite_verdict_says_where_and_when_to_stop():
    assert nonfinite_verdict(_counts(0, 0), limit=3) == (None, False)
    message, stop = nonfinite_verdict(_counts(1, 1, 5, 5), limit=3)
    assert message == "iteration 5: non-finite loss or gradient, step skipped (1 in a row at most, limit 3)"
    assert not stop
    message, stop = nonfinite_verdict(_counts(3, 3, 6, 8), limit=3)
    assert message is not None and message.startswith("iterations 6..8:") and "3 steps skipped" in message
    assert stop


def test_periodic_checkpoints_follow_the_interval():
    assert [i for i in range(1, 11) if periodic_checkpoint_due(i, 4)] == [4, 8]
    assert not any(periodic_checkpoint_due(i, 0) for i in range(1, 11))


def test_the_run_rate_leaves_out_the_start_up_before_the_first_progress_line():
    clock = RunClock(start_iteration=0, start=100.0)
    # 20 iterations of 2 images: 10 s, the first step's compilation included; then 20 more in 4 s.
    assert clock.images_per_second(20, 2, now=110.0) == pytest.approx(4.0)
    clock.settled(110.0, 20)
    assert clock.images_per_second(20, 2, now=110.0) == pytest.approx(4.0)  # no step since: the start's
    assert clock.images_per_second(40, 2, now=114.0) == pytest.approx(10.0)
    clock.settled(114.0, 40)  # later progress lines do not move the mark
    assert clock.images_per_second(60, 2, now=118.0) == pytest.approx(10.0)


def test_a_resumed_run_measures_from_where_it_resumed():
    clock = RunClock(start_iteration=100, start=0.0)
    assert clock.images_per_second(110, 4, now=8.0) == pytest.approx(5.0)
