"""canctr vs the maintained PyTorch peers that implement DIN and DIEN (deepctr-torch, torch-rechub), on the
very same prepared data (a `canctr prepare` directory, and a padded copy of it for the peers).

    python benchmarks/peers/compare_peers.py setup                 # one venv per peer under /tmp
    python benchmarks/peers/compare_peers.py run --data DIR --repeats 3

`run` first writes, under --work, the training rows to use (with --max-train-samples N: a prepared directory
holding the first N training rows and the whole test split) and a padded export of them for the peers
(`export_padded`: fixed-width numpy arrays, DIEN's negatives drawn once by canctr's BatchLoader). Each peer
lives in its own virtual environment (never a canctr dependency) and runs as a subprocess of that venv's
python executing worker_<peer>.py, which reads the export with numpy only. The canctr side runs
worker_canctr.py (canctr.train.loop.fit on the prepared directory) with this interpreter. Runs alternate
library by library (canctr, deepctr, rechub, canctr, ...), with the repeats as the outer loop, so machine noise
hits all alike; every run gets the same thread count. Results: OUT.json (every run + medians) and OUT.md (the tables).
README.md beside this file has the commands and the settings.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _common as c  # benchmarks/peers/_common.py: settings and the result line shared with the workers
import numpy as np
import torch

from canctr.data.batch import BatchLoader
from canctr.data.schema import Schema
from canctr.data.store import Columns, read_split, write_split
from canctr.env import cpu_model
from canctr.layers.attention import TargetAttention

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Peer:
    name: str  # library name as reported in results
    venv_name: str  # default venv: /tmp/venv-<venv_name>
    packages: tuple[str, ...]  # pip requirements installed after torch, under a torch pin
    module: str  # import name, to check an existing venv
    worker: str  # worker script in this directory

    def venv(self, args: argparse.Namespace) -> Path:
        override = getattr(args, f"venv_{self.venv_name}", None)
        return Path(override) if override else Path(args.venv_root) / f"venv-{self.venv_name}"


PEERS = (
    # deepctr-torch imports `requests` (version check) without declaring it
    Peer("deepctr-torch", "deepctr", ("deepctr-torch==0.3.0", "requests"), "deepctr_torch", "worker_deepctr.py"),
    Peer("torch-rechub", "rechub", ("torch-rechub==0.9.0",), "torch_rechub", "worker_rechub.py"),
)
MODELS = ("din", "dien")  # what every library runs (same names in canctr's registry); canctr adds can-dien


# ------------------------------------------------------------------------------------------------ setup
def sh(cmd: list[str], dry_run: bool) -> None:
    print("+", shlex.join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, check=True)


def installed(python: Path, peer: Peer) -> bool:
    if not python.exists():
        return False
    check = f"import torch, {peer.module}; print(torch.__version__)"
    r = subprocess.run([str(python), "-c", check], capture_output=True, text=True, check=False)
    return r.returncode == 0 and r.stdout.strip().startswith(TORCH.split("==")[1])


def setup(args: argparse.Namespace) -> int:
    """Create each peer's venv: torch first, then the peer under a torch pin (dependencies.md recipe)."""
    for peer in PEERS:
        venv = peer.venv(args)
        python = venv / "bin" / "python"
        if installed(python, peer) and not args.force:
            print(f"{peer.name}: {venv} is ready (use --force to reinstall)")
            continue
        pin = venv / "pin.txt"
        sh([sys.executable, "-m", "venv", str(venv)], args.dry_run)
        if not args.dry_run:
            pin.write_text(TORCH + "\n")
        print(f"+ echo {TORCH} > {pin}")
        sh([str(python), "-m", "pip", "install", TORCH], args.dry_run)
        sh([str(python), "-m", "pip", "install", "-c", str(pin), *peer.packages], args.dry_run)
        if not args.dry_run and not installed(python, peer):
            raise SystemExit(f"{peer.name}: {venv} does not import {peer.module} with {TORCH} after install")
    return 0


# ------------------------------------------------------------------------------------------------ run
@dataclass(frozen=True)
class Job:
    library: str
    model: str
    batch_size: int
    repeat: int
    seed: int
    python: Path
    worker: str

    @property
    def tag(self) -> str:
        return f"{self.library}_{self.model}_b{self.batch_size}_r{self.repeat}"


# ------------------------------------------------------------------------------------------------ data
PEER_FIELDS = {"user": "categorical", "item": "categorical", "cate": "categorical", "hist_item": "sequence",
               "hist_cate": "sequence"}  # what the peers' models read (behaviour_spec's layout)
EXPORT_BATCH = 65536  # rows per BatchLoader batch while exporting (bounds the exporter's memory)


def sliced_data(data: Path, max_train: int | None, work: Path) -> Path:
    """`data` itself, or a prepared directory holding its first `max_train` training rows and its whole test
    split (same schema, `splits["train"] = max_train`), so canctr and the export train on exactly those rows."""
    schema = Schema.load(data)
    if max_train is None or max_train >= schema.splits["train"]:
        return data
    if max_train < 1:
        raise SystemExit(f"--max-train-samples must be >= 1, got {max_train}")
    spec, n = schema.spec, max_train
    out = work / f"data_{data.absolute().name}_train{n}"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cols = read_split(data, "train", spec)  # memory-mapped; only the first n rows are read
    ends = {g: int(cols.offsets[g][n]) for g in cols.offsets}
    head = Columns(
        label=cols.label[:n], group=cols.group[:n], ids={k: v[:n] for k, v in cols.ids.items()},
        offsets={g: cols.offsets[g][: n + 1] for g in cols.offsets},
        values={f: v[: ends[spec.group_of(f)]] for f, v in cols.values.items()},
        dense=None if cols.dense is None else cols.dense[:n], extras={k: v[:n] for k, v in cols.extras.items()},
    )
    write_split(tmp, "train", spec, head)
    for entry in data.iterdir():  # the test split, vocab/ (Cartesian pair keys) and anything else, as is
        if entry.name not in ("train", "schema.json"):
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
    schema.splits = {**schema.splits, "train": n}
    schema.options = {**schema.options, "peers_max_train_samples": n, "peers_sliced_from": str(data)}
    schema.save(tmp / "schema.json")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    check = read_split(out, "train", Schema.load(out).spec)
    if check.n != n or any(int(check.offsets[g][-1]) != e for g, e in ends.items()):
        raise SystemExit(f"{out}: the sliced train split holds {check.n} rows, expected {n}")
    return out


def peer_vocab(schema: Schema) -> dict[str, int]:
    """{user, item, cate} -> rows of the embedding table each field uses (incl. index 0); also checks that the
    spec is the peers' layout, so that canctr reads no feature the peers do not."""
    spec = schema.spec
    got = {f.name: f.kind for f in spec.fields if f.kind in ("categorical", "sequence")}
    if got != PEER_FIELDS or spec.dense or spec.attention_group is None \
            or spec.group_of("hist_item") != spec.group_of("hist_cate"):
        raise SystemExit(f"the peers read exactly {sorted(PEER_FIELDS)} (hist_* one attention group), no dense field; "
                         f"this data has {got}{' + dense' if spec.dense else ''}. Prepare it without extra "
                         "features (e.g. `canctr prepare movielens` without --users, --genres first)")
    return {name: schema.vocab_size(spec.field(name).table) for name in ("user", "item", "cate")}


def export_padded(data: Path, out: Path) -> dict:
    """Write the peers' padded copy of prepared directory `data` to `out`; returns its export.json.

    Per split, `out/<split>/<field>.npy` for _common.FIELDS: label float32 [N]; user, item, cate, hist_len int32
    [N]; hist_item, hist_cate, neg_hist_item, neg_hist_cate int32 [N, W], left-aligned, 0-padded, W = the
    history group's max_len (or the longest stored history, if longer). DIEN's negatives are drawn once by
    canctr's own BatchLoader (shuffle off, batches of EXPORT_BATCH, seed = the prepare seed), so both peers
    train on the same draw. Arrays are filled batch by batch into memory-mapped files.
    """
    schema = Schema.load(data)
    spec, vocab = schema.spec, peer_vocab(schema)
    group = spec.attention_group
    splits = {}
    for split in ("train", "test"):
        cols = read_split(data, split, spec)
        splits[split] = {"rows": cols.n, "longest": int(cols.lengths(group).max()) if cols.n else 0}
    width = max(spec.sequence_group(group).max_len, *(s["longest"] for s in splits.values()))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "test"):
        cols = read_split(data, split, spec)
        n = cols.n
        (tmp / split).mkdir(parents=True)
        arrays = {}
        for name in c.FIELDS:
            shape, dtype = ((n, width), np.int32) if name.startswith(("hist_", "neg_hist_")) and name != "hist_len" \
                else ((n,), np.float32 if name == "label" else np.int32)
            arrays[name] = np.lib.format.open_memmap(tmp / split / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        loader = BatchLoader(cols, spec, batch_size=EXPORT_BATCH, shuffle=False, seed=schema.seed,
                             negatives=(group,))
        start = 0
        for b in loader:
            rows = slice(start, start + b.size)
            arrays["label"][rows] = b.label.numpy()
            for name in ("user", "item", "cate"):
                arrays[name][rows] = b[name].numpy()
            arrays["hist_len"][rows] = b.lengths[group].numpy()
            for name in ("hist_item", "hist_cate"):
                w = b[name].shape[1]
                arrays[name][rows, :w] = b[name].numpy()
                arrays[f"neg_{name}"][rows, :w] = b.negatives[name].numpy()  # beyond w: the file's zeros
            start += b.size
        if start != n:
            raise SystemExit(f"export of {data}/{split}: the loader gave {start} rows, the split has {n}")
        for a in arrays.values():
            a.flush()
        del arrays
    meta = {"format": c.EXPORT_FORMAT, "source": str(data), "vocab": vocab, "width": width,
            "splits": {k: v["rows"] for k, v in splits.items()}, "fields": list(c.FIELDS),
            "negatives": {"group": group, "seed": schema.seed, "batch_size": EXPORT_BATCH,
                          "drawn_by": "canctr.data.batch.BatchLoader(shuffle=False)"}}
    (tmp / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return meta


def peer_version(python: Path, dist: str) -> str:
    if not python.exists():
        raise SystemExit(f"{python} does not exist; run `python {Path(__file__).relative_to(ROOT)} setup` "
                         "(or pass --venv-root / --venv-<peer>)")
    code = f"import importlib.metadata as m; print(m.version({dist!r}), '(torch', m.version('torch') + ')')"
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{python}: cannot read the {dist} version ({r.stderr.strip()[-300:]}); "
                         f"run `python {Path(__file__).relative_to(ROOT)} setup` first")
    return r.stdout.strip()


def run_job(job: Job, args: argparse.Namespace, data: Path, logs: Path) -> dict:
    cmd = [str(job.python), str(HERE / job.worker), "--data", str(data), "--model", job.model,
           "--batch-size", str(job.batch_size), "--threads", str(args.threads),
           "--warmup-batches", str(args.warmup_batches), "--seed", str(job.seed)]
    if args.eval_at_samples:
        cmd += ["--eval-at-samples", *map(str, args.eval_at_samples)]
    if job.library == "canctr":
        cmd += [arg for kv in args.canctr_set for arg in ("--set", kv)]
    # one thread count for every library, including the BLAS/OpenMP pools torch may start; no progress bars
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TQDM_DISABLE": "1"}
    load_before = os.getloadavg()[0]
    print(f"[{job.tag}] {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    log = logs / f"{job.tag}.log"
    log.write_text(f"$ {shlex.join(cmd)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(c.RESULT_TAG)]
    if r.returncode != 0 or not lines:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-15:])
        raise SystemExit(f"[{job.tag}] failed (exit {r.returncode}); full log {log}:\n{tail}")
    result = json.loads(lines[-1][len(c.RESULT_TAG):])
    result.update(repeat=job.repeat, seed=job.seed, wall_seconds=time.perf_counter() - t0, load_before=load_before,
                  load_after=os.getloadavg()[0], log=str(log))
    print(f"[{job.tag}] {result['samples_per_second']:,.0f} samples/s (steady), "
          f"{result['epoch_samples_per_second']:,.0f} (epoch), AUC {result['test_auc']:.4f}, "
          f"{result['n_params']:,} params, load {load_before:.1f}", flush=True)
    return result


def check_static_settings() -> None:
    """Settings no model config exposes: DIN's activation unit sizes (layers/attention.py)."""
    default = inspect.signature(TargetAttention.__init__).parameters["hidden"].default
    if tuple(default) != c.ATTENTION_DIMS:
        raise SystemExit(f"canctr's attention unit is {tuple(default)}, the peers' setting (_common.ATTENTION_DIMS) "
                         f"is {c.ATTENTION_DIMS}; update _common.py so the comparison stays matched")


def check_settings(results: list[dict]) -> None:
    """The peers' workers hard-code canctr's defaults (_common); fail if canctr's defaults moved."""
    want = {"embed_dim": c.EMBED_DIM, "mlp": list(c.MLP_DIMS), "hidden_dim": c.GRU_HIDDEN, "aux_weight": c.AUX_WEIGHT}
    for r in results:
        if r["library"] != "canctr" or r["model"] not in MODELS:
            continue
        got = r["settings"]
        bad = {k: (got[k], v) for k, v in want.items() if k in got and got[k] != v}
        if r["lr"] != c.LR:
            bad["lr"] = (r["lr"], c.LR)
        if bad:
            raise SystemExit(f"canctr {r['model']} defaults differ from the peers' settings in _common.py "
                             f"(canctr, peers): {bad}; update _common.py so the comparison stays matched")


MEDIANS = ("samples_per_second", "epoch_samples_per_second", "test_auc", "peak_rss_mb")


def summarise(results: list[dict]) -> dict:
    cells: dict[tuple[str, str, int], list[dict]] = {}
    for r in results:
        cells.setdefault((r["library"], r["model"], r["batch_size"]), []).append(r)
    rows = []
    for (lib, model, b), rs in cells.items():
        med = {k: statistics.median(x[k] for x in rs) for k in MEDIANS}
        aucs = [x["test_auc"] for x in rs]
        auc = {"test_auc_mean": statistics.fmean(aucs),
               "test_auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
               "seeds": sorted({x.get("seed") for x in rs} - {None})}
        rows.append({"library": lib, "model": model, "batch_size": b, "runs": len(rs), **med, **auc,
                     "samples_per_second_all": [x["samples_per_second"] for x in rs], "n_params": rs[0]["n_params"]})
    sps = {(r["library"], r["model"], r["batch_size"]): r["samples_per_second"] for r in rows}
    ratios = []
    for (lib, model, b), v in sps.items():
        if lib != "canctr" or model not in MODELS:
            continue
        peers = {p.name: sps[(p.name, model, b)] for p in PEERS if (p.name, model, b) in sps}
        if peers:
            fastest = max(peers, key=peers.get)
            ratios.append({"model": model, "batch_size": b, **{f"vs_{k}": v / s for k, s in peers.items()},
                           "faster_peer": fastest, "vs_faster_peer": v / peers[fastest]})
    can_dien = [{"batch_size": b, "dien_samples_per_second": sps[("canctr", "dien", b)],
                 "can_dien_samples_per_second": v,
                 "step_time_ratio": sps[("canctr", "dien", b)] / v}  # time per sample, CAN-DIEN / DIEN
                for (lib, model, b), v in sps.items() if lib == "canctr" and model == "can-dien"
                and ("canctr", "dien", b) in sps]
    return {"cells": rows, "ratios": ratios, "can_dien": can_dien, "curves": learning_curves(results)}


def learning_curves(results: list[dict]) -> list[dict]:
    """Test AUC at each learning-curve point (--eval-at-samples, and the epoch's end), mean and sample std over
    the runs of a (library, model, batch) cell; [] without --eval-at-samples."""
    cells: dict[tuple[str, str, int, int], list[float]] = {}
    for r in results:
        for p in r.get("curve", []) if len(r.get("curve", [])) > 1 else []:
            cells.setdefault((r["library"], r["model"], r["batch_size"], p["samples"]), []).append(p["auc"])
    return [{"library": lib, "model": model, "batch_size": b, "samples": n, "runs": len(a),
             "auc_mean": statistics.fmean(a), "auc_std": statistics.stdev(a) if len(a) > 1 else 0.0}
            for (lib, model, b, n), a in sorted(cells.items())]


def auc(cell: dict, meta: dict) -> str:
    if meta.get("seed_per_repeat") and cell["runs"] > 1:
        return f"{cell['test_auc_mean']:.4f} ± {cell['test_auc_std']:.4f}"
    return f"{cell['test_auc']:.4f}"


def markdown(report: dict) -> str:
    m = report["meta"]
    out = [
        "# canctr vs peer libraries: DIN / DIEN training throughput on the same data",
        "",
        *(f"Command: `python {cmd.split(' ', 1)[-1]}`  " for cmd in m.get("commands", [m["command"]])),
        "",
        (f"Data `{m['data']}` ({m['train_samples']:,} train / {m['test_samples']:,} test samples, history width "
         f"{m['history_width']}); {m['repeats']} alternating repeat(s); {m['threads']} threads per run; "
         f"machine: {m['machine']}; {m['date']}."),
        *([f"canctr trains on the prepared directory `{m['prepared']}`, the peers on its padded export "
           f"`{m['export']}` (histories and DIEN's negatives padded to the full width)."] if m.get("export") else []),
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.",
        *([f"**Partial: {m['partial']}** (the comparison is running or was stopped)."] if m.get("partial") else []),
        *([f"**Note:** {m['note']}"] if m.get("note") else []),
        *([f"canctr model overrides (`--canctr-set`): {', '.join(m['canctr_set'])}; every other setting is the "
           "default."] if m.get("canctr_set") else []),
        "",
        (f"samples/s = median steady training throughput: steps after the first {m['warmup_batches']} warm-up "
         "batches, each step timed from the previous optimizer step to its own (batch fetch with the "
         "library's loader + forward + backward + update). epoch = the whole epoch including the warm-up "
         "(canctr: metrics.json's train_samples_per_second). AUC = global test AUC after 1 epoch"
         + (f", mean ± std over the seeds {m['seed']}..{m['seed'] + m['repeats'] - 1} (repeat r trains with seed "
            f"{m['seed']} + r)." if m.get("seed_per_repeat") else f" (seed {m['seed']}; median over repeats).")),
        "",
        "| model | batch | library | samples/s | epoch samples/s | test AUC | params | peak RSS MB | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"canctr": 0, **{p.name: i + 1 for i, p in enumerate(PEERS)}}
    models = {"din": 0, "dien": 1, "can-dien": 2}
    cells = sorted(report["summary"]["cells"], key=lambda r: (models[r["model"]], r["batch_size"], order[r["library"]]))
    for r in cells:
        out.append(f"| {r['model']} | {r['batch_size']} | {r['library']} | {r['samples_per_second']:,.0f} | "
                   f"{r['epoch_samples_per_second']:,.0f} | {auc(r, m)} | {r['n_params']:,} | "
                   f"{r['peak_rss_mb']:,.0f} | {r['runs']} |")
    if report["summary"]["ratios"]:
        peers = [p.name for p in PEERS]
        out += ["", "canctr's samples/s divided by each peer's (> 1: canctr is faster):", "",
                "| model | batch | " + " | ".join(f"vs {p}" for p in peers) + " | vs the faster peer |",
                "|---|---|" + "---|" * len(peers) + "---|"]
        for r in sorted(report["summary"]["ratios"], key=lambda r: (models[r["model"]], r["batch_size"])):
            cols = " | ".join(f"{r[f'vs_{p}']:.2f}x" if f"vs_{p}" in r else "n/a" for p in peers)
            out.append(f"| {r['model']} | {r['batch_size']} | {cols} | {r['vs_faster_peer']:.2f}x "
                       f"({r['faster_peer']}) |")
    if report["summary"]["can_dien"]:
        out += ["", "CAN-DIEN vs canctr DIEN (step time ratio = time per sample, CAN-DIEN / DIEN):", "",
                "| batch | DIEN samples/s | CAN-DIEN samples/s | step time ratio |", "|---|---|---|---|"]
        for r in sorted(report["summary"]["can_dien"], key=lambda r: r["batch_size"]):
            out.append(f"| {r['batch_size']} | {r['dien_samples_per_second']:,.0f} | "
                       f"{r['can_dien_samples_per_second']:,.0f} | {r['step_time_ratio']:.2f} |")
    if report["summary"].get("curves"):
        out += learning_curve_table(report["summary"]["curves"], order, models)
    out += ["", "Settings and the differences that remain: benchmarks/peers/README.md.", ""]
    return "\n".join(out)


def learning_curve_table(curves: list[dict], order: dict[str, int], models: dict[str, int]) -> list[str]:
    """One row per (model, batch, library): test AUC (mean ± std over the runs) by samples seen; the best mean
    of each (model, batch, samples) in bold."""
    points = sorted({c["samples"] for c in curves})
    cell = {(c["library"], c["model"], c["batch_size"], c["samples"]): c for c in curves}
    rows = sorted({(c["model"], c["batch_size"], c["library"]) for c in curves},
                  key=lambda k: (models[k[0]], k[1], order[k[2]]))
    out = ["", "Learning curve: test AUC after n training samples (the last column: the whole epoch), mean ± "
           "sample std over the runs; per model, batch and n, the best mean in bold:", "",
           "| model | batch | library | " + " | ".join(f"{n:,}" for n in points) + " |",
           "|---|---|---|" + "---|" * len(points)]
    for model, b, lib in rows:
        cols = []
        for n in points:
            c = cell.get((lib, model, b, n))
            if c is None:
                cols.append("")
                continue
            best = max(v["auc_mean"] for k, v in cell.items() if k[1:] == (model, b, n))
            text = f"{c['auc_mean']:.4f} ± {c['auc_std']:.4f}"
            cols.append(f"**{text}**" if c["auc_mean"] == best else text)
        out.append(f"| {model} | {b} | {lib} | " + " | ".join(cols) + " |")
    return out


def run(args: argparse.Namespace) -> int:
    source, work = Path(args.data), Path(args.work)
    logs = work / "logs" / Path(args.out).name  # one folder per comparison: another one's runs never overwrite these
    logs.mkdir(parents=True, exist_ok=True)
    check_static_settings()
    peer_vocab(Schema.load(source))  # fail before slicing if the peers cannot read what canctr would
    t0 = time.perf_counter()
    data = sliced_data(source, args.max_train_samples, work)  # canctr trains on this prepared directory
    n_train = Schema.load(data).splits["train"]
    tag = source.absolute().name + (f"_train{n_train}" if data != source else "")
    export = work / f"export_{tag}"  # ... and the peers on its padded copy
    peers = [lib for lib in args.libraries if lib != "canctr"]
    meta_export = export_padded(data, export) if peers else None
    if meta_export:
        print(f"padded export for the peers: {export} ({meta_export['splits']['train']:,} train / "
              f"{meta_export['splits']['test']:,} test rows, width {meta_export['width']}; "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
    for b in args.batch_sizes:
        if (steps := math.ceil(n_train / b)) <= args.warmup_batches:
            raise SystemExit(f"batch {b}: {n_train} training samples give {steps} steps, not more than "
                             f"--warmup-batches {args.warmup_batches}; use more samples or fewer warm-up batches")
    libraries = {"canctr": (Path(sys.executable), "worker_canctr.py")}
    versions = {"canctr": f"working tree (torch {torch.__version__})"}
    for peer in PEERS:
        if peer.name in args.libraries:
            python = peer.venv(args) / "bin" / "python"
            libraries[peer.name] = (python, peer.worker)
            versions[peer.name] = peer_version(python, peer.packages[0].split("==")[0])
    jobs = []
    for repeat in range(args.repeats):  # repeats outermost: a slow spell of the machine hits every cell alike
        seed = args.seed + repeat if args.seed_per_repeat else args.seed
        for model in args.models:
            for b in args.batch_sizes:
                for lib in args.libraries:
                    jobs.append(Job(lib, model, b, repeat, seed, *libraries[lib]))
                    if lib == "canctr" and model == "dien" and args.can_dien:
                        jobs.append(Job(lib, "can-dien", b, repeat, seed, *libraries[lib]))
    print(f"{len(jobs)} runs on {data} ({n_train:,} train samples), {args.threads} threads each", flush=True)
    schema = Schema.load(data)
    meta = {"data": str(source), "prepared": str(data), "export": str(export) if meta_export else None,
            "train_samples": n_train, "test_samples": schema.splits["test"],
            "history_width": meta_export["width"] if meta_export else schema.max_len(schema.spec.attention_group),
            "repeats": args.repeats,
            "threads": args.threads, "warmup_batches": args.warmup_batches, "seed": args.seed,
            "seed_per_repeat": args.seed_per_repeat,
            "canctr_set": args.canctr_set,
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
            "date": time.strftime("%Y-%m-%d %H:%M"), "versions": versions,
            "command": shlex.join(["python", *sys.argv])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for i, job in enumerate(jobs):
        results.append(run_job(job, args, data if job.library == "canctr" else export, logs))
        check_settings(results[-1:])  # stop at the first canctr run if the matched settings drifted
        if results[-1]["train_samples"] != n_train:  # every library trains on the same rows
            raise SystemExit(f"[{job.tag}] trained on {results[-1]['train_samples']} samples, expected {n_train}")
        # written after every run, so a comparison stopped part way keeps what it measured (see `merge`)
        partial = {**meta, "partial": f"{i + 1} of {len(jobs)} runs"} if i + 1 < len(jobs) else meta
        md = write_report({"meta": partial, "summary": summarise(results), "runs": results}, out)
    print(md)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def write_report(report: dict, out: Path) -> str:
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    return md


def merge(args: argparse.Namespace) -> int:
    reports = [json.loads(Path(p).read_text()) for p in args.inputs]
    metas = [r["meta"] for r in reports]
    if len({(m["data"], m["train_samples"], m["test_samples"]) for m in metas}) > 1:
        found = (f"{p}: {m['data']} ({m['train_samples']} train)" for p, m in zip(args.inputs, metas, strict=True))
        raise SystemExit("merge: the inputs were measured on different data: " + "; ".join(found))
    meta = {**metas[0], "commands": [m["command"] for m in metas], "repeats": max(m["repeats"] for m in metas),
            "export": next((m["export"] for m in metas if m.get("export")), None),
            "versions": {k: v for m in metas for k, v in m["versions"].items()},
            "date": " / ".join(dict.fromkeys(m["date"] for m in metas))}
    runs = [r for rep in reports for r in rep["runs"]]
    meta.pop("partial", None)
    if args.note:
        meta["note"] = args.note
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(write_report({"meta": meta, "summary": summarise(runs), "runs": runs}, out))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    venv = argparse.ArgumentParser(add_help=False)
    venv.add_argument("--venv-root", default="/tmp", help="peers' venvs go to ROOT/venv-{deepctr,rechub}")
    for peer in PEERS:
        venv.add_argument(f"--venv-{peer.venv_name}", help=f"{peer.name} venv (overrides --venv-root)")

    s = sub.add_parser("setup", parents=[venv], help="create the peers' venvs (idempotent)")
    s.add_argument("--force", action="store_true", help="reinstall even if a venv already works")
    s.add_argument("--dry-run", action="store_true", help="print the commands only")

    r = sub.add_parser("run", parents=[venv], help="measure and write OUT.json + OUT.md")
    r.add_argument("--data", required=True, help="a `canctr prepare` output directory")
    r.add_argument("--out", default="runs/peers/compare", help="results path without suffix")
    r.add_argument("--work", default="runs/peers", help="sliced data, the peers' padded export and per-run logs")
    r.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    r.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    r.add_argument("--libraries", nargs="+", default=["canctr", *(p.name for p in PEERS)],
                   choices=["canctr", *(p.name for p in PEERS)])
    r.add_argument("--can-dien", action=argparse.BooleanOptionalAction, default=True,
                   help="also time canctr's CAN-DIEN next to its DIEN (default on)")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--threads", type=int, default=2, help="torch / OpenMP / MKL threads of every run")
    r.add_argument("--warmup-batches", type=int, default=5)
    r.add_argument("--max-train-samples", type=int, help="train every library on the first N training rows")
    r.add_argument("--seed", type=int, default=3)
    r.add_argument("--seed-per-repeat", action="store_true",
                   help="repeat r trains with seed SEED + r, so AUC gets a mean and std over seeds")
    r.add_argument("--timeout", type=float, help="seconds per run")
    r.add_argument("--eval-at-samples", type=int, nargs="+", default=[], metavar="N",
                   help="a learning curve: every run also scores the test split once N training samples have "
                        "been seen (left out of the timing), e.g. 10000 40000 200000")
    r.add_argument("--canctr-set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override for canctr's runs (as `canctr train --set`), e.g. "
                        "hidden_norm=batchnorm to match torch-rechub's BN-per-layer MLP")
    g = sub.add_parser("merge", help="one report from the runs of several OUT.json (e.g. canctr's runs and the "
                                     "peers' taken apart), written as OUT.json + OUT.md")
    g.add_argument("inputs", nargs="+", help="OUT.json files of `run`, all on the same data")
    g.add_argument("--out", required=True, help="results path without suffix")
    g.add_argument("--note", help="a sentence printed under the report's header (e.g. how the runs were loaded)")
    args = ap.parse_args()
    return {"setup": setup, "run": run, "merge": merge}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
