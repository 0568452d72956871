"""Data-parallel training with real processes: torchrun over gloo on a slice of the real Beauty data.

A 2-process run at the same global batch is the 1-process run with the gradient summed in another order:
- models without batch statistics or per-rank sampling (can-dnn, dnn, din with PReLU) give the same metrics
  within TIGHT (observed: AUC and GAUC equal, logloss within 3e-9);
- Dice (din, dien, can-dien) normalises with the statistics of each rank's half batch, and DIEN's auxiliary
  negatives are drawn per rank (seeded by rank), so those differ within LOOSE (observed: AUC <= 3.2e-3,
  GAUC <= 3.7e-3 = one user's pairs on this 544-sample test split, logloss <= 2.5e-5). DIEN without Dice and
  without the auxiliary loss still moves by ~1e-3 AUC: the GRU's gradient in another summation order
  (relative 1e-5) becomes lr-sized Adam steps on near-zero gradients over 85 steps.
Every subprocess has a timeout, so a hang fails the test instead of CI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import canctr
from canctr.train.loop import TrainConfig, fit

N_USERS = 3000  # the first Beauty users: 5,456 train / 544 test samples
BATCH = 64  # global
TIMEOUT = 300  # seconds per subprocess
TIGHT = {"auc": 1e-6, "gauc": 1e-6, "logloss": 1e-6}
LOOSE = {"auc": 0.01, "gauc": 0.02, "logloss": 1e-3}
SRC = Path(canctr.__file__).resolve().parents[1]  # the canctr under test, first on the workers' path

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")


@pytest.fixture(scope="module")
def beauty(beauty_3000: Path) -> Path:
    return beauty_3000  # conftest.py: the first N_USERS Beauty users, prepared once for the session


def _env(tmp: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), str(tmp or ""), env.get("PYTHONPATH", "")) if p)
    env.update(CANCTR_DIST_TIMEOUT_S="120", **extra)
    return env


def _train_argv(data: Path, out: Path, model: str, overrides: dict, *extra: str) -> list[str]:
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return [sys.executable, "-m", "canctr", "train", "--data", str(data), "--model", model, "--out", str(out),
            "--batch-size", str(BATCH), "--no-progress", "--threads", "1", *sets, *extra]  # 1 thread per rank


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A job in its own session, so `_stop` ends torchrun and its workers too, not just the launcher."""
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = _start(cmd, env)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        _stop(proc)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{out[-2000:]}\n{err[-4000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _one_process(data: Path, out: Path, model: str, overrides: dict) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same intra-op summation order
    try:
        return fit(TrainConfig(data=str(data), model=model, out=str(out), batch_size=BATCH,
                               model_config=overrides, progress=False))
    finally:
        torch.set_num_threads(threads)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Records, in each torchrun worker, every write-like file operation under CANCTR_TEST_WATCH to
# CANCTR_TEST_WRITES/rank<R>.txt (an audit hook: open for writing, mkdir, rename, replace, remove, rmtree).
AUDIT = '''
import os, sys
_watch, _rank = os.environ.get("CANCTR_TEST_WATCH"), os.environ.get("RANK")
if _watch and _rank is not None:
    _fd = os.open(os.path.join(os.environ["CANCTR_TEST_WRITES"], "rank" + _rank + ".txt"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    _busy = []
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def _hook(event, args):
        if _busy or event not in ("open", "os.mkdir", "os.rename", "os.replace", "os.remove", "shutil.rmtree"):
            return
        if event == "open":
            path, mode, flags = args
            if not (mode and any(c in mode for c in "wax+")) and not (mode is None and (flags or 0) & _WRITE):
                return
        else:
            path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(_watch):
            _busy.append(1)
            try:
                os.write(_fd, (event + " " + os.fsdecode(path) + "\\n").encode())
            finally:
                _busy.pop()
    sys.addaudithook(_hook)
'''


@pytest.mark.parametrize(("model", "overrides", "tol"), [
    ("can-dnn", {}, TIGHT),  # PReLU + the code's affine "BatchNorm": no batch statistics
    ("dnn", {}, TIGHT),
    ("din", {"activation": "prelu"}, TIGHT),  # Dice off: DIN is exact too
    ("din", {}, LOOSE),  # Dice: per-rank batch statistics
    ("dien", {}, LOOSE),  # Dice + per-rank auxiliary negatives
    ("dien", {"activation": "prelu", "aux_weight": 0.0}, LOOSE),  # an unused aux network: find_unused_parameters
    ("can-dien", {}, LOOSE),
])
def test_two_processes_match_one_process(beauty: Path, tmp_path: Path, model: str, overrides: dict,
                                         tol: dict[str, float]) -> None:
    one = _one_process(beauty, tmp_path / "one", model, overrides)
    (tmp_path / "writes").mkdir()
    (tmp_path / "sitecustomize.py").write_text(AUDIT)
    two_dir = tmp_path / "two"
    env = _env(tmp_path, CANCTR_TEST_WATCH=str(two_dir), CANCTR_TEST_WRITES=str(tmp_path / "writes"))
    r = _run(_train_argv(beauty, two_dir, model, overrides, "--nproc", "2"), env)
    two = json.loads((two_dir / "metrics.json").read_text())
    assert r.stdout.count("-> ") == 1  # one summary line: rank 0's
    assert (two["world_size"], two["batch_size"], two["batch_size_per_rank"]) == (2, BATCH, BATCH // 2)
    assert two["train_samples"] == one["train_samples"] // 2 * 2  # the odd last sample goes to no rank
    assert two["n_samples"] == one["n_samples"] == 544  # every test sample scored once, over both ranks
    for k, t in tol.items():
        assert abs(two[k] - one[k]) <= t, (k, one[k], two[k])
    # only rank 0 wrote into the run directory (rank 0's record shows the hook sees the writes)
    written = {r: (tmp_path / "writes" / f"rank{r}.txt").read_text() for r in (0, 1)}
    assert "metrics.json" in written[0] and "config.json" in written[0] and "checkpoint" in written[0]
    assert written[1] == ""
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_two_nodes_on_loopback_equal_two_processes(beauty: Path, tmp_path: Path) -> None:
    """2 machines x 1 process (two torchrun agents, c10d rendezvous on 127.0.0.1) = 1 machine x 2."""
    ref = tmp_path / "ref"
    _run(_train_argv(beauty, ref, "can-dnn", {}, "--nproc", "2"), _env())
    out, port = tmp_path / "nodes", _free_port()
    procs: list[subprocess.Popen] = []
    try:
        for i in (0, 1):
            procs.append(_start(
                _train_argv(beauty, out, "can-dnn", {}, "--nproc", "1", "--nnodes", "2", "--node-rank", str(i),
                            "--rdzv-endpoint", f"127.0.0.1:{port}"), _env()))
            # both agents see 127.0.0.1 as their own address and would race to host the rendezvous store:
            # the second starts once the first listens, and joins it as a client (as on 2 machines)
            _wait_listening(port, procs[0])
        logs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            _stop(p)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-3000:] for _, e in logs)
    m_ref, m = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert m["world_size"] == 2
    assert {k: m[k] for k in ("auc", "gauc", "logloss")} == {k: m_ref[k] for k in ("auc", "gauc", "logloss")}
    w_ref, w = _weights(ref), _weights(out)
    assert all(torch.equal(w[k], w_ref[k]) for k in w_ref)


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} (exit status {proc.poll()})")


def _pids_of(job: str, rank: int) -> list[int]:
    """Live processes whose environment holds CANCTR_TEST_JOB=job, RANK=rank and no restart yet."""
    want = {f"CANCTR_TEST_JOB={job}", f"RANK={rank}", "TORCHELASTIC_RESTART_COUNT=0"}
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = set(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            continue
        if want <= env:
            pids.append(int(pid))
    return pids


RESTART_TIMEOUT = 150  # the restarted group's whole run takes ~20 s here


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_rank_killed_mid_epoch_restarts_and_resumes_bit_identically(beauty: Path, tmp_path: Path) -> None:
    """kill -9 of rank 1 after a mid-epoch checkpoint; torchrun (--max-restarts 1) restarts the group, which
    resumes from that checkpoint; the final weights equal an uninterrupted 2-process run's, bit for bit.
    (Before the process group's keys were prefixed per start, the restarted group hung in 2 of 5 runs.)"""
    args = ("--nproc", "2", "--batch-size", "32", "--checkpoint-every", "10")  # 170 steps, a checkpoint per 10
    ref = tmp_path / "ref"
    _run(_train_argv(beauty, ref, "can-dien", {}, *args), _env())
    out, job = tmp_path / "killed", uuid.uuid4().hex
    proc = _start(_train_argv(beauty, out, "can-dien", {}, *args, "--max-restarts", "1"), _env(CANCTR_TEST_JOB=job))
    try:
        state, deadline, killed = out / "checkpoint" / "train_state.json", time.monotonic() + TIMEOUT, None
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                step = json.loads(state.read_text())["step"]
            except (OSError, ValueError, KeyError):  # not written yet, or being swapped in
                step = 0
            pids = _pids_of(job, 1) if step > 0 else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = step
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=RESTART_TIMEOUT)
    finally:
        _stop(proc)
    assert killed is not None, "the run ended before rank 1 could be killed mid-epoch"
    assert proc.returncode == 0, stderr[-4000:]
    log = (out / "train.log").read_text()
    found = re.search(r"resumed from checkpoint\S*: epoch 0 step (\d+)", log)
    assert found, log  # the restarted group resumed (TORCHELASTIC_RESTART_COUNT > 0)
    resumed_at = int(found.group(1))
    assert resumed_at >= killed and resumed_at % 10 == 0
    w_ref, w = _weights(ref), _weights(out)
    assert w.keys() == w_ref.keys() and all(torch.equal(w[k], w_ref[k]) for k in w_ref)
    m_ref, m = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert {k: m[k] for k in ("auc", "gauc", "logloss", "train_samples")} == {
        k: m_ref[k] for k in ("auc", "gauc", "logloss", "train_samples")}


@pytest.mark.parametrize("shuffle_window", [1 << 20, 300])  # one permutation; several windows
@pytest.mark.parametrize("world", [2, 4])
def test_rank_batches_are_the_one_process_batch(tmp_path: Path, world: int, shuffle_window: int) -> None:
    """With length bucketing on, rank r's batch s (B/W samples) is positions r, r + W, ... of the 1-process
    batch s at batch B, for every step; only the last n % W samples of the epoch's order go to no rank."""
    from synth import make_prepared

    from canctr.data.batch import BatchLoader, load_split
    from canctr.data.schema import Schema

    n, B = 1003, 32
    data = make_prepared(tmp_path, n_train=n)
    spec = Schema.load(data).spec
    cols = load_split(data, "train", spec)

    def loader(batch: int, rank: int = 0, w: int = 1) -> BatchLoader:
        return BatchLoader(cols, spec, batch_size=batch, shuffle=True, seed=5, bucket=4, rank=rank, world_size=w,
                           shuffle_window=shuffle_window)

    usable = n // world * world
    for epoch in (0, 1):
        one = [b["item"].tolist() for b in loader(B).iter_epoch(epoch)]
        flat = [i for b in one for i in b][:usable]
        for r in range(world):
            got = [b["item"].tolist() for b in loader(B // world, r, world).iter_epoch(epoch)]
            assert len(got) == len(one)
            for s, items in enumerate(got):
                assert items == flat[s * B : (s + 1) * B][r::world], (epoch, r, s)
        assert loader(B).order(epoch).tolist()[:usable][1::world] == loader(B // world, 1, world).order(epoch).tolist()


def test_launcher_errors_are_one_line(beauty: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from canctr.cli import main

    base = ["train", "--data", str(beauty), "--model", "can-dnn", "--out", str(tmp_path / "r")]
    for extra, msg in ((["--nproc", "0"], "--nproc must be >= 1, got 0"),
                       (["--nproc", "3"], "--batch-size 128 is the global batch and must be divisible by"),
                       (["--nnodes", "2"], "--nnodes needs --nproc"),
                       (["--nproc", "1", "--nnodes", "2"], "--nnodes > 1 needs --rdzv-endpoint")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
