"""Export a trained run to ONNX or TorchScript: a tensor-only model plus a manifest beside it.

    canctr export --run RUN_DIR --format onnx|torchscript --out DIR
    export_run(run_dir, "onnx", out_dir)

`ExportModule` wraps any registered model so that it takes plain tensors instead of a `Batch`. Its inputs,
in this order (`input_specs(spec)`; names are stable: a spec field name never contains a '.'):

    <field>            int64 [batch]             every categorical field, in spec order (sparse fields
    <field>            int64 [batch, len_<g>]    every sequence field of group g, 0-padded on the right)
    lengths.<g>        int64 [batch]             the valid positions of each sequence group, spec order
    dense.values       float32 [batch, D]        the spec's dense fields, normalised (only when D > 0)
    row.user           int64 [batch]             models that share the user side (`shares_user_side`):
                                                 each row's user; the user-side fields and their groups'
                                                 lengths then have a "users" axis instead of "batch"

and it returns `prob` (the click probability, sigmoid of the logit) and `logit`, both float32 [batch]. One
row is one (user, candidate) pair: the candidate count is the batch axis. The masks are built inside from
the lengths, so padding values are never read. Sparse inputs are vocabulary indices (0 = padding /
unknown); `canctr.serve.vocab.RawIdMapper` maps raw ids with the manifest and the copied vocabularies.

OUT/ holds `model.onnx` (the torch.export based exporter, `torch.onnx.export(dynamo=True)`, opset
`ONNX_OPSET`; batch and each group's length are dynamic axes) or `model.pt` (`torch.jit.trace`; the
recurrent loops are scripted, so any batch size and length run), `manifest.json` (see `build_manifest`)
and `vocab/<table>.json`. The export is written to a temporary directory, checked against the eager
model on inputs of another batch size and other widths than it was exported with, and only then renamed
to OUT: a model that cannot be exported raises `ExportError` naming the model and the reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from canctr import __version__
from canctr.data.batch import Batch, lengths_to_mask, user_side
from canctr.data.schema import Schema
from canctr.data.spec import FeatureSpec
from canctr.models.base import shares_user_side
from canctr.models.registry import config_dict
from canctr.train.checkpoint import sha256_file

ONNX_OPSET = 18
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
MANIFEST_VERSION = 1
PARITY_TOL = 1e-5  # max abs difference of the probabilities, exported vs eager, checked at export time
DENSE_INPUT = "dense.values"
USER_INPUT = "row.user"  # the user of each row, for a model exported with its user side shared
OUTPUTS = ("prob", "logit")


class ExportError(ValueError):
    """A run cannot be exported; the message is one line naming the model (or run) and the reason."""


@dataclass(frozen=True)
class InputSpec:
    """One input of an exported model. shape: axis names, "batch" or "len_<group>" (dynamic) or an int."""

    name: str
    kind: str  # "sparse" | "lengths" | "dense" | "user"
    dtype: str  # "int64" | "float32"
    shape: tuple[str | int, ...]
    field: str = ""  # sparse: the spec field
    group: str = ""  # sequence fields and lengths: the length group

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "dtype": self.dtype, "shape": list(self.shape)}
        if self.field:
            d["field"] = self.field
        if self.group:
            d["group"] = self.group
        return d


def length_axis(group: str) -> str:
    return f"len_{group}"


def input_specs(spec: FeatureSpec, shared: bool = False) -> list[InputSpec]:
    """The exported model's inputs in call order (see the module docstring); `shared`: the user-shared form."""
    fields, groups = user_side(spec) if shared else (frozenset(), frozenset())
    out = []
    for f in spec.sparse:
        rows = "users" if f.name in fields else "batch"
        if f.kind == "sequence":
            out.append(InputSpec(f.name, "sparse", "int64", (rows, length_axis(f.group)), f.name, f.group))
        else:
            out.append(InputSpec(f.name, "sparse", "int64", (rows,), f.name))
    out += [InputSpec(f"lengths.{g.name}", "lengths", "int64", ("users" if g.name in groups else "batch",),
                      group=g.name) for g in spec.sequences]
    if spec.dense:
        out.append(InputSpec(DENSE_INPUT, "dense", "float32", ("batch", len(spec.dense))))
    if shared:
        out.append(InputSpec(USER_INPUT, "user", "int64", ("batch",)))
    return out


class _TensorBatch(Batch):
    """A Batch whose `size` stays a (symbolic or traced) tensor dimension, not a Python int: tracing and
    torch.export would otherwise bake the example's batch size into the graph."""

    @property
    def size(self):  # noqa: ANN201 - an int, a SymInt or a traced size
        return self.label.shape[0]


class ExportModule(nn.Module):
    """Tensor-only wrapper of a model (eval mode): forward(*inputs in `input_specs` order) -> (prob [B], logit [B])."""

    def __init__(self, model: nn.Module, spec: FeatureSpec) -> None:
        super().__init__()
        self.model = model.eval()
        self.shared = shares_user_side(model)  # takes the user-shared form (USER_INPUT)
        self.user_fields, self.user_groups = user_side(spec) if self.shared else (frozenset(), frozenset())
        self.sparse = [f.name for f in spec.sparse]
        self.groups = [g.name for g in spec.sequences]
        # one field per group gives the group's padded width (every field of a group has the same width)
        self.width_field = {g: spec.group_fields(g)[0].name for g in self.groups}
        self.has_dense = bool(spec.dense)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        n, k = len(self.sparse), len(self.groups)
        sparse = dict(zip(self.sparse, inputs[:n]))
        lengths = dict(zip(self.groups, inputs[n : n + k]))
        dense = inputs[n + k] if self.has_dense else None
        user = inputs[-1] if self.shared else None
        masks = {g: lengths_to_mask(lengths[g], sparse[self.width_field[g]].shape[1]) for g in self.groups}
        B = (user if user is not None else inputs[0]).shape[0]
        batch = _TensorBatch(label=inputs[0].new_zeros(B, dtype=torch.float32), group=inputs[0].new_zeros(B),
                             sparse=sparse, lengths=lengths, masks=masks, dense=dense, user=user,
                             user_fields=self.user_fields, user_groups=self.user_groups)
        logit = self.model(batch).logits
        return torch.sigmoid(logit), logit


def tensor_inputs(batch: Batch, spec: FeatureSpec, shared: bool = False) -> tuple[Tensor, ...]:
    """A `Batch` as the exported model's inputs, in `input_specs(spec, shared)` order. For the shared form a batch
    with one row per candidate is given as its own users (row.user = 0..B-1); for the other, a user-shared batch
    is expanded."""
    if not shared:
        batch = batch.expanded()
    out = [batch.sparse[f.name] for f in spec.sparse] + [batch.lengths[g.name] for g in spec.sequences]
    if spec.dense:
        if batch.dense is None:
            raise ValueError(f"the spec has dense fields {[f.name for f in spec.dense]} but the batch carries none")
        out.append(batch.dense.float())
    if shared:
        out.append(batch.user if batch.user is not None else torch.arange(batch.size, device=batch.label.device))
    return tuple(out)


def example_inputs(schema: Schema, batch: int, widths: dict[str, int], seed: int = 0,
                   users: int | None = None) -> tuple[Tensor, ...]:
    """Random valid inputs: ids in each table's range, lengths in [0, width] (row 0 full, row 1 empty), ids
    beyond a row's length 0 (padding). Shapes follow `input_specs(spec, shared=users is not None)`; with `users`
    the user-side fields have that many rows and each candidate row a random user (the first and last drawn)."""
    spec = schema.spec
    fields, groups = user_side(spec) if users is not None else (frozenset(), frozenset())
    g = torch.Generator().manual_seed(seed)
    lengths = {}
    for grp in spec.sequences:
        w, n_rows = widths[grp.name], users if grp.name in groups else batch
        n = torch.randint(0, w + 1, (n_rows,), generator=g)
        n[0] = w
        if n_rows > 1:
            n[1] = 0
        lengths[grp.name] = n
    out = []
    for f in spec.sparse:
        rows, n_rows = schema.vocab[f.table], users if f.name in fields else batch
        if f.kind == "sequence":
            w = widths[f.group]
            ids = torch.randint(0, rows, (n_rows, w), generator=g)
            out.append(ids * lengths_to_mask(lengths[f.group], w))
        else:
            out.append(torch.randint(0, rows, (n_rows,), generator=g))
    out += [lengths[grp.name] for grp in spec.sequences]
    if spec.dense:
        out.append(torch.randn(batch, len(spec.dense), generator=g))
    if users is not None:
        user = torch.randint(0, users, (batch,), generator=g)
        user[0], user[-1] = 0, users - 1
        out.append(user)
    return tuple(out)


def _example_widths(spec: FeatureSpec, base: int) -> dict[str, int]:
    """Distinct widths >= 2 per group, none equal to the example batch: torch.export specialises sizes 0 and
    1 and would tie axes whose example sizes coincide."""
    return {g.name: base + i for i, g in enumerate(spec.sequences)}


# -------------------------------------------------------------------------------------------- exporters

EXAMPLE_BATCH = 5
CHECK_BATCH = 3


def _example(module: ExportModule, schema: Schema, batch: int, base: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Example inputs in `module`'s form: with fewer users than rows when it shares the user side (a users axis
    distinct from the batch and the widths, as `_example_widths` explains)."""
    users = max(2, (batch + 1) // 2) if module.shared else None
    return example_inputs(schema, batch, _example_widths(schema.spec, base), seed=seed, users=users)


def export_onnx(module: ExportModule, schema: Schema, path: Path, opset: int = ONNX_OPSET) -> None:
    """Write `module` as ONNX (torch.export based exporter), batch and every group length dynamic."""
    from canctr.layers.sequence import onnx_translations

    spec = schema.spec
    specs = input_specs(spec, module.shared)
    args = _example(module, schema, EXAMPLE_BATCH, 7)
    dims = {"batch": torch.export.Dim("batch"), "users": torch.export.Dim("users")}
    for g in spec.sequences:
        dims[length_axis(g.name)] = torch.export.Dim(length_axis(g.name))
    dynamic = tuple({i: dims[a] for i, a in enumerate(s.shape) if isinstance(a, str)} for s in specs)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=(dynamic,),
                              input_names=[s.name for s in specs], output_names=list(OUTPUTS), opset_version=opset,
                              external_data=False, verbose=False, custom_translation_table=onnx_translations())
    finally:
        quiet.setLevel(level)


def export_torchscript(module: ExportModule, schema: Schema, path: Path) -> None:
    """Write `module` traced (`torch.jit.trace`); its loops (AUGRU) are scripted functions, so they stay loops."""
    args = _example(module, schema, EXAMPLE_BATCH, 7)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings of shape-dependent Python; the parity check decides
        traced = torch.jit.trace(module, args, check_trace=False)
    traced.save(str(path))


def run_exported(path: str | os.PathLike, inputs: tuple[Tensor, ...], names: list[str]) -> tuple[Tensor, Tensor]:
    """Run an exported file once (model.onnx via onnxruntime, model.pt via torch.jit.load) -> (prob, logit)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        prob, logit = session.run(list(OUTPUTS), {n: x.numpy() for n, x in zip(names, inputs)})
        return torch.from_numpy(prob), torch.from_numpy(logit)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 marks TorchScript deprecated
        prob, logit = torch.jit.load(str(path), map_location="cpu")(*inputs)
        return prob, logit


def _check_parity(module: ExportModule, schema: Schema, path: Path) -> float:
    """Exported vs eager probabilities on inputs of another batch size and other widths than the example;
    -> max abs difference. ONNX is checked only where onnxruntime is installed."""
    if path.suffix == ".onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return float("nan")
    names = [s.name for s in input_specs(schema.spec, module.shared)]
    worst = 0.0
    for batch, base, seed in ((CHECK_BATCH, 2, 1), (EXAMPLE_BATCH + 6, 11, 2)):
        inputs = _example(module, schema, batch, base, seed)
        with torch.no_grad():
            eager = module(*inputs)[0]
        got = run_exported(path, inputs, names)[0]
        if got.shape != eager.shape:
            raise RuntimeError(f"output shape {tuple(got.shape)} != eager {tuple(eager.shape)} (a fixed axis)")
        worst = max(worst, float((got - eager).abs().max()))
    if not worst <= PARITY_TOL:
        raise RuntimeError(f"exported and eager probabilities differ by {worst:.3g} (> {PARITY_TOL})")
    return worst


# -------------------------------------------------------------------------------------------- runs


def _checkpoint_dir(run_dir: Path) -> Path:
    ckpt = run_dir / "checkpoint" if (run_dir / "checkpoint" / "model.json").exists() else run_dir
    if not (ckpt / "model.json").exists():
        raise ExportError(f"{run_dir}: not a training run (no checkpoint/model.json)")
    return ckpt


def _data_dir(run_dir: Path, data: str | os.PathLike | None) -> Path | None:
    """The prepared data directory: `data`, else the one in RUN_DIR/config.json (None when unknown)."""
    if data is not None:
        return Path(data)
    cfg = run_dir / "config.json"
    if cfg.exists():
        try:
            d = json.loads(cfg.read_text()).get("data")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            d = None
        if d:
            p = Path(d)
            return p if p.is_absolute() or p.exists() else (run_dir / p)
    return None


def vocab_sources(schema: Schema, data_dir: Path | None) -> dict[str, dict[str, Any]]:
    """table -> how its raw ids map: {"file": path of vocab/<table>.json} or {"hash_buckets": n}. Raises
    ExportError naming the table when a vocabulary file is missing."""
    out: dict[str, dict[str, Any]] = {}
    for table, fields in schema.spec.tables().items():
        buckets = fields[0].hash_buckets
        if buckets:
            out[table] = {"hash_buckets": buckets}
            continue
        path = None if data_dir is None else data_dir / "vocab" / f"{table}.json"
        if path is None or not path.exists():
            where = "the run names no data directory" if data_dir is None else f"{path} not found"
            raise ExportError(f"no vocabulary for table {table!r}: {where} (pass --data DIR, the prepared data)")
        out[table] = {"file": path}
    return out


def build_manifest(model: nn.Module, schema: Schema, fmt: str, checkpoint: Path,
                   vocab: dict[str, dict[str, Any]], parity: float) -> dict[str, Any]:
    """The manifest.json written beside the model (every key documented in docs/serving.md)."""
    spec = schema.spec
    tables = {}
    for table, src in vocab.items():
        fields = [f.name for f in spec.tables()[table]]
        entry: dict[str, Any] = {"fields": fields, "size": schema.vocab[table],
                                 "key_type": schema.options.get("key_types", {}).get(table, "str")}
        if "hash_buckets" in src:
            entry |= {"hash_buckets": src["hash_buckets"], "hash": "canctr stable_hash v1"}
        else:
            entry["file"] = f"vocab/{table}.json"
        tables[table] = entry
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": fmt,
        "file": FORMATS[fmt],
        "exporter": ("torch.onnx.export(dynamo=True) (torch.export)" if fmt == "onnx"
                     else "torch.jit.trace (recurrent loops scripted)"),
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "canctr_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "model": model.model_name,
        "config": config_dict(model),
        "checkpoint": {"sha256": sha256_file(checkpoint / "model.safetensors"), "path": str(checkpoint)},
        "dataset": schema.dataset,
        "spec": spec.to_dict(),
        "shared_user": shares_user_side(model),  # inputs in the user-shared form (row.user)
        "inputs": [s.to_dict() for s in input_specs(spec, shares_user_side(model))],
        "outputs": [{"name": n, "dtype": "float32", "shape": ["batch"]} for n in OUTPUTS],
        "max_len": {g.name: g.max_len for g in spec.sequences},
        "vocab": tables,
        "dense": {f.name: schema.dense.get(f.name, {}) for f in spec.dense},
        "parity_max_abs_diff": None if parity != parity else parity,  # NaN: onnxruntime missing, not checked
    }


def export_run(run_dir: str | os.PathLike, fmt: str, out_dir: str | os.PathLike, *,
               data: str | os.PathLike | None = None, force: bool = False) -> dict[str, Any]:
    """Export the checkpoint of `run_dir` as `fmt` ("onnx" | "torchscript") into `out_dir`; -> the manifest.

    `data`: the prepared data directory whose vocabularies to copy (default: the run's config.json). An
    existing non-empty `out_dir` is an error unless `force` (then it is replaced, only after success).
    """
    from canctr.train.checkpoint import load_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: run directory not found")
    ckpt = _checkpoint_dir(run_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise ExportError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    model, schema = load_model(ckpt)
    model.eval()
    name = getattr(model, "model_name", "?")
    vocab = vocab_sources(schema, _data_dir(run_dir, data))
    module = ExportModule(model, schema.spec).eval()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        path = tmp / FORMATS[fmt]
        try:
            (export_onnx if fmt == "onnx" else export_torchscript)(module, schema, path)
            parity = _check_parity(module, schema, path)
        except Exception as e:  # noqa: BLE001 - any exporter failure becomes one line naming the model
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"model {name!r} cannot be exported to {fmt}: {type(e).__name__}: {reason}") from e
        (tmp / "vocab").mkdir()
        for table, src in vocab.items():
            if "file" in src:
                shutil.copyfile(src["file"], tmp / "vocab" / f"{table}.json")
        manifest = build_manifest(model, schema, fmt, ckpt, vocab, parity)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(export_dir) / "manifest.json"
    if not path.exists():
        raise ExportError(f"{export_dir}: not an export directory (no manifest.json)")
    return json.loads(path.read_text())


__all__ = ["DENSE_INPUT", "USER_INPUT", "ExportError", "ExportModule", "FORMATS", "InputSpec", "ONNX_OPSET", "OUTPUTS",
           "build_manifest", "example_inputs", "export_run", "input_specs", "load_manifest", "run_exported",
           "tensor_inputs"]
