"""A bounded loopback load test of `canctr serve` (issue 11, item 2).

For each run and engine the script starts a real server (`python -m canctr.cli serve --run RUN --port P
--engine E --workers 1`, on 127.0.0.1), waits for /healthz, and drives POST /v1/score with N concurrent
client loops (httpx.AsyncClient, asyncio.gather) at each level of --clients. Every request is one user
(raw user id + a 50-long history of raw item ids with their categories, taken from a training row of the
prepared data) and 100 candidate items with their categories (raw ids from the vocabularies), so every id
is a real one. Per level two phases run, each a fixed number of requests after a warm-up, each also capped
by --max-seconds so that the script always stops by itself:

    clean  all requests valid: each must answer 200 with 100 finite probabilities;
    mixed  the same plus --malformed-rate of malformed bodies at request indices drawn by a seeded RNG
           (wrong type, unknown field, missing field, truncated JSON, non-UTF-8): each must answer 4xx,
           and the good ones exactly as in "clean".

Latency is measured by the client (send to answer parsed), throughput is completed requests over the
phase's wall time. Client and server share the machine's cores (loopback), so a client loop's own CPU
time is part of every figure; the server's CPU seconds (from /proc) are recorded beside it. The server is
stopped with SIGTERM at the end (graceful shutdown) and its exit status recorded.

    python benchmarks/load_test.py --data data/beauty --runs runs/lt-can-dnn runs/lt-can-dien \
        --engines torch onnx --out benchmarks/results/load_test_cpu
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from canctr.bench import write_results
from canctr.env import machine_description

ROOT = Path(__file__).resolve().parents[1]

MALFORMED_KINDS = ("wrong_type", "unknown_field", "missing_field", "truncated_json", "not_utf8")


# ------------------------------------------------------------------------------------------- requests


def raw_id(token: str) -> int | str:
    """The vocabulary's raw id as a request would send it (an integer where it is one)."""
    try:
        return int(token)
    except ValueError:
        return token


def build_requests(data: Path, n_users: int, n_cands: int, hist_len: int, seed: int) -> list[dict[str, Any]]:
    """`n_users` request bodies of real raw ids: distinct training rows with a history of >= hist_len (its
    last hist_len ids), each with n_cands distinct candidate items (random, seeded) and their categories."""
    vocab = {t: json.loads((data / "vocab" / f"{t}.json").read_text()) for t in ("user", "item", "cate")}
    split = data / "train"
    arr = {c: np.load(split / f"{c}.npy") for c in ("user", "item", "cate", "hist_item", "hist_cate")}
    offsets = np.load(split / "hist.offsets.npy")
    # item index -> its category index (as the rows give it)
    item2cate = dict(zip(arr["hist_item"].tolist(), arr["hist_cate"].tolist(), strict=True))
    item2cate.update(zip(arr["item"].tolist(), arr["cate"].tolist(), strict=True))
    items = np.array(sorted(i for i in item2cate if i > 0))
    rng = np.random.default_rng(seed)
    lengths = np.diff(offsets)
    rows, seen = [], set()
    for r in rng.permutation(np.flatnonzero(lengths >= hist_len)):
        if arr["user"][r] > 0 and arr["user"][r] not in seen:
            seen.add(int(arr["user"][r]))
            rows.append(int(r))
        if len(rows) == n_users:
            break
    if len(rows) < n_users:
        raise SystemExit(f"load_test: only {len(rows)} users of {data}/train have a history of >= {hist_len}")
    bodies = []
    for r in rows:
        lo, hi = offsets[r + 1] - hist_len, offsets[r + 1]
        user = {"user": raw_id(vocab["user"][arr["user"][r]]),
                "hist_item": [raw_id(vocab["item"][i]) for i in arr["hist_item"][lo:hi]],
                "hist_cate": [raw_id(vocab["cate"][c]) for c in arr["hist_cate"][lo:hi]]}
        cands = [{"item": raw_id(vocab["item"][i]), "cate": raw_id(vocab["cate"][item2cate[int(i)]])}
                 for i in rng.choice(items, n_cands, replace=False)]
        bodies.append({"user": user, "candidates": cands})
    return bodies


def malformed(body: dict[str, Any], kind: str, rng: np.random.Generator) -> bytes:
    """One malformed variant of a valid body (all are 4xx by docs/serving.md "Errors")."""
    b = json.loads(json.dumps(body))
    if kind == "wrong_type":  # a float id: 422
        k = int(rng.integers(len(b["candidates"])))
        b["candidates"][k]["item"] = float(b["candidates"][k]["item"]) + 0.5
    elif kind == "unknown_field":  # 422
        b["user"]["age"] = 30
    elif kind == "missing_field":  # 422
        del b["candidates"][int(rng.integers(len(b["candidates"])))]["cate"]
    raw = json.dumps(b).encode()
    if kind == "truncated_json":  # 400
        return raw[: int(rng.integers(1, len(raw) - 1))]
    if kind == "not_utf8":  # 400
        k = int(rng.integers(1, len(raw) - 1))
        return raw[:k] + b"\xff" + raw[k + 1:]
    return raw


# ------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants (Linux /proc), seconds."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


class Server:
    def __init__(self, run: str, engine: str, log: Path, threads: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = ["python", "-m", "canctr.cli", "serve", "--run", run, "--engine", engine, "--host",
                     "127.0.0.1", "--port", str(self.port), "--workers", "1", "--log-level", "warning"]
        self.log = log
        self.proc = subprocess.Popen([sys.executable, *self.argv[1:]], cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1",
                                          **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                                             if threads else {})},
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> float:
        t0 = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while time.monotonic() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise SystemExit(f"load_test: server exited {self.proc.returncode}:\n{self.log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if c.get("/healthz").status_code == 200:
                        return time.monotonic() - t0
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"load_test: server not healthy after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# ------------------------------------------------------------------------------------------- load


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


async def phase(url: str, pid: int, bodies: list[bytes], n_cands: int, clients: int, count: int,
                warmup: int, bad: dict[int, tuple[str, bytes]], max_seconds: float, deadline: float) -> dict[str, Any]:
    """`warmup` then `count` POST /v1/score at `clients` concurrent loops; request i is bodies[i % len]
    unless i is in `bad` (then that malformed body)."""
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        nxt = 0

        async def warm() -> None:
            nonlocal nxt
            while nxt < warmup:
                i, nxt = nxt, nxt + 1
                r = await client.post("/v1/score", content=bodies[i % len(bodies)], headers=headers)
                r.raise_for_status()

        await asyncio.gather(*(warm() for _ in range(clients)))
        good_lat: list[float] = []
        bad_lat: list[float] = []
        res: dict[str, Any] = {"good": 0, "good_200": 0, "good_wrong_answer": 0, "bad": 0, "bad_4xx": 0,
                               "status": {}, "bad_status": {k: {} for k in MALFORMED_KINDS},
                               "transport_errors": 0, "5xx": 0, "examples": {}}
        nxt, stop_at = 0, min(time.monotonic() + max_seconds, deadline)

        async def loop() -> None:
            nonlocal nxt
            while nxt < count and time.monotonic() < stop_at:
                i, nxt = nxt, nxt + 1
                kind, body = bad.get(i, (None, bodies[i % len(bodies)]))
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/score", content=body, headers=headers)
                    payload = r.content
                except httpx.HTTPError as e:
                    res["transport_errors"] += 1
                    res["examples"].setdefault("transport", repr(e))
                    continue
                lat = time.perf_counter() - t0
                starts.append((t0 - t_phase, lat))
                s = str(r.status_code)
                res["status"][s] = res["status"].get(s, 0) + 1
                res["5xx"] += r.status_code >= 500
                if kind is None:
                    res["good"] += 1
                    good_lat.append(lat)
                    if r.status_code == 200:
                        res["good_200"] += 1
                        scores = json.loads(payload)["scores"]
                        if len(scores) != n_cands or not all(math.isfinite(x) and 0 <= x <= 1 for x in scores):
                            res["good_wrong_answer"] += 1
                    else:
                        res["examples"].setdefault(f"good_{s}", payload[:300].decode(errors="replace"))
                else:
                    res["bad"] += 1
                    bad_lat.append(lat)
                    res["bad_4xx"] += 400 <= r.status_code < 500
                    ks = res["bad_status"][kind]
                    ks[s] = ks.get(s, 0) + 1
                    res["examples"].setdefault(kind, f"{s} {json.loads(payload).get('detail', '')[:160]}"
                                               if r.headers.get("content-type", "").startswith("application/json")
                                               else f"{s} {payload[:160]!r}")

        starts: list[tuple[float, float]] = []  # (start offset in the phase, latency), every answered request
        cpu0, ccpu0 = cpu_seconds(pid), time.process_time()
        t_phase = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        wall = time.perf_counter() - t_phase
        done = res["good"] + res["bad"] + res["transport_errors"]
        res["bad_status"] = {k: v for k, v in res["bad_status"].items() if v}
        res.update(
            clients=clients, requests=done, stopped_by="count" if done >= count else "time cap",
            wall_s=wall, requests_per_s=done / wall, candidates_per_s=res["good_200"] * n_cands / wall,
            p50_ms=pct(good_lat, 50) * 1e3, p99_ms=pct(good_lat, 99) * 1e3, max_ms=max(good_lat) * 1e3,
            mean_ms=float(np.mean(good_lat)) * 1e3,
            over_1s=sum(lat > 1 for _, lat in starts),
            slowest=[{"start_s": round(t, 3), "ms": round(lat * 1e3, 1)}
                     for t, lat in sorted(starts, key=lambda x: -x[1])[:10]],
            bad_p50_ms=None if not bad_lat else pct(bad_lat, 50) * 1e3,
            server_cpu_s=cpu_seconds(pid) - cpu0, client_cpu_s=time.process_time() - ccpu0)
        res["errors"] = (res["transport_errors"] + res["5xx"] + (res["good"] - res["good_200"])
                         + res["good_wrong_answer"] + (res["bad"] - res["bad_4xx"]))
        return res


# ------------------------------------------------------------------------------------------- record


def rel(arg: str) -> str:
    """An argument as the record shows it: paths under the repository relative to it."""
    p = Path(arg)
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            return str(p.resolve().relative_to(ROOT))
    return arg


def markdown(r: dict[str, Any]) -> str:
    a = r["args"]
    lines = [
        "# Loopback load test of `canctr serve`", "",
        f"{r['date']}, {r['machine']}.", "",
        "```bash", r["command"], "```", "",
        f"POST /v1/score, 1 user (raw user id + a {a['hist_len']}-long history of item and category ids) x "
        f"{a['candidates']} candidates per request, all raw ids real ones of `{a['data']}` ({a['users']} "
        "distinct users, bodies sent round-robin). Server: `canctr serve --workers 1` on 127.0.0.1 (one "
        "process, scoring on its event loop; "
        + (f"OMP_NUM_THREADS={a['server_threads']}" if a["server_threads"] else "torch / ONNX Runtime default threads")
        + "); client: this script, "
        f"N concurrent `httpx.AsyncClient` loops in one process. **Client and server share the machine's "
        f"{os.cpu_count()} cores** (and other jobs may run beside), so every figure includes the client's own "
        "CPU time; server and client CPU seconds per request are shown. Per level: "
        f"{a['warmup']} warm-up requests, then a fixed count ({', '.join(map(str, a['requests']))} at "
        f"{', '.join(map(str, a['clients']))} clients; each phase also capped at {a['max_seconds']:g} s and the "
        f"whole run at {a['max_total_seconds']:g} s: a phase so stopped says so below). "
        f"Latency = client send to answer read, of the good requests only; throughput = completed requests "
        f"(and 200-scored candidates) / the phase's wall time. *mixed*: {a['malformed_rate']:.0%} of the "
        f"requests malformed (kinds {', '.join(MALFORMED_KINDS)}; indices and kinds from a seeded RNG, seed "
        f"{a['seed']}); errors = transport errors + 5xx + good requests not 200 with {a['candidates']} "
        "probabilities + malformed requests not 4xx (must be 0).", "",
        "| model | engine | clients | phase | requests | good 200 | malformed 4xx | errors | req/s | cand/s | "
        "p50 ms | p99 ms | max ms | server CPU ms/req | client CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["servers"]:
        for p in s["phases"]:
            bad = f"{p['bad_4xx']}/{p['bad']}" if p["phase"] == "mixed" else "-"
            cap = "" if p["stopped_by"] == "count" else " **(time cap)**"
            lines.append(
                f"| {s['model']} | {s['engine']} | {p['clients']} | {p['phase']}{cap} | {p['requests']} | "
                f"{p['good_200']}/{p['good']} | {bad} | {p['errors']} | {p['requests_per_s']:.0f} | "
                f"{p['candidates_per_s']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['max_ms']:.1f} | "
                f"{p['server_cpu_s'] / p['requests'] * 1e3:.2f} | {p['client_cpu_s'] / p['requests'] * 1e3:.2f} |")
    slow = [(s, p) for s in r["servers"] for p in s["phases"] if p.get("over_1s")]
    if slow:
        lines += ["", "Phases with requests over 1 s (start offset in the phase and latency of the slowest):", ""]
        lines += [f"* {s['model']} / {s['engine']}, {p['clients']} clients, {p['phase']}: {p['over_1s']} requests "
                  f"> 1 s; " + ", ".join(f"{x['start_s']:.1f} s: {x['ms']:.0f} ms" for x in p["slowest"][:5])
                  for s, p in slow]
    lines += ["", "Malformed requests (all phases): status codes per kind, and one answer of each:", ""]
    for s in r["servers"]:
        kinds: dict[str, dict[str, int]] = {}
        ex: dict[str, str] = {}
        for p in s["phases"]:
            for k, st in p["bad_status"].items():
                for code, n in st.items():
                    kinds.setdefault(k, {})[code] = kinds.setdefault(k, {}).get(code, 0) + n
            for k, v in p["examples"].items():
                ex.setdefault(k, v)
        desc = "; ".join(f"{k}: {' '.join(f'{c}x{n}' for c, n in sorted(v.items()))}" for k, v in kinds.items())
        note = " (uvicorn re-raises SIGTERM after its graceful shutdown)" if s["exit_code"] == -15 else ""
        lines.append(f"* {s['model']} / {s['engine']}: {desc}. Server exit on SIGTERM: {s['exit_code']}{note}; "
                     f"ready in {s['startup_s']:.1f} s.")
        for k in MALFORMED_KINDS:
            if k in ex:
                lines.append(f"  * `{k}`: `{ex[k]}`")
        for k in sorted(set(ex) - set(MALFORMED_KINDS)):
            lines.append(f"  * **unexpected** `{k}`: `{ex[k]}`")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/beauty", help="prepared data whose train rows give the requests")
    ap.add_argument("--runs", nargs="+", default=["runs/lt-can-dnn", "runs/lt-can-dien"])
    ap.add_argument("--engines", nargs="+", default=["torch"], choices=["torch", "onnx"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, nargs="+", default=[300, 1500, 1500],
                    help="requests per phase, one per --clients level")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--max-seconds", type=float, default=60, help="cap on one phase's measured part")
    ap.add_argument("--max-total-seconds", type=float, default=480,
                    help="cap on the whole run's measured phases (later phases then stop early)")
    ap.add_argument("--server-threads", type=int, default=0,
                    help="OMP_NUM_THREADS / MKL_NUM_THREADS for the server (torch intra-op threads; ONNX Runtime "
                         "keeps its own default); 0 = the libraries' defaults")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--hist-len", type=int, default=50)
    ap.add_argument("--users", type=int, default=64, help="distinct request bodies")
    ap.add_argument("--malformed-rate", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default="benchmarks/results/load_test_cpu")
    args = ap.parse_args()
    if len(args.requests) != len(args.clients):
        ap.error("--requests needs one count per --clients level")
    os.chdir(ROOT)
    t_start = time.monotonic()
    bodies = build_requests(Path(args.data), args.users, args.candidates, args.hist_len, args.seed)
    raw = [json.dumps(b).encode() for b in bodies]
    print(f"{len(raw)} request bodies, {np.mean([len(b) for b in raw]) / 1024:.1f} KiB each", flush=True)
    record: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/load_test.py", *map(rel, sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(), "cpu_count": os.cpu_count(),
        "args": {**vars(args), "body_bytes_mean": float(np.mean([len(b) for b in raw]))},
        "server": "canctr serve --workers 1 --host 127.0.0.1 (one uvicorn process, scoring on its event loop, "
                  "torch / ONNX Runtime default intra-op threads); client in this process; client and server "
                  "share the machine's cores",
        "servers": []}
    with tempfile.TemporaryDirectory(prefix="canctr-load-") as tmp:
        for run in args.runs:
            for engine in args.engines:
                srv = Server(run, engine, Path(tmp) / "server.log", args.server_threads)
                try:
                    startup = srv.wait(300)
                    info = httpx.get(f"{srv.url}/v1/model", timeout=10).json()
                    entry = {"run": rel(run), "engine": engine, "model": info["model"],
                             "checkpoint_sha256": info["checkpoint"]["sha256"], "startup_s": startup,
                             "server_argv": [rel(a) if a != str(srv.port) else "P" for a in srv.argv], "phases": []}
                    print(f"== {info['model']} / {engine}: ready in {startup:.1f} s", flush=True)
                    for level, (clients, count) in enumerate(zip(args.clients, args.requests, strict=True)):
                        for ph in ("clean", "mixed"):
                            bad: dict[int, tuple[str, bytes]] = {}
                            if ph == "mixed":
                                rng = np.random.default_rng([args.seed, level])
                                n_bad = max(1, round(args.malformed_rate * count))
                                for i in sorted(rng.choice(count, n_bad, replace=False).tolist()):
                                    kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
                                    bad[i] = (kind, malformed(bodies[i % len(bodies)], kind, rng))
                            p = asyncio.run(phase(srv.url, srv.proc.pid, raw, args.candidates, clients, count,
                                                  args.warmup, bad, args.max_seconds, t_start + args.max_total_seconds))
                            if srv.proc.poll() is not None:
                                p["examples"]["server_died"] = f"exit {srv.proc.returncode}"
                                p["errors"] += 1
                            p["phase"] = ph
                            entry["phases"].append(p)
                            print(f"  {clients:>3} clients {ph:<5} {p['requests']:>5} req  {p['requests_per_s']:7.1f}"
                                  f" req/s  p50 {p['p50_ms']:6.2f}  p99 {p['p99_ms']:6.2f} ms  errors {p['errors']}"
                                  f"  bad 4xx {p['bad_4xx']}/{p['bad']}", flush=True)
                    health = httpx.get(f"{srv.url}/healthz", timeout=10)
                    entry["healthz_after"] = health.status_code
                finally:
                    entry_exit = srv.stop()
                entry["exit_code"] = entry_exit
                entry["server_log_tail"] = srv.log.read_text()[-2000:].replace(tmp, "<tmp>")
                record["servers"].append(entry)
    record["total_s"] = time.monotonic() - t_start
    record["errors"] = sum(p["errors"] for s in record["servers"] for p in s["phases"])
    md = markdown(record) + f"\n\nWhole run: {record['total_s']:.0f} s; errors in total: {record['errors']}.\n"
    write_results(args.out, record, md)
    print(f"wrote {args.out}.json and {args.out}.md; errors {record['errors']}")
    return 1 if record["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
