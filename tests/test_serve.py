"""`canctr serve`: real uvicorn servers (subprocesses on free 127.0.0.1 ports) under a real httpx client.

One tiny can-dien run on synthetic prepared data whose vocabularies hold numeric text ids (user 1001..,
item 2001.., cate 3001..). Two servers start side by side: --engine torch (small limits, to test them) and
--engine onnx (exported at start). Scores are checked against the eager model on `map_candidates`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from canctr.cli import main
from canctr.data.schema import Schema, save_vocab
from canctr.serve.vocab import RawIdMapper, map_candidates
from canctr.train.checkpoint import load_model

httpx = pytest.importorskip("httpx", reason="needs the serve extra (pip install -e '.[serve]')")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOL = 1e-5
BASE = {"user": 1000, "item": 2000, "cate": 3000}  # raw id of index i: BASE[table] + i
LIMITS = {"max_candidates": 120, "max_history": 30, "max_batch": 3, "max_body_bytes": 20_000}
USER = {"user": 1003, "hist_item": [2001, "2005", 2999, 2007], "hist_cate": [3001, 3002, 3003, 3001]}
CANDS = [{"item": 2003, "cate": 3001}, {"item": "2004", "cate": 3002}, {"item": 777, "cate": None}]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def train(data: Path, out: Path, seed: int) -> Path:
    rc, _, err = cli("train", "--data", str(data), "--model", "can-dien", "--out", str(out), "--device", "cpu",
                     "--no-progress", "--batch-size", "256", "--epochs", "1", "--seed", str(seed),
                     "--set", "embed_dim=4", "--set", "mlp=[8]", "--set", "hidden_dim=4")
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """data + the served run + a second run (another seed) whose checkpoint a reload swaps in."""
    from synth import make_prepared

    root = tmp_path_factory.mktemp("serve")
    data = make_prepared(root / "data", n_train=256, n_test=64)
    for table, n in Schema.load(data).vocab.items():
        save_vocab(data, table, ["<pad/unk>", *(str(BASE[table] + i) for i in range(1, n))])
    return {"data": data, "run": train(data, root / "run", 3), "other": train(data, root / "other", 4)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "canctr.cli", "serve", "--port", str(self.port),
                                      "--log-level", "warning", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait(self, timeout: float = 90) -> Server:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/healthz").status_code == 200:
                    return self
            time.sleep(0.1)
        pytest.fail("server did not start")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture(scope="module")
def servers(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Both engines, started together (the ONNX one exports first); the torch one serves a copy of the run so
    that the reload tests may replace its checkpoint."""
    served = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(runs["run"], served)
    limits = [a for k, v in LIMITS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    torch_srv = Server("--run", str(served), "--data", str(runs["data"]), *limits)
    onnx_srv = Server("--run", str(runs["run"]), "--engine", "onnx")
    try:
        yield {"torch": torch_srv.wait(), "onnx": onnx_srv.wait(), "served": served}
    finally:
        torch_srv.stop()
        onnx_srv.stop()


def expected(run: Path, user: dict, cands: list[dict]) -> np.ndarray:
    """The eager model's probabilities on `map_candidates` (the reference the service must equal)."""
    model, _ = load_model(run)
    model.eval()
    mapper = RawIdMapper.from_run(run)
    batch = map_candidates(mapper, user, {k: [c[k] for c in cands] for k in cands[0]})
    with torch.no_grad():
        return torch.sigmoid(model(batch).logits).numpy()


def post(srv: Server, body, path: str = "/v1/score", **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return srv.client.post(path, json=body, **kw)
    return srv.client.post(path, content=body, **kw)


# ------------------------------------------------------------------------------------------ scores


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_scores_equal_the_eager_model(engine: str, servers: dict, runs: dict) -> None:
    srv = servers[engine]
    user = {**USER, "hist_item": [2001, 2005, 2999, 2007]}  # map_candidates wants one id type per list
    ref = expected(runs["run"], user, CANDS)
    r = post(srv, {"user": USER, "candidates": CANDS})  # "2005" as text is the same id
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "can-dien" and len(body["scores"]) == 3
    np.testing.assert_allclose(body["scores"], ref, atol=TOL)
    # unknown: item 777, a null cate, history item 2999 (vocab has 2001..2059)
    assert body["unknown"] == {"user": 0, "item": 1, "cate": 1, "hist_item": 1, "hist_cate": 0}

    # 100 candidates with a 12-long history: order kept, equal to the reference
    rng = np.random.default_rng(0)
    cands = [{"item": int(2000 + i), "cate": int(3000 + c)} for i, c in
             zip(rng.integers(1, 70, 100), rng.integers(1, 8, 100))]
    user = {"user": 1010, "hist_item": [int(x) for x in 2000 + rng.integers(1, 60, 12)],
            "hist_cate": [int(x) for x in 3000 + rng.integers(1, 8, 12)]}
    r = post(srv, {"user": user, "candidates": cands})
    np.testing.assert_allclose(r.json()["scores"], expected(runs["run"], user, cands), atol=TOL)
    assert r.json()["unknown"]["item"] == sum(c["item"] > 2059 for c in cands)

    # the batch form: several users in one call, each equal to its own single request
    reqs = [{"user": user, "candidates": cands[:7]},
            {"user": {"user": None, "hist_item": [], "hist_cate": None}, "candidates": cands[7:9]},
            {"user": {**USER, "hist_item": [2001, 2005, 2999, 2007]}, "candidates": CANDS[:1]}]
    r = post(srv, {"requests": reqs}, "/v1/score/batch")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["scores"]) for x in results] == [7, 2, 1]
    for req, res in zip(reqs, results):
        ref = expected(runs["run"], {k: v or [] if k != "user" else v for k, v in req["user"].items()},
                       req["candidates"])
        np.testing.assert_allclose(res["scores"], ref, atol=TOL)
    assert results[1]["unknown"]["user"] == 1 and results[1]["unknown"]["hist_item"] == 0


def test_history_longer_than_max_len_keeps_the_last_max_len(servers: dict, runs: dict) -> None:
    max_len = Schema.load(runs["data"]).spec.sequence_group("hist").max_len  # 12 in the synthetic data
    hist = [2000 + (i % 59) + 1 for i in range(max_len + 9)]
    cates = [3001 + (i % 7) for i in range(max_len + 9)]
    long = post(servers["torch"], {"user": {"user": 1001, "hist_item": hist, "hist_cate": cates}, "candidates": CANDS})
    short = {"user": 1001, "hist_item": hist[-max_len:], "hist_cate": cates[-max_len:]}
    assert long.status_code == 200, long.text
    np.testing.assert_allclose(long.json()["scores"], expected(runs["run"], short, CANDS), atol=TOL)


def test_healthz_and_model_info(servers: dict, runs: dict) -> None:
    from canctr import __version__
    from canctr.serve.export import sha256_file

    sha = sha256_file(runs["run"] / "checkpoint" / "model.safetensors")
    for engine in ("torch", "onnx"):
        h = servers[engine].client.get("/healthz")
        assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["model"] == "can-dien"
        info = servers[engine].client.get("/v1/model").json()
        assert info["engine"] == engine and info["model"] == "can-dien" and info["canctr_version"] == __version__
        assert info["checkpoint"]["sha256"] == sha
        assert info["vocab_sizes"] == {"user": 51, "item": 60, "cate": 8}
        assert [f["name"] for f in info["spec"]["fields"]] == ["user", "item", "cate", "hist_item", "hist_cate"]
        assert info["max_len"] == {"hist": 12}
    assert servers["onnx"].client.get("/v1/model").json()["onnx"]["opset"] == 18
    assert servers["torch"].client.get("/v1/model").json()["limits"]["max_candidates"] == 120


# ------------------------------------------------------------------------------------------ bad requests


def bad(srv: Server, body, status: int, *needles: str, path: str = "/v1/score", **kw) -> dict:
    r = post(srv, body, path, **kw)
    assert r.status_code == status, (body if not isinstance(body, bytes) else body[:80], r.status_code, r.text)
    detail = r.json()["detail"]
    for n in needles:
        assert n in detail, (n, detail)
    return r.json()


def test_each_class_of_bad_request_gets_its_4xx(servers: dict) -> None:
    srv = servers["torch"]
    ok = {"user": USER, "candidates": CANDS}
    # size: declared by Content-Length, and streamed in chunks without one
    bad(srv, b"{" + b" " * 30_000 + b"}", 413, "limit of 20000 bytes", "--max-body-bytes")
    bad(srv, (b" " * 1000 for _ in range(30)), 413, "limit of 20000 bytes")
    # not UTF-8, not JSON, not an object
    bad(srv, b'{"user": "\xff\xfe"}', 400, "not valid UTF-8")
    bad(srv, b'{"user": {"user": 1', 400, "malformed JSON")
    bad(srv, b"", 400, "malformed JSON")
    bad(srv, [1, 2], 422, "Input should be an object")
    # limits
    bad(srv, {"user": USER, "candidates": CANDS * 41}, 422, "candidates: 123 candidates exceed the limit of 120",
        "--max-candidates")
    bad(srv, {"user": USER, "candidates": []}, 422, "candidates: empty")
    long = {**USER, "hist_item": [2001] * 31, "hist_cate": [3001] * 31}
    bad(srv, {"user": long, "candidates": CANDS}, 422, "user.hist_item: 31 ids exceed the limit of 30", "--max-history")
    bad(srv, {"requests": [ok] * 4}, 422, "requests: 4 requests exceed the limit of 3", path="/v1/score/batch")
    bad(srv, {"requests": []}, 422, "requests: empty", path="/v1/score/batch")
    bad(srv, {"user": {**USER, "user": "x" * 300}, "candidates": CANDS}, 422, "user.user", "exceeds the limit of 256")
    # unknown fields, wrong side, missing fields
    bad(srv, {"user": {**USER, "age": 3}, "candidates": CANDS}, 422, "user.age: unknown field")
    bad(srv, {"user": USER, "candidates": [{"item": 2001, "cate": 3001, "colour": 1}]}, 422,
        "candidates[0].colour: unknown field")
    bad(srv, {"user": {**USER, "item": 2001}, "candidates": CANDS}, 422,
        "user.item: 'item' is an item-side field: give it in each candidate")
    bad(srv, {"user": USER, "candidates": [{"item": 2001, "cate": 3001, "user": 1001}]}, 422,
        "candidates[0].user: 'user' is a user-side field: give it in \"user\"")
    bad(srv, {"user": {"user": 1001, "hist_item": []}, "candidates": CANDS}, 422, "user.hist_cate: missing",
        "send null")
    bad(srv, {"user": USER, "candidates": [{"item": 2001}]}, 422, "candidates[0].cate: missing")
    bad(srv, {"candidates": CANDS}, 422, "user: missing")
    bad(srv, {**ok, "extra": 1}, 422, "extra: unknown key")
    # wrong types
    bad(srv, {"user": {**USER, "user": [1001]}, "candidates": CANDS}, 422,
        "user.user: expected an integer (int64) or string id, or null; got list")
    bad(srv, {"user": USER, "candidates": [{"item": 2001.0, "cate": 3001}]}, 422,
        "candidates[0].item: expected an integer (int64) or string id", "got float 2001.0")
    bad(srv, {"user": USER, "candidates": [{"item": True, "cate": 3001}]}, 422, "candidates[0].item", "got bool")
    bad(srv, {"user": USER, "candidates": [{"item": 2**64, "cate": 3001}]}, 422, "candidates[0].item")
    bad(srv, {"user": {**USER, "hist_item": 2001}, "candidates": CANDS}, 422,
        "user.hist_item: expected a list of integer or string ids")
    bad(srv, {"user": {**USER, "hist_item": [2001, 2.5, 2003, 2004]}, "candidates": CANDS}, 422,
        "user.hist_item[1]: expected an integer (int64) or string id")
    bad(srv, {"user": USER, "candidates": [1, 2]}, 422, "candidates[0]: Input should be an object")
    bad(srv, {"user": {**USER, "hist_cate": [3001]}, "candidates": CANDS}, 422,
        "'hist_item' and 'hist_cate' (group 'hist') must have equal lengths")
    # a bad request inside the batch form names its place
    bad(srv, {"requests": [ok, {"user": USER, "candidates": [{"item": [1], "cate": 3001}]}]}, 422,
        "requests[1].candidates[0].item: expected", path="/v1/score/batch")
    # other routes and methods stay JSON
    r = srv.client.get("/v1/score")
    assert r.status_code == 405 and r.json()["detail"] == "Method Not Allowed"
    assert srv.client.get("/nope").status_code == 404
    assert post(srv, ok).status_code == 200  # and the worker still serves


def test_no_bad_request_yields_a_500_or_kills_the_worker(servers: dict) -> None:
    """Every truncation of a valid body, 200 seeded byte mutations and random junk: 4xx (or 200), never 5xx."""
    rng = np.random.default_rng(7)
    good = json.dumps({"user": USER, "candidates": CANDS}).encode()
    bodies = [good[:i] for i in range(0, len(good), 3)]
    for _ in range(200):
        b = bytearray(good)
        for j in rng.integers(0, len(b), rng.integers(1, 4)):
            b[j] = int(rng.integers(0, 256))
        bodies.append(bytes(b))
    bodies += [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (1, 10, 100, 5000)]
    bodies += [b"null", b"1e999", b'{"user": NaN}', b'"x"', b"[]" * 5000, b'{"user": {"user": 1e400}}',
               b"{" * 5000, b'{"user":{"user":1,"hist_item":[[1]],"hist_cate":[[1]]},"candidates":[{}]}']
    srv = servers["torch"]
    pid = srv.client.get("/v1/model").json()["pid"]
    statuses = {}
    for path in ("/v1/score", "/v1/score/batch"):
        for b in bodies:
            r = srv.client.post(path, content=b)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (b[:100], r.text)
            assert "detail" in r.json() or r.status_code == 200
    assert set(statuses) <= {200, 400, 413, 422} and statuses.get(400) and statuses.get(422)
    assert srv.client.get("/v1/model").json()["pid"] == pid and srv.proc.poll() is None


# ------------------------------------------------------------------------------------------ reload


def swap_checkpoint(run: Path, source: Path) -> None:
    """Replace run/checkpoint by source's in one rename (as training writes it)."""
    tmp = run / "checkpoint.new"
    shutil.copytree(source / "checkpoint", tmp)
    old = run / "checkpoint.old"
    os.replace(run / "checkpoint", old)
    os.replace(tmp, run / "checkpoint")
    shutil.rmtree(old)


def test_reload_swaps_the_model_atomically_and_sighup_reloads(servers: dict, runs: dict) -> None:
    srv, served = servers["torch"], servers["served"]
    user = {**USER, "hist_item": [2001, 2005, 2999, 2007]}
    old_ref, new_ref = expected(runs["run"], user, CANDS), expected(runs["other"], user, CANDS)
    assert np.abs(old_ref - new_ref).max() > 1e-3  # the two checkpoints score differently
    old_sha = srv.client.get("/healthz").json()["checkpoint_sha256"]

    # requests flow from another client while the checkpoint is replaced and reloaded: each answer is
    # wholly the old model's or wholly the new one's, none fails
    seen, stop, failures = [], threading.Event(), []

    def hammer() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/score", json={"user": user, "candidates": CANDS})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                s = np.array(r.json()["scores"])
                seen.append("old" if np.allclose(s, old_ref, atol=TOL) else
                            "new" if np.allclose(s, new_ref, atol=TOL) else f"mixed {s}")

    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.3)
        swap_checkpoint(served, runs["other"])
        r = srv.client.post("/v1/reload")
        assert r.status_code == 200, r.text
        assert r.json()["previous_checkpoint_sha256"] == old_sha != r.json()["checkpoint_sha256"]
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert not failures and seen and set(seen) <= {"old", "new"}, (failures[:2], set(seen))
    assert seen[0] == "old" and seen[-1] == "new" and seen.index("new") > 0
    assert "old" not in seen[seen.index("new"):]  # never back to the old model once swapped

    # a broken checkpoint: the reload fails (500, a server-side problem), the old model keeps serving
    (served / "checkpoint" / "model.safetensors").write_bytes(b"not a checkpoint")
    r = srv.client.post("/v1/reload")
    assert r.status_code == 500 and "reload failed, still serving checkpoint" in r.json()["detail"]
    np.testing.assert_allclose(post(srv, {"user": user, "candidates": CANDS}).json()["scores"], new_ref, atol=TOL)

    # SIGHUP reloads like POST /v1/reload
    swap_checkpoint(served, runs["run"])
    srv.proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + 20
    while srv.client.get("/healthz").json()["checkpoint_sha256"] != old_sha and time.monotonic() < end:
        time.sleep(0.1)
    np.testing.assert_allclose(post(srv, {"user": user, "candidates": CANDS}).json()["scores"], old_ref, atol=TOL)


def test_graceful_shutdown_finishes_the_request_in_flight(runs: dict) -> None:
    """SIGTERM while a request's body is still arriving: uvicorn stops accepting, answers it (200), then
    exits (re-raising SIGTERM, uvicorn's convention, so the status is -15)."""
    srv = Server("--run", str(runs["run"])).wait()
    body = json.dumps({"user": USER, "candidates": CANDS}).encode()
    started, result = threading.Event(), {}

    def slow_body():
        yield body[:10]
        started.set()
        time.sleep(0.5)
        yield body[10:]

    def send() -> None:
        result["r"] = srv.client.post("/v1/score", content=slow_body())

    t = threading.Thread(target=send)
    t.start()
    started.wait(10)
    time.sleep(0.1)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(20)
    assert result["r"].status_code == 200 and len(result["r"].json()["scores"]) == 3
    assert srv.proc.wait(20) in (0, -signal.SIGTERM)
    srv.client.close()


def test_several_workers_reload_by_sighup(runs: dict, tmp_path: Path) -> None:
    """--workers 2: /v1/reload would reach one worker only (409); SIGHUP to the main process makes uvicorn
    replace every worker with one that loaded the new checkpoint."""
    served = tmp_path / "run"
    shutil.copytree(runs["run"], served)
    srv = Server("--run", str(served), "--data", str(runs["data"]), "--workers", "2").wait()
    try:
        r = srv.client.post("/v1/reload")
        assert r.status_code == 409 and f"send SIGHUP to the server's main process (pid {srv.proc.pid})" in \
            r.json()["detail"]
        before: set[int] = set()  # both workers' pids: one missed here could still answer after SIGHUP, old
        for _ in range(200):
            before.add(httpx.get(srv.url + "/v1/model").json()["pid"])
            if len(before) == 2:
                break
        assert len(before) == 2, before
        swap_checkpoint(served, runs["other"])
        old_sha = srv.client.get("/healthz").json()["checkpoint_sha256"]  # not reloaded yet
        srv.proc.send_signal(signal.SIGHUP)
        end, pids = time.monotonic() + 60, set()
        while time.monotonic() < end and (not pids or pids & before or len(pids) < 2):
            time.sleep(0.2)
            with contextlib.suppress(httpx.TransportError):
                pids = {httpx.get(srv.url + "/v1/model").json()["pid"] for _ in range(6)}
        assert pids and not pids & before, (before, pids)
        # a fresh connection: the kept-alive one of srv.client may still reach an old worker finishing its shutdown
        assert httpx.get(srv.url + "/healthz").json()["checkpoint_sha256"] != old_sha
        user = {**USER, "hist_item": [2001, 2005, 2999, 2007]}
        for _ in range(4):  # whichever worker answers: the new model
            got = httpx.post(srv.url + "/v1/score", json={"user": user, "candidates": CANDS}).json()["scores"]
            np.testing.assert_allclose(got, expected(runs["other"], user, CANDS), atol=TOL)
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------ CLI and models


def serve_error(*argv: str) -> str:
    rc, out, err = cli("serve", *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("canctr serve: error: "), (rc, err)
    return lines[0]


def test_cli_serve_errors(runs: dict, tmp_path: Path) -> None:
    assert "run directory not found" in serve_error("--run", str(tmp_path / "nope"))
    assert "not a training run" in serve_error("--run", str(tmp_path))
    assert "use it with --engine onnx" in serve_error("--run", str(runs["run"]), "--export", str(tmp_path))
    assert "not an export directory" in serve_error("--run", str(runs["run"]), "--engine", "onnx",
                                                    "--export", str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"checkpoint": {"sha256": "0" * 64}}))
    assert "exported from checkpoint sha256 000000000000" in serve_error(
        "--run", str(runs["run"]), "--engine", "onnx", "--export", str(tmp_path))
    assert "--max-candidates must be positive" in serve_error("--run", str(runs["run"]), "--max-candidates", "0")


def test_request_models_dense_and_context_fields() -> None:
    """The validator built from a spec with dense and context fields (the presets have neither)."""
    from canctr.data.spec import FeatureSpec, Field
    from canctr.serve.app import ApiError, RequestModels
    from canctr.serve.scorer import Limits

    spec = FeatureSpec(fields=[Field("u", side="user"), Field("age", kind="dense", side="user"),
                               Field("i", side="item"), Field("price", kind="dense", side="item"),
                               Field("hour", side="context")])
    rm = RequestModels(spec, Limits())

    def parse(body: dict) -> list:
        return rm.parse(json.dumps(body).encode(), batch=False)

    def fails(body: dict | bytes, *needles: str) -> None:
        with pytest.raises(ApiError) as e:
            rm.parse(body if isinstance(body, bytes) else json.dumps(body).encode(), batch=False)
        assert e.value.status == 422 and all(n in e.value.detail for n in needles), e.value.detail

    user = {"u": 1, "age": 31}
    assert parse({"user": {**user, "hour": 9}, "candidates": [{"i": 1, "price": 2.5}]})[0][0]["hour"] == 9
    assert parse({"user": user, "candidates": [{"i": 1, "price": None, "hour": 9}]})[0][1][0]["hour"] == 9
    fails({"user": user, "candidates": [{"i": 1, "price": 1, "hour": 9}, {"i": 2, "price": 1}]},
          "candidates[1].hour: missing (context field 'hour' goes in \"user\" or in every candidate)")
    fails({"user": {**user, "age": "31"}, "candidates": [{"i": 1, "price": 1}]},
          "user.age: expected a finite number, or null; got str 31")
    fails(b'{"user": {"u": 1, "age": NaN}, "candidates": [{"i": 1, "price": 1}]}', "user.age: expected a finite")
    fails({"user": user, "candidates": [{"i": 1, "price": [1.0]}]}, "candidates[0].price: expected a finite number")


def test_scorer_with_dense_and_context_fields_equals_row_mapping() -> None:
    """A spec with dense fields and a context field (the presets have neither), scored by `Scorer` directly:
    the context field shared in "user" or given per candidate scores the same, and both equal `map_rows`."""
    from canctr.data.schema import Schema
    from canctr.data.spec import FeatureSpec, Field, SequenceGroup
    from canctr.models import create_model, make_config
    from canctr.serve.scorer import Limits, Scorer
    from canctr.serve.vocab import map_rows

    spec = FeatureSpec(fields=[Field("u", side="user"), Field("age", kind="dense", side="user"),
                               Field("i", side="item"), Field("price", kind="dense", side="item"),
                               Field("hour", side="context"),
                               Field("hist", kind="sequence", side="user", table="i", group="h")],
                       sequences=[SequenceGroup("h", max_len=4)])
    vocab = {"u": 5, "i": 9, "hour": 25}
    norm = {"age": {"shift": 30.0, "scale": 10.0, "fill": 30.0, "log1p": False},
            "price": {"shift": 1.0, "scale": 0.5, "fill": 1.0, "log1p": True}}
    schema = Schema(dataset="t", protocol="table", seed=0, spec=spec, vocab=vocab, splits={"train": 1}, dense=norm)
    torch.manual_seed(0)
    model = create_model("dnn", schema, make_config("dnn", {"embed_dim": 4, "mlp": [8]})).eval()
    tables = {t: {"ids": ["<pad/unk>", *(str(10 * k + j) for j in range(1, n))]} for k, (t, n) in
              enumerate(vocab.items(), 1)}
    mapper = RawIdMapper(spec, tables, norm)
    scorer = Scorer(engine="torch", spec=spec, mapper=mapper, info={}, limits=Limits(), model=model)
    user = {"u": 11, "age": 41.5, "hist": [99, 22, 23, 24, 29, 26]}
    cands = [{"i": 21, "price": 3.0}, {"i": 99, "price": None}, {"i": "23", "price": 0}]
    shared, _ = scorer.score({**user, "hour": 31}, cands)
    per_cand, unknown = scorer.score(user, [{**c, "hour": 31} for c in cands])
    np.testing.assert_allclose(shared, per_cand, atol=1e-7)
    assert unknown == {"u": 0, "i": 1, "hour": 0, "hist": 1}  # item 99; history 29 (99 is cut: max_len 4)
    rows = map_rows(RawIdMapper(spec, tables, norm), {
        "u": [11] * 3, "age": [41.5] * 3, "hist": [[99, 22, 23, 24, 29, 26]] * 3, "hour": [31] * 3,
        "i": [21, 99, 23], "price": [3.0, None, 0]})
    with torch.no_grad():
        np.testing.assert_allclose(shared, torch.sigmoid(model(rows).logits).numpy(), atol=1e-6)
    batch = scorer.map_requests([(user | {"hour": 31}, cands)])[0]
    assert batch.user.tolist() == [0, 0, 0] and batch.lengths["h"].tolist() == [4]  # the history once, shared
    assert batch.expanded().lengths["h"].tolist() == [4, 4, 4]


def test_workers_share_the_threads(runs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers N without --threads: each worker process is started with its share of the threads (here 4 // 2),
    not all of them; --threads T gives each worker T."""
    import uvicorn

    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.append((os.environ["OMP_NUM_THREADS"], k["workers"])))
    monkeypatch.setenv("CANCTR_SERVE_CONFIG", "")  # restored after the test
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        assert main(["serve", "--run", str(runs["run"]), "--data", str(runs["data"]), "--workers", "2"]) == 0
        assert main(["serve", "--run", str(runs["run"]), "--data", str(runs["data"]), "--workers", "2",
                     "--threads", "3"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [("2", 2), ("3", 2)]
