"""Thread counts (`canctr.threads`: cgroup quota, affinity, --threads / OMP_NUM_THREADS) and
`canctr reproduce --jobs N` (cells in parallel processes, the same metrics as serial runs)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synth import make_prepared

from canctr import threads
from canctr.cli import main
from canctr.threads import available_cores, cgroup_cpu_limit, resolve_threads, set_threads


@contextlib.contextmanager
def kept_threads():
    """`main` sets torch's threads and OMP_NUM_THREADS for the whole process: put them back for other tests."""
    threads_before, env_before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_before


@pytest.fixture(autouse=True)
def _restore_threads():
    with kept_threads():
        yield


def _write(d: Path, **files: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("__", ".")).write_text(text)
    return d


def test_cgroup_v2_cpu_max(tmp_path):
    assert cgroup_cpu_limit(dirs=[_write(tmp_path / "a", cpu__max="max 100000\n")]) is None
    assert cgroup_cpu_limit(dirs=[_write(tmp_path / "b", cpu__max="200000 100000\n")]) == 2.0
    assert cgroup_cpu_limit(dirs=[_write(tmp_path / "c", cpu__max="150000 100000\n")]) == 1.5
    # the tightest of nested limits; a missing directory or a malformed file is no limit
    assert cgroup_cpu_limit(dirs=[tmp_path / "b", tmp_path / "c", tmp_path / "nowhere"]) == 1.5
    assert cgroup_cpu_limit(dirs=[_write(tmp_path / "d", cpu__max="garbage\n")]) is None


def test_cgroup_v1_cfs_quota(tmp_path):
    v1 = _write(tmp_path / "cpu", cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    assert cgroup_cpu_limit(dirs=[v1]) is None
    _write(v1, cpu__cfs_quota_us="50000\n", cpu__cfs_period_us="100000\n")
    assert cgroup_cpu_limit(dirs=[v1]) == 0.5


def test_available_cores_is_affinity_bounded_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert available_cores(dirs=[]) == 8
    assert available_cores(dirs=[_write(tmp_path / "a", cpu__max="250000 100000")]) == 3  # 2.5 -> 3
    assert available_cores(dirs=[_write(tmp_path / "b", cpu__max="20000 100000")]) == 1  # 0.2 -> at least 1
    assert available_cores(dirs=[_write(tmp_path / "c", cpu__max="max 100000")]) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert available_cores(dirs=[tmp_path / "a"]) == 1  # affinity tighter than the quota


def test_the_process_cgroup_and_its_parents_are_read(tmp_path):
    """/proc/self/cgroup names the process's cgroup; its quota, or a parent's, bounds it (v2 and v1)."""
    from canctr.threads import _own_cgroup_dirs

    root = tmp_path / "cgroup"
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/jobs/job1\n")
    _write(root / "jobs", cpu__max="150000 100000\n")
    _write(root / "jobs" / "job1", cpu__max="max 100000\n")
    assert cgroup_cpu_limit(root, _own_cgroup_dirs(root, proc)) == 1.5
    _write(root / "jobs" / "job1", cpu__max="50000 100000\n")
    assert cgroup_cpu_limit(root, _own_cgroup_dirs(root, proc)) == 0.5
    proc.write_text("12:memory:/docker/c1\n4:cpu,cpuacct:/docker/c1\n")
    _write(root / "cpu,cpuacct" / "docker" / "c1", cpu__cfs_quota_us="300000\n", cpu__cfs_period_us="100000\n")
    assert cgroup_cpu_limit(root, _own_cgroup_dirs(root, proc)) == 3.0
    proc.write_text("not a cgroup line\n")
    assert cgroup_cpu_limit(root, _own_cgroup_dirs(root, proc)) is None


def test_threads_option_wins_over_omp_num_threads_over_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda *a, **k: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(None) == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(None) == 3
    assert resolve_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert resolve_threads(None) == 6
    with pytest.raises(ValueError, match="--threads must be a positive"):
        resolve_threads(0)


def test_set_threads_applies_to_torch_and_child_processes():
    assert set_threads(1) == 1
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "1"


@pytest.mark.parametrize("command", [["train", "--data", "d", "--model", "dnn", "--out", "o"],
                                     ["evaluate", "--run", "r"], ["bench", "--data", "d"],
                                     ["predict", "--run", "r", "--input", "i", "--out", "o"],
                                     ["serve", "--run", "r"], ["reproduce", "--data", "d"]])
def test_threads_zero_is_rejected_naming_the_option(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--threads", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--threads" in err and "positive" in err


def test_reproduce_jobs_zero_is_rejected(tmp_path, capsys):
    assert main(["reproduce", "--data", str(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs must be a positive" in capsys.readouterr().err


# ---- reproduce --jobs ------------------------------------------------------------------------------------

GRID = ["--models", "dnn,can-dnn", "--seeds", "2", "--set", "mlp=[16,8]", "--batch-size", "64", "--no-progress"]
COMPARED = ("auc", "gauc", "logloss", "n_params", "train_samples", "curves")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("synth"))


def _results(report: Path) -> dict:
    out = {}
    for m in ("dnn", "can-dnn"):
        for s in (1, 2):
            metrics = json.loads((report / "runs" / m / f"seed{s}" / "metrics.json").read_text())
            curves = [{k: v for k, v in c.items() if "second" not in k and "time" not in k}
                      for c in metrics.get("curves", [])]
            out[m, s] = {k: metrics.get(k) for k in COMPARED} | {"curves": curves}
    return out


@pytest.fixture(scope="module")
def serial_report(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial")
    # one thread per cell, as --jobs 2 gives each cell on 2 threads: the same arithmetic, bit for bit
    with kept_threads():
        assert main(["reproduce", "--data", str(data_dir), "--out", str(out), *GRID, "--threads", "1"]) == 0
    return out


def test_reproduce_jobs_2_gives_the_serial_metrics(data_dir, serial_report, tmp_path, capsys):
    capsys.readouterr()
    assert main(["reproduce", "--data", str(data_dir), "--out", str(tmp_path), *GRID, "--jobs", "2",
                 "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert sorted(line.split(":")[0].split("] ")[1] for line in printed.splitlines() if line.startswith("[")) == \
        ["can-dnn seed 1", "can-dnn seed 2", "dnn seed 1", "dnn seed 2"]
    assert _results(tmp_path) == _results(serial_report)
    status = json.loads((tmp_path / "status.json").read_text())["cells"]
    assert [c["status"] for c in status] == ["trained"] * 4
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["model"], r["seed"]) for r in rows] == [("dnn", 1), ("dnn", 2), ("can-dnn", 1), ("can-dnn", 2)]
    # a second call finds every cell finished, without starting a process
    assert main(["reproduce", "--data", str(data_dir), "--out", str(tmp_path), *GRID, "--jobs", "2"]) == 0
    assert [c["status"] for c in json.loads((tmp_path / "status.json").read_text())["cells"]] == ["cached"] * 4


def test_reproduce_jobs_a_failing_cell_is_reported_and_the_others_finish(data_dir, serial_report, tmp_path,
                                                                       capsys):
    import shutil

    shutil.copytree(serial_report, tmp_path, dirs_exist_ok=True)
    broken, redo = tmp_path / "runs" / "dnn" / "seed1", tmp_path / "runs" / "can-dnn" / "seed2"
    for run in (broken, redo):  # unfinished cells with the same config: they resume from their checkpoint
        (run / "metrics.json").unlink()
    for ckpt in broken.glob("checkpoint*"):  # every checkpoint damaged: resume has none to fall back on
        (ckpt / "train_state.json").write_text("{not json")
    capsys.readouterr()
    assert main(["reproduce", "--data", str(data_dir), "--out", str(tmp_path), *GRID, "--jobs", "2",
                 "--threads", "2"]) == 1
    out = capsys.readouterr().out
    status = {(c["model"], c["seed"]): c for c in json.loads((tmp_path / "status.json").read_text())["cells"]}
    assert status["dnn", 1]["status"] == "failed" and "checksum mismatch" in status["dnn", 1]["message"]
    assert "dnn seed 1: failed (CheckpointError" in out and "1 failed cells" in out
    assert status["can-dnn", 2]["status"] == "resumed"
    assert (redo / "metrics.json").exists()
    assert {status[k]["status"] for k in [("dnn", 2), ("can-dnn", 1)]} == {"cached"}
