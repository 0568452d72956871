"""Batch scoring: a trained run (or its ONNX export) over new rows of raw ids -> one score per row.

`canctr predict --run RUN_DIR --input PATH... --out scores.parquet [--engine torch|onnx]` reads the inputs
with prepare's own readers (Parquet, CSV / TSV, JSON lines; `data/table.py`), in record batches of
`--batch-size` rows, so memory stays bounded whatever the input's size. Each batch's raw ids go through
the run's vocabularies exactly as prepare encoded them (`RawIdMapper`: unknown ids -> index 0, counted per
field), sequences keep their most recent max_len ids, dense values are normalised with the training
statistics; the batch is scored by the eager model or by ONNX Runtime (in sub-batches of rows of similar
history length, so that one long history does not pad them all), and the scores are appended to a
Parquet file in input order, beside the kept key columns (by default the spec's group column and, when the
input has it, the label, whose AUC the summary then reports). The output is written to a temporary file and
renamed when complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from canctr.data.batch import Batch
from canctr.data.table import TableError, TableSource, as_floats, as_lists, expand_inputs
from canctr.serve.scorer import ENGINES, Scorer, ServeConfig
from canctr.serve.vocab import RawIdMapper, make_batch

SUB_BATCH = 512  # rows scored together after sorting a batch by sequence length


def _by_length(batch: Batch, spec: Any, sub_batch: int = SUB_BATCH) -> list[tuple[np.ndarray, Batch]]:
    """A batch cut into sub-batches of rows of similar sequence length, each padded to its own longest row:
    [(row positions in `batch`, sub-batch)]. Inputs come in any order, so one long history would pad every
    row of a 4,096-row batch to its length (Beauty: median 6, longest 100); sorted, the padding all but
    vanishes. Scores are put back in input order by the caller."""
    if not spec.sequences or batch.size <= sub_batch:
        return [(np.arange(batch.size), batch)]
    group = spec.attention_group or spec.sequences[0].name
    order = torch.argsort(batch.lengths[group], stable=True)
    out = []
    for idx in order.split(sub_batch):
        sparse, lengths, masks = {}, {}, {}
        for f in spec.categorical:
            sparse[f.name] = batch.sparse[f.name].index_select(0, idx)
        for g in spec.sequences:
            lengths[g.name] = batch.lengths[g.name].index_select(0, idx)
            width = max(int(lengths[g.name].max()), 1)
            masks[g.name] = batch.masks[g.name].index_select(0, idx)[:, :width]
            for f in spec.group_fields(g.name):
                sparse[f.name] = batch.sparse[f.name].index_select(0, idx)[:, :width]
        out.append((idx.numpy(), Batch(label=batch.label.index_select(0, idx), group=batch.group.index_select(0, idx),
                                       sparse=sparse, lengths=lengths, masks=masks,
                                       dense=None if batch.dense is None else batch.dense.index_select(0, idx))))
    return out


def _columns_needed(spec: Any) -> dict[str, str]:
    """field -> input column, for every field the model reads."""
    return {f.name: f.column for f in spec.fields}


def map_record_batch(mapper: RawIdMapper, rb: pa.RecordBatch, needed: dict[str, str], list_sep: str,
               path: Path, first_row: int) -> Any:
    """One record batch of raw columns -> a Batch of indices (unknown ids counted in the mapper)."""
    spec = mapper.spec
    ids, seqs, dense = {}, {}, []
    for f in spec.fields:
        arr = rb.column(needed[f.name])
        try:
            if f.kind == "categorical":
                ids[f.name] = mapper.map_field(f.name, arr)
            elif f.kind == "sequence":
                seqs[f.name] = mapper.map_sequence(f.name, as_lists(arr, list_sep))
            else:
                x, invalid = as_floats(arr)
                if invalid.any():
                    row = first_row + int(np.flatnonzero(invalid)[0]) + 1
                    raise TableError(path, f"column {needed[f.name]!r}: not a number", row=row)
                dense.append(x)
        except (ValueError, pa.ArrowException) as e:
            if isinstance(e, TableError):
                raise
            raise TableError(path, f"column {needed[f.name]!r} (field {f.name!r}) in rows {first_row + 1}.."
                                   f"{first_row + rb.num_rows}: {str(e).splitlines()[0]}") from None
    dense_arr = mapper.map_dense({f.name: x for f, x in zip(spec.dense, dense)}) if spec.dense else None
    return make_batch(spec, ids, seqs, dense_arr)


def predict(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    engine: str = "torch",
    export_dir: str | os.PathLike | None = None,
    data: str | None = None,
    batch_size: int = 4096,
    fmt: str | None = None,
    list_sep: str = "|",
    keep: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score every row of `inputs` with the run's model; write `out` (Parquet: kept columns + `score`).
    Returns the summary: rows, files, unknown ids per field, seconds, rows/s, engine and, with labels, AUC."""
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    out = Path(out)
    paths = expand_inputs(inputs)
    t_load = time.perf_counter()
    # the service's loader and model call: eager model, or an ONNX Runtime session on --export (checked
    # against the checkpoint) or on an export made on the fly; its mapper holds the run's vocabularies
    scorer = Scorer.load(ServeConfig(run=str(run_dir), engine=engine,
                                     export=None if export_dir is None else str(export_dir), data=data))
    mapper, spec = scorer.mapper, scorer.spec
    load_seconds = time.perf_counter() - t_load

    needed = _columns_needed(spec)
    sources = [TableSource(p, skip_bad_rows=False, batch_rows=batch_size, fmt=fmt) for p in paths]
    first_types = sources[0].types()
    if keep is None:  # the group (user) column and the label when the input has them
        keep = [c for c in dict.fromkeys([spec.group, spec.label]) if c and c in first_types]
    keep = list(dict.fromkeys(keep))
    for src in sources:
        types = src.types()
        missing = [c for c in [*needed.values(), *keep] if c not in types]
        if missing:
            raise TableError(src.path, f"column(s) {missing} not in the input (it has {sorted(types)})")
    read = list(dict.fromkeys([*needed.values(), *keep]))

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = None
    rows, scores_for_auc, labels_for_auc = 0, [], []
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(pq.ParquetFile(s.path).metadata.num_rows for s in sources if s.format == "parquet") \
            if all(s.format == "parquet" for s in sources) else None
        bar = tqdm(total=total, unit="rows", desc="predict")
    t0 = time.perf_counter()
    try:
        for src in sources:
            before = 0
            for rb in src.batches(read):
                batch = map_record_batch(mapper, rb, needed, list_sep, src.path, before)
                prob = np.empty(batch.size, np.float32)
                for rows_of, sub in _by_length(batch, spec):
                    prob[rows_of] = scorer.probabilities(sub)
                table = pa.table({**{c: rb.column(c) for c in keep}, "score": prob})
                if writer is None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    writer = pq.ParquetWriter(tmp, table.schema)
                elif table.schema != writer.schema:
                    table = table.cast(writer.schema)  # a later file may type a key column differently
                writer.write_table(table)
                if spec.label in keep:
                    x, _ = as_floats(rb.column(spec.label))
                    labels_for_auc.append(x)
                    scores_for_auc.append(prob)
                before += rb.num_rows
                rows += rb.num_rows
                if bar is not None:
                    bar.update(rb.num_rows)
        if writer is None:  # no rows at all: still a valid, empty file
            writer = pq.ParquetWriter(tmp, pa.schema([*(pa.field(c, pa.string()) for c in keep),
                                                      pa.field("score", pa.float32())]))
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "rows": rows, "files": [str(p) for p in paths], "out": str(out), "engine": engine,
        "unknown": {k: v for k, v in mapper.reset_counts().items() if v}, "seconds": seconds,
        "rows_per_second": rows / seconds if seconds > 0 else float("nan"), "model_load_seconds": load_seconds,
        "kept_columns": keep,
    }
    if labels_for_auc:
        y, p = np.concatenate(labels_for_auc), np.concatenate(scores_for_auc)
        ok = ~np.isnan(y)
        if ok.any() and 0 < y[ok].sum() < ok.sum():
            from canctr.metrics import auc

            summary["auc"] = float(auc(y[ok], p[ok]))
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"scored {s['rows']:,} rows from {len(s['files'])} file(s) with the {s['engine']} engine in "
             f"{s['seconds']:.2f}s ({s['rows_per_second']:,.0f} rows/s) -> {s['out']}"]
    if s["unknown"]:
        lines.append("  unknown ids (-> index 0): " + ", ".join(f"{k} {v:,}" for k, v in s["unknown"].items()))
    else:
        lines.append("  unknown ids: none")
    if "auc" in s:
        lines.append(f"  AUC against the input's labels: {s['auc']:.4f}")
    return "\n".join(lines)


__all__ = ["ENGINES", "format_summary", "map_record_batch", "predict"]
