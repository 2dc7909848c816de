"""One training per work directory: a second one is refused while the first runs, and a lock whose
holder is no process of this machine (a lost node's, on a network file system) is waited for."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import textwrap

import pytest

from solov2.engine.work_dir_lock import LOCK_NAME, hold_work_dir
from solov2.errors import ConfigError


def test_a_second_training_into_a_work_dir_in_use_is_refused_and_the_next_one_runs(tmp_path):
    held = hold_work_dir(tmp_path, log=lambda _m: None)
    assert held is not None
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    with pytest.raises(
        ConfigError, match=rf"--work-dir {tmp_path}: in use by another training \(pid {holder['pid']} on"
    ):
        hold_work_dir(tmp_path, wait_s=60, log=lambda _m: None)  # refused at once: the holder lives here
    held.close()
    again = hold_work_dir(tmp_path, log=lambda _m: None)
    assert again is not None
    again.close()


def test_the_lock_ends_with_its_process_however_it_ends(tmp_path):
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from solov2.engine.work_dir_lock import hold_work_dir
        hold_work_dir(Path({str(tmp_path)!r}), log=lambda _m: None)
        os._exit(9)  # no clean-up
    """)
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 9
    held = hold_work_dir(tmp_path, wait_s=0, log=lambda _m: None)
    assert held is not None
    held.close()


def test_a_lock_held_from_elsewhere_is_waited_for_then_refused(tmp_path):
    """The holder's details name another machine, as after a lost node: the run waits (saying so)."""
    other = (tmp_path / LOCK_NAME).open("a+")
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other.write(
        json.dumps({"host": "worker-0-lost", "boot_id": "x", "pid": 7, "start": "1", "since": "then"})
    )
    other.flush()
    lines: list[str] = []
    with pytest.raises(
        ConfigError, match=r"in use by another training \(pid 7 on worker-0-lost, since then\)"
    ):
        hold_work_dir(tmp_path, wait_s=1.5, log=lines.append)
    assert lines == [
        f"--work-dir {tmp_path}: locked by pid 7 on worker-0-lost, since then, not a process of this machine; "
        "waiting up to 1.5 s (a lost node's lock ends with its file system lease)"
    ]
    other.close()
