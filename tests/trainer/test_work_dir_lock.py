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
from pathlib import Path

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


MOUNTINFO = "\n".join(
    [
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
        "40 22 0:50 / /ckpt rw,relatime shared:20 - nfs server:/export rw,vers=3,nolock,proto=tcp,local_lock=all",
        "41 40 8:2 / /ckpt/scratch rw,relatime shared:21 - ext4 /dev/sdb1 rw",
        r"42 22 0:51 / /with\040space rw - nfs4 server:/other rw,vers=4.2,local_lock=none",
        "43 22 0:52 / /shared rw - nfs server:/shared rw,vers=3,local_lock=none",
    ]
)


def test_an_nfs_mount_that_keeps_locks_on_its_machine_is_named():
    from solov2.engine.work_dir_lock import node_local_locks

    assert node_local_locks(Path("/ckpt/run1"), MOUNTINFO) == "nolock, local_lock=all"
    assert node_local_locks(Path("/ckpt"), MOUNTINFO) == "nolock, local_lock=all"
    assert node_local_locks(Path("/ckpt/scratch/run"), MOUNTINFO) is None  # a local disk mounted inside
    assert node_local_locks(Path("/ckptx/run"), MOUNTINFO) is None  # another directory, on the root disk
    assert node_local_locks(Path("/shared/run"), MOUNTINFO) is None  # NFS locks reach the server
    assert node_local_locks(Path("/with space/run"), MOUNTINFO) is None
    flock_only = MOUNTINFO.replace("nolock,proto=tcp,local_lock=all", "local_lock=flock")
    assert node_local_locks(Path("/ckpt/run1"), flock_only) == "local_lock=flock"
    # NFS mounted over /ckpt after /ckpt/scratch hides the disk; a tmpfs without a source hides NFS.
    over = MOUNTINFO + "\n44 22 0:53 / /ckpt rw - nfs server:/new rw,vers=3,local_lock=all"
    assert node_local_locks(Path("/ckpt/scratch/run"), over) == "local_lock=all"
    tmpfs = MOUNTINFO + "\n45 40 0:54 / /ckpt/tmp rw - tmpfs  rw"
    assert node_local_locks(Path("/ckpt/tmp/run"), tmpfs) is None


def test_a_work_dir_on_such_a_mount_is_locked_with_a_warning(tmp_path, monkeypatch):
    from solov2.engine import work_dir_lock

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 22 0:50 / {tmp_path} rw - nfs s:/e rw,local_lock=all\n"
    )
    monkeypatch.setattr(work_dir_lock, "MOUNTINFO", mountinfo)
    logs: list[str] = []
    lock = hold_work_dir(tmp_path, log=logs.append)
    assert lock is not None
    lock.close()
    assert logs == [
        f"warning: --work-dir {tmp_path}: its NFS mount keeps locks on this machine only (local_lock=all): a "
        "training into it from another machine would not be refused"
    ]
    mountinfo.write_text(mountinfo.read_text().replace("local_lock=all", "local_lock=none"))
    logs.clear()
    hold_work_dir(tmp_path, log=logs.append).close()
    assert logs == []
