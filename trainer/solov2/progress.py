"""Training progress for people: one line per logging interval (tqdm bar or carriage-return line on a
terminal, plain log lines otherwise)."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Mapping
from typing import IO, Any, Literal


def format_progress(
    *,
    epoch: int,
    epochs: int,
    iteration: int,
    total_iterations: int,
    losses: Mapping[str, float],
    lr: float,
    images_per_second: float,
    data_wait: float,
    step_time: float,
    eta_seconds: float,
) -> str:
    """``epoch 2/12 iter 340/1000 loss 1.234 (cls 0.300 mask 0.934) lr 0.0100 4.2 img/s data 0.01s
    step 0.47s eta 0:05:12``. ``losses`` holds ``total`` and components (``loss_`` prefixes dropped)."""
    named = {k.removeprefix("loss_"): float(v) for k, v in losses.items()}
    total = named.pop("total", sum(named.values()))
    parts = " ".join(f"{k} {v:.3f}" for k, v in named.items())
    lr_text = f"{lr:.4f}" if lr >= 1e-3 else f"{lr:.2e}"
    eta = datetime.timedelta(seconds=round(max(eta_seconds, 0.0)))
    return (
        f"epoch {epoch}/{epochs} iter {iteration}/{total_iterations} loss {total:.3f}"
        + (f" ({parts})" if parts else "")
        + f" lr {lr_text} {images_per_second:.1f} img/s data {data_wait:.2f}s step {step_time:.2f}s eta {eta}"
    )


class ProgressLogger:
    """Progress of training for people: a line every ``interval`` iterations.

    Modes: ``plain`` writes one line per interval; ``cr`` rewrites one line with a carriage return;
    ``tqdm`` shows a tqdm bar with the line as its postfix; ``auto`` picks ``tqdm`` (if installed)
    or ``cr`` when ``stream`` is a terminal, else ``plain``. The training loop asks :meth:`due`
    before reading losses from the device, so that nothing synchronises in between.
    """

    def __init__(
        self,
        *,
        epochs: int,
        total_iterations: int,
        interval: int = 20,
        stream: IO[str] | None = None,
        mode: Literal["auto", "plain", "cr", "tqdm"] = "auto",
    ) -> None:
        self.epochs = epochs
        self.total_iterations = total_iterations
        self.interval = max(1, interval)
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", lambda: False)()
            mode = ("tqdm" if _has_tqdm() else "cr") if isatty else "plain"
        self.mode = mode
        self._bar: Any = None
        self._open_line = False

    def due(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-based global count done) gets a progress line."""
        return iteration % self.interval == 0 or iteration == self.total_iterations

    def update(self, *, epoch: int, iteration: int, **values: Any) -> None:
        """Show progress; ``values`` are :func:`format_progress`' remaining arguments."""
        line = format_progress(
            epoch=epoch,
            epochs=self.epochs,
            iteration=iteration,
            total_iterations=self.total_iterations,
            **values,
        )
        if self.mode == "tqdm":
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=self.total_iterations,
                    initial=iteration,
                    file=self.stream,
                    dynamic_ncols=True,
                    bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
                )
            self._bar.n = iteration
            self._bar.set_description_str(f"epoch {epoch}/{self.epochs}", refresh=False)
            self._bar.set_postfix_str("loss " + line.partition(" loss ")[2], refresh=True)
        elif self.mode == "cr":
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            self._open_line = True
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def write(self, message: str) -> None:
        """Print a message without breaking the progress display."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the progress display (closes the bar, ends the open line)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True
