"""The failure path's parts: the first failure of a torchrun attempt claims the termination message,
and a SIGTERM stop that never reaches a step boundary still ends within its timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from solov2.engine.failures import Terminated, report_failure
from solov2.errors import DataError


def test_the_first_failure_of_an_attempt_keeps_the_message(tmp_path, monkeypatch):
    attempt = tmp_path / "attempt_0"
    log = tmp_path / "termination-log"
    for rank in (0, 1):
        (attempt / str(rank)).mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / "1" / "error.json"))
    assert report_failure(log, DataError("train2017/7.jpg: cannot decode image"))
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / "0" / "error.json"))
    assert not report_failure(log, RuntimeError("Connection closed by peer"))
    assert json.loads(log.read_text()) == {
        "error": "train2017/7.jpg: cannot decode image",
        "error_type": "DataError",
        "retryable": False,
    }
    # Both processes recorded their own error for torchrun's summary.
    assert "DataError" in (attempt / "1" / "error.json").read_text()
    assert "Connection closed" in (attempt / "0" / "error.json").read_text()
    # Outside torchrun a process always writes its message.
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    assert report_failure(log, Terminated("terminated by SIGTERM at iteration 3; checkpoint none"))
    assert json.loads(log.read_text())["retryable"] is True


def test_a_stop_that_never_reaches_a_step_boundary_exits_143_in_time(tmp_path):
    log = tmp_path / "termination-log"
    script = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from solov2.engine.failures import Terminated, report_failure
        from solov2.engine.sigterm import SigtermStop

        stop = SigtermStop(lambda: "terminated by SIGTERM at iteration 7; checkpoint none", timeout_s=1.0,
                           on_timeout=lambda text: report_failure(Path({str(log)!r}), Terminated(text)))
        stop.install()
        stop.deferred = True  # inside the loop, but this "step" never ends
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    """)
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 143, res.stderr
    assert time.monotonic() - start < 30
    assert json.loads(log.read_text()) == {
        "error": "terminated by SIGTERM at iteration 7; checkpoint none; no clean stop within 1 s (--stop-timeout)",
        "error_type": "Terminated",
        "retryable": True,
    }


def test_ctrl_c_stops_at_the_step_boundary_and_twice_at_once():
    """The first SIGINT only asks (the loop checkpoints at its next step boundary; exit 130); a second
    one does not wait for it."""
    from solov2.engine.sigterm import SigtermStop

    stop = SigtermStop(lambda: "", timeout_s=60.0, on_timeout=lambda _text: None)
    stop.install()
    try:
        stop.deferred = True
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and (stop.signal_name, stop.exit_code) == ("SIGINT", 130)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun passing the stop on: no news
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
