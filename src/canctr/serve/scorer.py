"""One worker's scorer: raw ids of one or several users x K candidates -> click probabilities.

`Scorer.load(config)` loads everything a request needs, fully, before it is used (the HTTP app swaps the
whole object on reload, so no request sees a half-loaded model):

* engine "torch": the checkpoint (`load_model`, eval mode, run under `torch.inference_mode`) and the
  `RawIdMapper` of the run's prepared data;
* engine "onnx": one `onnxruntime.InferenceSession` (created once) and the mapper of an export directory:
  `config.export` when given (its manifest must name the run's checkpoint sha256), else the run is exported
  with `export_run` into a temporary directory which is deleted once the session is open.

A request is mapped column-wise (`map_requests`): each user's shared fields (profile ids, histories, dense
values) are mapped once per user and repeated over that user's candidate rows by index, the candidates'
fields are mapped in one call for all users; unknown ids are counted per user from the indices (0 =
unknown, as `RawIdMapper` counts them). `probabilities(batch)` is the one model call: the seam
where a shared user-side path (history computed once per user) will replace the per-row forward.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from canctr import __version__
from canctr.data.batch import Batch, user_side
from canctr.layers.compiled import warm_kernels
from canctr.models.base import shares_user_side
from canctr.serve.export import (
    ExportError,
    _checkpoint_dir,
    export_run,
    input_specs,
    load_manifest,
    sha256_file,
    tensor_inputs,
)
from canctr.serve.vocab import RawIdMapper, make_batch

ENGINES = ("torch", "onnx")


class RequestError(ValueError):
    """The request cannot be scored (the client's fault): the app answers 422 with this message."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold; the app answers 413 / 422 naming the limit beyond it."""

    max_candidates: int = 1000  # candidates of one user
    max_history: int = 1000  # ids in one sequence field of a request; the most recent max_len of them are used
    max_batch: int = 64  # users in one /v1/score/batch request
    max_body_bytes: int = 4 << 20  # request body
    max_id_chars: int = 256  # a text id


@dataclass
class ServeConfig:
    """What `canctr serve` was started with (JSON-able: workers > 1 receive it through the environment)."""

    run: str
    engine: str = "torch"
    export: str | None = None  # onnx: an export directory; None = export the run at load
    data: str | None = None  # torch: prepared data whose vocabularies to use (default: the run's config.json)
    auto_export: bool = False  # `export` was made by `canctr serve` itself: re-export if the checkpoint changed
    workers: int = 1
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        d = json.loads(text)
        return cls(**{**d, "limits": Limits(**d.get("limits", {}))})


def _checkpoint_sha(run: Path) -> tuple[Path, str]:
    ckpt = _checkpoint_dir(run)
    return ckpt, sha256_file(ckpt / "model.safetensors")


def _id_lists(rows: list[Any]) -> pa.Array:
    """Rows of ids (lists or None) -> a pyarrow list array; a request mixing integer and text ids in one field
    (JSON allows it) becomes text, which the mapper reads as prepare did."""
    try:
        return pa.array(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if not all(v is None or isinstance(v, (list, tuple)) for v in rows):
            raise ValueError("a sequence is a list of ids") from None
        return pa.array([None if v is None else [x if x is None or isinstance(x, str) else str(x) for x in v]
                         for v in rows], pa.list_(pa.string()))


class Scorer:
    """Holds one loaded model (torch module or ONNX Runtime session), its mapper and the limits."""

    def __init__(self, *, engine: str, spec: Any, mapper: RawIdMapper, info: dict[str, Any], limits: Limits,
                 model: torch.nn.Module | None = None, session: Any = None) -> None:
        self.engine, self.spec, self.mapper, self.info, self.limits = engine, spec, mapper, info, limits
        self.model, self.session = model, session
        # the user side computed once per user: a torch model that shares it, or an export in the shared form
        self.shared = shares_user_side(model) if model is not None else bool(info.get("shared_user"))
        self.input_names = [s.name for s in input_specs(spec, self.shared)]
        self.sparse_names = [f.name for f in spec.sparse]
        self.user_fields = user_side(spec)[0]

    # ------------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, config: ServeConfig) -> Scorer:
        """Load fully (raises ValueError / FileNotFoundError with one-line messages on a bad run or export)."""
        t0 = time.perf_counter()
        run = Path(config.run)
        if config.engine not in ENGINES:
            raise ValueError(f"unknown engine {config.engine!r}; choose from {list(ENGINES)}")
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: run directory not found")
        ckpt, sha = _checkpoint_sha(run)
        scorer = cls._load_torch(config, run, ckpt, sha) if config.engine == "torch" else \
            cls._load_onnx(config, run, ckpt, sha)
        scorer.info |= {"engine": config.engine, "canctr_version": __version__, "run": str(run),
                        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "load_seconds": round(time.perf_counter() - t0, 3),
                        "limits": asdict(config.limits)}
        return scorer

    @classmethod
    def _load_torch(cls, config: ServeConfig, run: Path, ckpt: Path, sha: str) -> Scorer:
        from canctr.train.checkpoint import load_model

        model, schema = load_model(ckpt)
        if sha256_file(ckpt / "model.safetensors") != sha:  # replaced while we read it: never serve a mix
            raise RuntimeError(f"{ckpt}: the checkpoint changed while it was loaded; reload again")
        model.eval()
        warm_kernels(model)
        mapper = RawIdMapper.from_run(run, config.data)
        info = {"model": model.model_name, "dataset": schema.dataset, "spec": schema.spec.to_dict(),
                "vocab_sizes": dict(schema.vocab), "checkpoint": {"sha256": sha, "path": str(ckpt)},
                "max_len": {g.name: g.max_len for g in schema.spec.sequences}, "shared_user": shares_user_side(model)}
        return cls(engine="torch", spec=schema.spec, mapper=mapper, info=info, limits=config.limits, model=model)

    @classmethod
    def _load_onnx(cls, config: ServeConfig, run: Path, ckpt: Path, sha: str) -> Scorer:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("--engine onnx needs onnxruntime (pip install -e '.[serve]')") from None
        tmp = None
        export = Path(config.export) if config.export else None
        try:
            if export is not None:
                manifest = load_manifest(export)
                if manifest["checkpoint"]["sha256"] != sha:
                    if not config.auto_export:
                        raise ExportError(f"{export} was exported from checkpoint sha256 "
                                          f"{manifest['checkpoint']['sha256'][:12]}, the run's is {sha[:12]}: "
                                          "export it again or leave out --export")
                    export = None  # made by serve itself from an older checkpoint: export afresh
            if export is None:
                tmp = Path(tempfile.mkdtemp(prefix="canctr-serve-"))
                export = tmp / "export"
                manifest = export_run(run, "onnx", export, data=config.data)
                if manifest["checkpoint"]["sha256"] != sha:
                    raise RuntimeError(f"{ckpt}: the checkpoint changed while it was exported; reload again")
            if manifest["format"] != "onnx":
                raise ExportError(f"{export}: a {manifest['format']} export; --engine onnx needs an onnx one")
            # the whole model is read into the session here: the files may go once it exists
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()  # as the torch engine: --threads, canctr.threads
            session = ort.InferenceSession(str(export / manifest["file"]), sess_options=opts,
                                           providers=["CPUExecutionProvider"])
            mapper = RawIdMapper.from_export(export)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        info = {"model": manifest["model"], "dataset": manifest["dataset"], "spec": manifest["spec"],
                "shared_user": bool(manifest.get("shared_user")),
                "vocab_sizes": {t: v["size"] for t, v in manifest["vocab"].items()},
                "checkpoint": {"sha256": sha, "path": str(ckpt)}, "max_len": manifest["max_len"],
                "onnx": {"opset": manifest["opset"], "export": None if tmp else str(export),
                         "parity_max_abs_diff": manifest["parity_max_abs_diff"]}}
        scorer = cls(engine="onnx", spec=mapper.spec, mapper=mapper, info=info, limits=config.limits,
                     session=session)
        if [i["name"] for i in manifest["inputs"]] != scorer.input_names:
            raise ExportError(f"{export}: the manifest's inputs do not follow its spec")
        return scorer

    # ------------------------------------------------------------------------------------ scoring

    def probabilities(self, batch: Batch) -> np.ndarray:
        """The model on N (user, candidate) rows -> [N] float32 click probabilities.

        The one model call of the scorer. A user-shared batch (`Batch.user`, from `map_requests`) runs the user
        side once per user where the model shares it (`self.shared`) and is expanded per row otherwise."""
        if self.session is not None:
            feeds = {n: x.numpy() for n, x in zip(self.input_names, tensor_inputs(batch, self.spec, self.shared))}
            return self.session.run(["prob"], feeds)[0]
        with torch.inference_mode():
            return torch.sigmoid(self.model(batch if self.shared else batch.expanded()).logits).float().numpy()

    def map_requests(self, requests: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]
                     ) -> tuple[Batch, np.ndarray, dict[str, np.ndarray]]:
        """U requests (user fields, K_u candidates) -> (Batch of sum K_u rows, user-major and candidates in
        order; K [U]; unknown ids per sparse field [U]).

        A field in a user's dict is shared by its candidates (mapped once per user, repeated by index);
        otherwise every candidate carries it. Raises RequestError naming the problem."""
        spec, lim = self.spec, self.limits
        U = len(requests)
        if U == 0:
            raise RequestError("no requests")
        K = np.fromiter((len(c) for _, c in requests), np.int64, U)
        if (K == 0).any():
            raise RequestError(f"request {int(np.argmin(K))}: empty candidate list")
        if K.max() > lim.max_candidates:
            raise RequestError(f"{int(K.max())} candidates exceed the limit of {lim.max_candidates}")
        row_user = np.repeat(np.arange(U), K)  # [N] the user of each row
        # every user-side field given once per user: the batch keeps them so (one row per user) and the model's
        # user side runs once per user; else (a user field sent per candidate) every field is repeated per row
        by_user = all(name in u for u, _ in requests for name in self.user_fields)
        ids: dict[str, np.ndarray] = {}
        seqs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        dense: dict[str, np.ndarray] = {}
        unknown: dict[str, np.ndarray] = {}
        raw_len: dict[str, tuple[str, np.ndarray]] = {}  # group -> (first field, [N] lengths as sent)
        for f in spec.fields:
            name = f.name
            given = [name in u for u, _ in requests]
            shared = all(given)
            try:
                if shared:
                    vals = [u[name] for u, _ in requests]  # [U]
                elif not any(given):
                    vals = [c[name] for _, cs in requests for c in cs]  # [N]
                else:  # a context field shared by some users, per candidate for others: expand to rows
                    vals = [v for (u, cs) in requests
                            for v in ([u[name]] * len(cs) if name in u else [c[name] for c in cs])]
            except KeyError:
                raise RequestError(f"field {name!r} is missing: give it in the user or in every candidate") \
                    from None
            except TypeError:
                raise RequestError("a user and every candidate must be objects") from None
            owner = np.arange(U) if shared else row_user  # [len(vals)] the user of each value
            keep = shared and by_user and name in self.user_fields  # one row per user in the batch
            try:
                if f.kind == "categorical":
                    idx = self.mapper.map_field(name, vals)
                    ids[name] = idx[row_user] if shared and not keep else idx
                    unknown[name] = np.bincount(owner, idx == 0, minlength=U)
                elif f.kind == "sequence":
                    n = np.fromiter((0 if v is None else len(v) for v in vals), np.int64, len(vals))
                    if n.max(initial=0) > lim.max_history:
                        raise RequestError(f"field {name!r}: {int(n.max())} ids exceed the limit of "
                                           f"{lim.max_history} (the last {spec.sequence_group(f.group).max_len} "
                                           "are used)")
                    n = n[row_user] if shared and not keep else n
                    if f.group in raw_len and not np.array_equal(raw_len[f.group][1], n):
                        raise RequestError(f"sequence fields {raw_len[f.group][0]!r} and {name!r} (group "
                                           f"{f.group!r}) must have equal lengths")
                    raw_len.setdefault(f.group, (name, n))
                    known = self.mapper.known_sequence(name, vals)  # every id known: no pyarrow
                    flat, lens = known if known is not None else self.mapper.map_sequence(name, _id_lists(vals))
                    unknown[name] = np.bincount(np.repeat(owner, lens), flat == 0, minlength=U)
                    if shared and not keep:  # each user's ids repeated on its K rows: gather by index
                        starts = np.cumsum(lens) - lens
                        row_lens = lens[row_user]
                        pos = np.arange(int(row_lens.sum())) - np.repeat(np.cumsum(row_lens) - row_lens, row_lens)
                        flat, lens = flat[np.repeat(starts[row_user], row_lens) + pos], row_lens
                    seqs[name] = (flat, lens)
                else:
                    x = np.asarray(pa.array(vals, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
                    dense[name] = x[row_user] if shared else x
            except (ValueError, TypeError, pa.ArrowException) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise RequestError(msg if msg.startswith("field") else f"field {name!r}: {msg}") from None
        try:
            batch = make_batch(spec, ids, seqs, self.mapper.map_dense(dense) if spec.dense else None,
                               user=row_user if by_user else None)
        except ValueError as e:
            raise RequestError(str(e)) from None
        return batch, K, unknown

    def score_many(self, requests: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]
                   ) -> list[tuple[np.ndarray, dict[str, int]]]:
        """Several users in one model call -> per user ([K_u] float32 probabilities, {field: unknown ids})."""
        batch, K, unknown = self.map_requests(requests)
        prob = self.probabilities(batch)
        parts = np.split(prob, np.cumsum(K)[:-1])
        return [(p, {n: int(unknown[n][u]) for n in self.sparse_names}) for u, p in enumerate(parts)]

    def score(self, user: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
              ) -> tuple[np.ndarray, dict[str, int]]:
        """One user x K candidates -> ([K] probabilities in candidate order, {field: unknown ids})."""
        return self.score_many([(user, candidates)])[0]


def export_for_workers(config: ServeConfig) -> tuple[ServeConfig, str | None]:
    """--engine onnx without --export and several workers: export once here, not once per worker. -> (the
    config the workers load, the temporary directory to remove at exit or None)."""
    if config.engine != "onnx" or config.export or config.workers <= 1:
        return config, None
    tmp = tempfile.mkdtemp(prefix="canctr-serve-")
    export_run(config.run, "onnx", Path(tmp) / "export", data=config.data)
    cfg = ServeConfig(**{**asdict(config), "limits": config.limits})
    cfg.export, cfg.auto_export = os.path.join(tmp, "export"), True
    return cfg, tmp


__all__ = ["ENGINES", "Limits", "RequestError", "Scorer", "ServeConfig", "export_for_workers"]
