"""The progress line people read: its format, and when and how it is written."""

from __future__ import annotations

import io

from solov2.progress import ProgressLogger, format_progress

from .samples import PROGRESS_UPDATE as UPDATE


def test_progress_line_format():
    line = format_progress(epochs=12, **UPDATE)
    assert line == (
        "epoch 2/12 iter 340/1000 loss 1.234 (cls 0.300 mask 0.934) lr 0.0100 4.2 img/s "
        "data 0.01s step 0.47s eta 0:05:12"
    )
    small = format_progress(
        epochs=12, **{**UPDATE, "lr": 2e-5, "losses": {"loss_cls": 0.5, "loss_mask": 1.0}}
    )
    assert "loss 1.500 (cls 0.500 mask 1.000) lr 2.00e-05" in small


def test_progress_logger_plain_mode_writes_lines_at_the_interval():
    stream = io.StringIO()
    logger = ProgressLogger(epochs=1, total_iterations=25, interval=10, stream=stream)
    assert logger.mode == "plain"  # not a terminal
    due = [i for i in range(1, 26) if logger.due(i)]
    assert due == [10, 20, 25]
    values = {k: v for k, v in UPDATE.items() if k not in ("epoch", "iteration", "total_iterations")}
    for i in due:
        logger.update(epoch=1, iteration=i, **values)
    logger.write("saved checkpoint")
    logger.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("epoch 1/1 iter 10/25 loss 1.234")
    assert lines[2].startswith("epoch 1/1 iter 25/25")
    assert lines[3] == "saved checkpoint"


def test_progress_logger_carriage_return_mode():
    stream = io.StringIO()
    logger = ProgressLogger(epochs=2, total_iterations=4, interval=1, stream=stream, mode="cr")
    values = {k: v for k, v in UPDATE.items() if k not in ("epoch", "iteration", "total_iterations")}
    logger.update(epoch=1, iteration=1, **values)
    logger.update(epoch=1, iteration=2, **values)
    logger.write("note")
    logger.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and "iter 2/4" in text
    assert text.endswith("\nnote\n")
