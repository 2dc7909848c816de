"""Default data-loading workers from the CPUs a pod really gets (cgroup quota, affinity)."""

from __future__ import annotations

import os

import pytest

from solov2.data.cpus import MAX_AUTO_WORKERS, available_cpus, default_workers


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs rounds up
        ({"cpu.max": "max 100000\n"}, None),  # no limit: the affinity mask decides
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_quota_caps_the_affinity_mask(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    want = _affinity() if expected is None else min(expected, _affinity())
    assert available_cpus(tmp_path) == want


@pytest.mark.parametrize(
    ("local_processes", "cpus", "workers"),
    [(1, 1, 0), (1, 2, 1), (8, 16, 1), (8, 96, 8), (1, 64, MAX_AUTO_WORKERS), (2, 12, 5)],
)
def test_default_workers_share_the_cpus_among_local_processes(local_processes, cpus, workers):
    assert default_workers(local_processes, cpus) == workers


def test_local_world_size_comes_from_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers(cpus=20) == 4
