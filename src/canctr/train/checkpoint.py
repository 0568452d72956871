"""Checkpoints as plain files, checksummed and written atomically (temp dir, fsync, rename), never pickle.

RUN_DIR/checkpoint/          the newest checkpoint: what export, evaluate, serve and predict load
    model.safetensors   weights
    model.json          {"model": name, "config": {...}, "canctr_version": ...}
    schema.json         the dataset Schema the model was built for (vocab sizes)
    optimizer.safetensors + train_state.json   (optional) optimizer tensors, param groups, epoch/step, rng
    manifest.json       {"step": training step, "sha256": {file: digest}} for every file above
RUN_DIR/checkpoint-000120/   older checkpoints named by their step (the newest keep - 1 of them): what
                             `resume_training` falls back on when a newer one does not verify
A checkpoint directory is loadable alone: `load_model(path)` rebuilds the model without the data. Every
load checks the files it reads against the manifest; a directory without one (written before checksums)
loads unverified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from canctr import __version__
from canctr.data.schema import Schema
from canctr.models import create_model
from canctr.models.registry import config_dict

log = logging.getLogger("canctr.train")

MANIFEST = "manifest.json"
MODEL_FILES = ("model.json", "schema.json", "model.safetensors")
STATE_FILES = ("train_state.json", "optimizer.safetensors")
_DISK_MARGIN = 32 * 2**20  # train.log, metrics.json, config.json and filesystem slack


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupted, or the run directory cannot hold checkpoints.
    A ValueError, like the other user-facing errors, so the command line prints it as one line."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared/non-contiguous storage; clone to be safe (tiny cost, only at save time)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{name}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries (the names renamed into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Remove a directory by renaming it to a hidden name first: a kill mid-delete never leaves a partial
    directory under a checkpoint's name."""
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _older_checkpoints(path: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the older checkpoints beside `path` (`path-STEP`), newest first."""
    name = re.compile(re.escape(path.name) + r"-(\d+)")
    found = [(int(m[1]), p) for p in path.parent.glob(f"{path.name}-*") if (m := name.fullmatch(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def checkpoints(path: str | os.PathLike) -> list[Path]:
    """The checkpoint `path` and its older siblings `path-STEP` that exist, newest first."""
    path = Path(path)
    return ([path] if path.is_dir() else []) + [p for _, p in _older_checkpoints(path)]


def _clear_leftovers(path: Path) -> None:
    """Temp and trash directories of saves or deletes that were killed (one writer per run directory)."""
    for leftover in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}*.trash-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def remove_checkpoints(path: str | os.PathLike) -> None:
    """Delete `path`, its older siblings and what killed saves left behind (a fresh run starts clean)."""
    path = Path(path)
    for ckpt in checkpoints(path):
        _discard(ckpt)
    _clear_leftovers(path)


def _manifest_step(path: Path) -> int | None:
    """The step recorded in a checkpoint's manifest; None when it has none or the manifest is unreadable."""
    try:
        step = json.loads((path / MANIFEST).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    schema: Schema,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
    step: int | None = None,
    keep: int = 1,
) -> Path:
    """Write a checkpoint directory with a manifest of checksums, atomically: the files are written into a
    temp directory and flushed to the disk, which is then renamed to `path`. A crash or kill at any point
    leaves the earlier checkpoints intact and never a partial one under a checkpoint's name.

    `step` (training progress, e.g. optimizer steps done) names this checkpoint once a newer one replaces it:
    with `keep` > 1 the newest keep - 1 older ones stay beside `path` as `path-STEP`. Older ones at `step` or
    later are from a run that was resumed from before them (or started afresh), and are dropped.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    path = Path(path)
    _clear_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        save_file(_state_tensors(model), str(tmp / "model.safetensors"))
        meta = {"model": model.model_name, "config": config_dict(model), "canctr_version": __version__}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        schema.save(tmp / "schema.json")
        if optimizer is not None:
            tensors, rest = _optimizer_files(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            state = {"optimizer": rest, **(train_state or {})}
            (tmp / "train_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        sums = {}
        for file in sorted(tmp.iterdir()):
            _fsync(file)
            sums[file.name] = sha256_file(file)
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "sha256": sums}, indent=2, sort_keys=True) + "\n")
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
    except OSError as e:  # a full disk or a directory made read-only since the pre-flight check
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{path}: cannot write the checkpoint ({e.strerror or e})") from None
    # swap in: `path` is the newest; the one it replaces becomes path-STEP or goes
    if path.exists():
        prev = _manifest_step(path)
        if keep > 1 and prev is not None and step is not None and prev < step:
            older = path.with_name(f"{path.name}-{prev:06d}")
            if older.exists():
                _discard(older)
            os.replace(path, older)
        else:
            _discard(path)
    os.replace(tmp, path)
    _fsync(path.parent)
    older = _older_checkpoints(path)
    stale = [p for s, p in older if step is not None and s >= step]
    kept = [p for _, p in older if p not in stale]
    for p in stale + kept[keep - 1:]:
        _discard(p)
    return path


def verify_checkpoint(path: str | os.PathLike, names: tuple[str, ...] | None = None) -> None:
    """Check files of a checkpoint directory against the sha256 in its manifest: `names`, or every file it
    lists. Raises CheckpointError naming the first file that is missing or does not match. A checkpoint
    without a manifest (written before checksums) passes unverified."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        log.info("%s: no %s (written before checksums); loading it unverified", path, MANIFEST)
        return
    try:
        sums = json.loads((path / MANIFEST).read_text()).get("sha256")
    except (ValueError, AttributeError):  # not JSON (a ValueError), or not an object
        sums = None
    if not isinstance(sums, dict):
        raise CheckpointError(f"{path / MANIFEST}: unreadable (truncated or corrupted)")
    for name in sums if names is None else names:
        file = path / name
        if name not in sums:
            raise CheckpointError(f"{file}: not in the checkpoint's {MANIFEST}")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (listed in the checkpoint's {MANIFEST})")
        if sha256_file(file) != sums[name]:
            raise CheckpointError(f"{file}: checksum mismatch (truncated or corrupted)")


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (ValueError, UnicodeDecodeError) as e:  # only unverified (pre-checksum) files get here
        raise CheckpointError(f"{file}: unreadable, not valid JSON ({e})") from None


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except SafetensorError as e:  # only unverified (pre-checksum) files get here
        raise CheckpointError(f"{file}: unreadable ({e})") from None


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, Schema]:
    """Rebuild the model from a checkpoint directory (or a run directory: its checkpoint/) and load its
    weights (strict), after checking the files against the manifest."""
    path = Path(path)
    if not (path / "model.json").exists() and (path / "checkpoint" / "model.json").exists():
        path = path / "checkpoint"
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path}: not a canctr checkpoint (no model.json)")
    verify_checkpoint(path, MODEL_FILES)
    meta = _read_json(path / "model.json")
    schema = Schema.load(path / "schema.json")
    model = create_model(meta["model"], schema, meta["config"])
    model.load_state_dict(_read_tensors(path / "model.safetensors"), strict=True)
    return model.to(device), schema


def _restore_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = _read_json(path / "train_state.json")
    opt = state.pop("optimizer")
    tensors = _read_tensors(path / "optimizer.safetensors")
    per_param: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = val
    for pid, sc in opt["scalars"].items():
        per_param.setdefault(int(pid), {}).update(sc)
    optimizer.load_state_dict({"state": per_param, "param_groups": opt["param_groups"]})
    return state


def load_training_state(
    path: str | os.PathLike, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore optimizer tensors + param groups into `optimizer` (files verified first); return the rest of
    train_state.json."""
    path = Path(path)
    verify_checkpoint(path, STATE_FILES)
    return _restore_optimizer(path, optimizer)


def resume_training(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint at `path` (RUN_DIR/checkpoint, then its older siblings) that verifies into
    `model` and `optimizer`: -> (its directory, its train state), or None when there is none to resume.

    A newer one that does not verify is logged (name and reason) and skipped; when there are checkpoints but
    none verifies, raises CheckpointError with each one's reason. Checkpoints of weights only (no training
    state, e.g. an untrained benchmark run) are not resumable and skipped.
    """
    failed: list[str] = []
    for ckpt in checkpoints(path):
        try:
            verify_checkpoint(ckpt)  # every file, before anything is loaded
            if not (ckpt / "train_state.json").exists():
                continue
            model.load_state_dict(_read_tensors(ckpt / "model.safetensors"), strict=True)
            state = _restore_optimizer(ckpt, optimizer)
        except CheckpointError as e:
            log.warning("checkpoint %s is unusable, falling back to an older one: %s", ckpt, e)
            failed.append(str(e))
            continue
        return ckpt, state
    if failed:
        raise CheckpointError(f"{path}: no checkpoint verifies ({'; '.join(failed)}); "
                              "delete them to start afresh")
    return None


def check_writable(run_dir: str | os.PathLike) -> None:
    """Create `run_dir` and a file in it and remove the file: a read-only run directory fails here, before
    training, instead of at the first checkpoint."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"{run_dir}: the run directory is not writable ({e.strerror or e})") from None


def checkpoint_bytes(model: nn.Module) -> int:
    """Estimated size of one training checkpoint: the weights and buffers, plus two Adam moments of every
    trainable parameter (both optimizers, adam and lazy_adam, keep them)."""
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return tensors + moments


def check_disk_space(path: str | os.PathLike, model: nn.Module, keep: int) -> None:
    """Fail before training unless the disk holding checkpoint `path` has room for keep + 1 checkpoints (the
    kept ones and the one being written) plus a margin; the checkpoints already there count as room, since
    new ones replace them."""
    path = Path(path)
    size = checkpoint_bytes(model)
    held = sum(f.stat().st_size for ckpt in checkpoints(path) for f in ckpt.iterdir() if f.is_file())
    need = max(0, (keep + 1) * size - held) + _DISK_MARGIN
    free = shutil.disk_usage(path.parent).free
    if free < need:
        mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
        raise CheckpointError(
            f"{path.parent}: not enough free disk for checkpoints: needs {mib(need)} ({keep + 1} checkpoints of "
            f"~{mib(size)}: keep_checkpoints={keep} plus the one being written, and {mib(_DISK_MARGIN)} margin), "
            f"{mib(free)} free"
        )
