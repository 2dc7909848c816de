"""One training per work directory: a second one is refused while the first runs, and a lock whose
holder is no process of this machine (a lost node's, on a network file system) is waited for."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from solov2.engine.work_dir_lock import LOCK_NAME, WAIT_SECONDS, WorkDirBusy, hold_work_dir, lock_wait_seconds
from solov2.errors import ConfigError


def test_a_second_training_into_a_work_dir_in_use_is_refused_until_the_first_ends_however(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from solov2.engine.work_dir_lock import hold_work_dir
        hold_work_dir(Path({str(tmp_path)!r}), log=lambda _m: None)
        print("held", flush=True)
        time.sleep(60)
    """)
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "held\n"
        with pytest.raises(
            ConfigError, match=rf"--work-dir {tmp_path}: in use by another training \(pid {first.pid} on"
        ):
            hold_work_dir(tmp_path, wait_s=60, log=lambda _m: None)  # at once: the holder lives here
    finally:
        first.kill()  # no clean-up: the lock ends with the process all the same
        first.wait()
    held = hold_work_dir(tmp_path, wait_s=0, log=lambda _m: None)
    assert held is not None
    with pytest.raises(ConfigError, match="this process holds it already"):
        hold_work_dir(tmp_path, log=lambda _m: None)
    held.close()


def _held_elsewhere(tmp_path, details):
    other = (tmp_path / LOCK_NAME).open("a+")
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other.write(details)
    other.flush()
    return other


LOST = json.dumps({"host": "worker-0-lost", "boot_id": "x", "pid": 7, "start": "1", "since": "then"})


def test_a_lock_held_from_elsewhere_is_waited_for_then_refused_as_retryable(tmp_path):
    """The holder's details name another machine, as after a lost node: the run waits (saying so),
    then fails with an error a retry may get past."""
    other = _held_elsewhere(tmp_path, LOST)
    lines: list[str] = []
    with pytest.raises(
        WorkDirBusy, match=r"in use by another training \(pid 7 on worker-0-lost, since then\)"
    ):
        hold_work_dir(tmp_path, wait_s=1.5, log=lines.append)
    assert lines == [
        f"--work-dir {tmp_path}: locked by pid 7 on worker-0-lost, since then, not a process of this machine; "
        "waiting up to 1.5 s (a lost node's lock ends with its file system lease)"
    ]
    assert not issubclass(WorkDirBusy, ConfigError)  # retryable in the termination message
    threading.Timer(1.0, other.close).start()  # the lease ends during the wait
    held = hold_work_dir(tmp_path, wait_s=30, log=lines.append)
    assert held is not None
    held.close()


def test_a_lock_file_with_foreign_content_is_no_holder(tmp_path):
    other = _held_elsewhere(tmp_path, "[1]\xff")
    with pytest.raises(WorkDirBusy, match=r"a process that wrote no details"):
        hold_work_dir(tmp_path, wait_s=0, log=lambda _m: None)
    other.close()


def test_data_loading_workers_forked_while_it_is_held_do_not_keep_it():
    """A persistent loader worker outlives its training for a while; the lock must not."""
    import multiprocessing
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        held = hold_work_dir(Path(tmp), log=lambda _m: None)
        ready = multiprocessing.get_context("fork").Event()
        worker = multiprocessing.get_context("fork").Process(target=_serve, args=(ready,))
        worker.start()
        try:
            assert ready.wait(30)
            held.close()
            again = hold_work_dir(Path(tmp), wait_s=0, log=lambda _m: None)
            assert again is not None
            again.close()
        finally:
            worker.kill()
            worker.join()


def _serve(ready) -> None:
    """A forked data-loading worker that keeps running."""
    ready.set()
    time.sleep(30)


def test_with_several_processes_the_wait_ends_before_the_others_time_out(monkeypatch):
    """The other ranks wait for rank 0 in the process group's set-up for SOLOV2_DIST_TIMEOUT_SECONDS; a
    longer wait for the lock would end them with a timeout instead of the work dir's error."""
    monkeypatch.delenv("SOLOV2_DIST_TIMEOUT_SECONDS", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert lock_wait_seconds() == WAIT_SECONDS == 120
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert lock_wait_seconds() == 120  # the default 30 minutes leave room
    monkeypatch.setenv("SOLOV2_DIST_TIMEOUT_SECONDS", "60")
    assert lock_wait_seconds() == 30
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert lock_wait_seconds() == 120  # alone, nobody waits for it
