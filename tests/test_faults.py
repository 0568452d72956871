"""Surviving faults: kill -9 mid-epoch then `--resume` (real subprocesses), damaged checkpoints (checksums, the
fall back to an older one), and the pre-flight checks of the run directory (writable, free disk)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synth import make_prepared

import canctr
from canctr.cli import main
from canctr.train import checkpoint as ckpt
from canctr.train.checkpoint import CheckpointError, checkpoints, load_model, save_checkpoint
from canctr.train.loop import TrainConfig, fit

# ------------------------------------------------------------------------ kill -9 in a real `canctr train`

N_TRAIN, BATCH, EVERY, EPOCHS = 8192, 16, 16, 2
STEPS = N_TRAIN // BATCH  # per epoch
KILL_SEED = int(os.environ.get("CANCTR_KILL_SEED", "12"))  # the kill steps below are drawn from it


@pytest.fixture(scope="module")
def big_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough steps (2 x 512) that a run lasts about a second after start-up, for the test to kill it in."""
    return make_prepared(tmp_path_factory.mktemp("synth"), n_train=N_TRAIN, n_test=512)


def start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    """`python -m canctr.cli train` with a tiny DNN, one thread (the same arithmetic in every run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(canctr.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "canctr.cli", "train", "--data", str(data), "--model", "dnn", "--out", str(out),
           "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--checkpoint-every", str(EVERY), "--device", "cpu",
           "--no-progress", "--set", "embed_dim=4", "--set", "mlp=[16]", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out


def newest_step(run: Path) -> int:
    """The step of run/checkpoint, -1 while there is none (or it is being swapped in)."""
    try:
        return json.loads((run / "checkpoint" / "manifest.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def newest_state(run: Path) -> tuple[Path, dict]:
    """The newest checkpoint (checkpoint/, or checkpoint-STEP if the kill fell between a save's renames)."""
    newest = checkpoints(run / "checkpoint")[0]
    return newest, json.loads((newest / "train_state.json").read_text())


def kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled without sleeping: checkpoints are milliseconds apart)."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[0]}"
        assert time.monotonic() < end, "timed out waiting for the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def weights_and_metrics(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    metrics = json.loads((run / "metrics.json").read_text())
    return load_file(run / "checkpoint" / "model.safetensors"), {k: metrics[k] for k in ("auc", "gauc", "logloss")}


def assert_bit_identical(run: Path, reference: tuple[dict[str, torch.Tensor], dict[str, float]]) -> None:
    weights, metrics = weights_and_metrics(run)
    ref_weights, ref_metrics = reference
    assert weights.keys() == ref_weights.keys()
    for name, tensor in ref_weights.items():
        assert torch.equal(weights[name], tensor), name
    assert metrics == ref_metrics  # exact floats, not approx


@pytest.fixture(scope="module")
def reference(big_data: Path, tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("ref") / "run"
    finish(start(big_data, run))
    return weights_and_metrics(run)


@pytest.fixture(scope="module")
def killed(big_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed -9 in the middle of epoch 0, after a checkpoint at a random step (at least two exist)."""
    target = random.Random(KILL_SEED).randrange(3 * EVERY, STEPS - 2 * EVERY)
    print(f"kill -9 after the first checkpoint at or past step {target} (CANCTR_KILL_SEED={KILL_SEED})")
    run = tmp_path_factory.mktemp("killed") / "run"
    proc = start(big_data, run)
    kill_when(proc, lambda: newest_step(run) >= target)
    newest, state = newest_state(run)
    print(f"killed; newest checkpoint {newest.name} at epoch {state['epoch']} step {state['step']}")
    assert not (run / "metrics.json").exists() and not state["finished"]
    # keep_checkpoints defaults to 2; a third when the kill fell between a save's rename and its pruning
    assert len(checkpoints(run / "checkpoint")) >= 2
    return run


def test_kill_9_mid_epoch_then_resume_is_bit_identical(big_data, killed, reference, tmp_path):
    run = Path(shutil.copytree(killed, tmp_path / "run"))
    newest, state = newest_state(run)
    finish(start(big_data, run, "--resume"))
    assert_bit_identical(run, reference)
    assert f"resumed from {newest.name}: epoch {state['epoch']} step {state['step']}" in (run / "train.log").read_text()


def test_truncated_newest_checkpoint_falls_back_to_the_older_one(big_data, killed, reference, tmp_path):
    run = Path(shutil.copytree(killed, tmp_path / "run"))
    newest, older = checkpoints(run / "checkpoint")[:2]
    state = json.loads((older / "train_state.json").read_text())
    damaged = newest / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    finish(start(big_data, run, "--resume"))
    log = (run / "train.log").read_text()
    assert f"{damaged}: checksum mismatch (truncated or corrupted)" in log  # the warning names file and reason
    assert f"resumed from {older.name}: epoch {state['epoch']} step {state['step']}" in log
    assert_bit_identical(run, reference)


def test_kill_9_while_a_checkpoint_is_written(big_data, reference, tmp_path):
    """Killed the moment a checkpoint's temp directory appears (usually mid-write): the half-written one is
    never taken for a checkpoint, and the resumed run is still bit-identical."""
    target = random.Random(KILL_SEED + 1).randrange(EVERY, STEPS)
    print(f"kill -9 while writing the first checkpoint past step {target}")
    run = tmp_path / "run"
    proc = start(big_data, run)
    kill_when(proc, lambda: newest_step(run) >= target and any(run.glob(".checkpoint.tmp-*")))
    left = sorted(p.name for p in run.glob(".checkpoint.tmp-*"))
    print(f"killed; left behind: {left or 'nothing (the write had finished)'}")
    finish(start(big_data, run, "--resume"))
    assert_bit_identical(run, reference)
    assert not list(run.glob(".checkpoint.*"))  # the leftovers are cleared by the next save


# ---------------------------------------------------------------------- checksums, keep K, fall back (in process)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("small"))  # 512 samples: 8 steps of 64 per epoch


def cfg(data_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data_dir), model="dnn", out=str(out), batch_size=64, progress=False, epochs=2,
                checkpoint_every=2, model_config={"mlp": [8]})
    return TrainConfig(**{**base, **kw})


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "checkpoint" / "model.safetensors"), load_file(b / "checkpoint" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_last_k_checkpoints_are_kept_and_verify(data_dir, tmp_path):
    fit(cfg(data_dir, tmp_path / "run", keep_checkpoints=3))
    found = checkpoints(tmp_path / "run" / "checkpoint")
    # epoch 1 ends at step 16 (the newest); before it the checkpoints at 14 and 12 (8 steps per epoch)
    assert [p.name for p in found] == ["checkpoint", "checkpoint-000014", "checkpoint-000012"]
    for p in found:
        ckpt.verify_checkpoint(p)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint", "checkpoint-000012", "checkpoint-000014", "config.json", "metrics.json", "train.log"]
    # a fresh run (no --resume) into the same directory drops them first: never a fall back to another run's
    fit(cfg(data_dir, tmp_path / "run", keep_checkpoints=1, epochs=1, checkpoint_every=0))
    assert [p.name for p in checkpoints(tmp_path / "run" / "checkpoint")] == ["checkpoint"]


@pytest.mark.parametrize(("name", "damage"), [
    ("model.safetensors", lambda b: b[:-8]),  # truncated
    ("model.safetensors", lambda b: b[:-1] + bytes([b[-1] ^ 1])),  # one bit flipped
    ("schema.json", lambda b: b.replace(b'"item": 60', b'"item": 61')),  # valid JSON, other content
    ("model.json", lambda b: b""),
])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(data_dir, tmp_path, capsys, name, damage):
    run = tmp_path / "run"
    fit(cfg(data_dir, run, epochs=1, checkpoint_every=0))
    path = run / "checkpoint" / name
    path.write_bytes(damage(path.read_bytes()))
    message = f"{path}: checksum mismatch (truncated or corrupted)"
    with pytest.raises(CheckpointError) as err:
        load_model(run / "checkpoint")
    assert str(err.value) == message
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 2  # evaluate, export, predict, serve load so
    assert capsys.readouterr().err == f"canctr evaluate: error: {message}\n"


def test_a_checkpoint_without_checksums_still_loads(data_dir, tmp_path):
    """Written before checksums (no manifest.json): loaded unverified; a damaged file is still named."""
    run = tmp_path / "run"
    fit(cfg(data_dir, run, epochs=1, checkpoint_every=0))
    (run / "checkpoint" / "manifest.json").unlink()
    model, _ = load_model(run)
    saved = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    path = run / "checkpoint" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=f"^{path}: unreadable"):
        load_model(run)


def test_resume_survives_a_kill_between_the_renames_and_skips_half_written_saves(data_dir, tmp_path,
                                                                                 monkeypatch):
    """The states a kill inside save_checkpoint can leave: the newest renamed to checkpoint-STEP and not yet
    replaced, and a temp directory with a partial file. Resume takes the newest complete one."""
    ref = fit(cfg(data_dir, tmp_path / "ref"))
    run = tmp_path / "run"
    real_save, calls = ckpt.save_checkpoint, {"n": 0}

    def dying_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the fifth save (epoch 1 step 2): as if killed just before it
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr("canctr.train.loop.save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg(data_dir, run))
    monkeypatch.undo()
    step = ckpt._manifest_step(run / "checkpoint")
    assert step == 8  # epoch 0's end
    os.replace(run / "checkpoint", run / f"checkpoint-{step:06d}")  # killed between the two renames
    partial = run / ".checkpoint.tmp-999999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    resumed = fit(cfg(data_dir, run), resume=True)
    assert "resumed from checkpoint-000008: epoch 1 step 0" in (run / "train.log").read_text()
    assert (resumed["auc"], resumed["logloss"]) == (ref["auc"], ref["logloss"])
    assert same_weights(run, tmp_path / "ref")
    assert not partial.exists()


def test_resume_with_no_checkpoint_that_verifies_is_a_clear_error(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    fit(cfg(data_dir, run))
    found = checkpoints(run / "checkpoint")
    for p in found:
        (p / "optimizer.safetensors").write_bytes(b"")
    rc = main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(run), "--batch-size", "64",
               "--epochs", "2", "--checkpoint-every", "2", "--set", "mlp=[8]", "--no-progress", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"canctr train: error: {run / 'checkpoint'}: no checkpoint verifies (")
    for p in found:
        assert f"{p / 'optimizer.safetensors'}: checksum mismatch" in err


def test_keep_checkpoints_must_be_at_least_one(data_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1, got 0"):
        cfg(data_dir, tmp_path / "run", keep_checkpoints=0)
    rc = main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(tmp_path / "run"),
               "--keep-checkpoints", "0"])
    assert rc == 2
    assert capsys.readouterr().err == "canctr train: error: --keep-checkpoints must be >= 1, got 0\n"


def test_save_keeps_older_ones_only_below_its_step(data_dir, tmp_path):
    """After a fall back, the newer checkpoints belong to a future that will not happen: the next save drops
    them, whatever their state, instead of keeping them as older ones."""
    from canctr.data.schema import Schema
    from canctr.models import create_model

    schema = Schema.load(data_dir)
    model = create_model("dnn", schema, {"mlp": [8]})
    path = tmp_path / "checkpoint"
    for step in (10, 20, 30):
        save_checkpoint(path, model, schema, step=step, keep=3)
    assert [p.name for p in checkpoints(path)] == ["checkpoint", "checkpoint-000020", "checkpoint-000010"]
    save_checkpoint(path, model, schema, step=15, keep=3)  # resumed from 10, saved again at 15
    assert [p.name for p in checkpoints(path)] == ["checkpoint", "checkpoint-000010"]
    assert ckpt._manifest_step(path) == 15


# ------------------------------------------------------------------------------- pre-flight: run directory, disk


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: root ignores file permissions, so chmod cannot make a read-only "
                           "directory (the under-a-file test covers the same check)")
def test_read_only_run_directory_fails_before_training(data_dir, tmp_path, capsys):
    parent = tmp_path / "ro"
    (parent / "run").mkdir(parents=True)
    parent.chmod(0o555)
    (parent / "run").chmod(0o555)
    try:
        for out in (parent / "run", parent / "new"):
            rc = main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(out), "--no-progress"])
            err = capsys.readouterr().err
            assert rc == 2 and err.startswith(f"canctr train: error: {out}: the run directory is not writable (")
            assert err.count("\n") == 1, err
    finally:
        (parent / "run").chmod(0o755)
        parent.chmod(0o755)


def test_run_directory_that_cannot_be_made_fails_before_training(data_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    rc = main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == f"canctr train: error: {out}: the run directory is not writable (Not a directory)\n"


def test_full_disk_fails_before_training(data_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))  # 10 MiB left
    rc = main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(run), "--no-progress",
               "--keep-checkpoints", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"canctr train: error: {run}: not enough free disk for checkpoints: needs ")
    assert "(4 checkpoints of ~" in err and "keep_checkpoints=3" in err and err.endswith(", 10.0 MiB free\n")
    assert not (run / "checkpoint").exists() and "step" not in (run / "train.log").read_text()  # nothing trained
    # with room for them, the same run goes ahead
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**40))
    assert main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(run), "--no-progress"]) == 0


def test_disk_estimate_counts_weights_and_adam_moments(data_dir):
    from canctr.data.schema import Schema
    from canctr.models import create_model

    model = create_model("dnn", Schema.load(data_dir), {"mlp": [8]})
    params = sum(p.numel() * 4 for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert ckpt.checkpoint_bytes(model) == 3 * params + buffers
