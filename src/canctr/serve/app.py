"""`canctr serve`: the HTTP scoring service (FastAPI app factory, request validation, reload).

    POST /v1/score        {"user": {field: id | [ids] | number}, "candidates": [{field: id, ...}, ...]}
                          -> {"scores": [K], "unknown": {field: count}, "model": name}
    POST /v1/score/batch  {"requests": [{"user": ..., "candidates": [...]}, ...]}
                          -> {"results": [{"scores", "unknown"}, ...], "model": name}
    GET  /healthz         -> {"status": "ok", "model", "checkpoint_sha256"}
    GET  /v1/model        -> model name, engine, spec, vocabulary sizes, checkpoint sha256, versions, limits
    POST /v1/reload       -> loads the run again, fully, then swaps it in (one worker; with several, SIGHUP)

The request body is read here (not by FastAPI) so that its size is capped while it streams in (413), bad
UTF-8 and malformed JSON are 400, and the body is validated in one pass by pydantic-core against models
built from the loaded model's feature spec (`RequestModels`: user-side fields in "user", item-side fields
per candidate, context fields in either; strict types) -> 422 with one line per problem. Every answer
that is not 200 is JSON {"detail": "<what is wrong>", "errors": [{"loc", "msg"}, ...]}.

Scoring runs on the event loop (a few ms of CPU: one request at a time per worker, no thread contention);
scale with --workers. The loaded model is one object (`Loaded`: scorer + its request models) held by one
reference: a request takes it once, a reload builds a new one off the loop and replaces the reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import NotRequired, TypedDict

from canctr.serve.scorer import Limits, RequestError, Scorer, ServeConfig

log = logging.getLogger("canctr.serve")
MAX_ERRORS = 20  # errors listed in one answer


class ApiError(Exception):
    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors or []


# -------------------------------------------------------------------------------------- response models


class ScoreResponse(BaseModel):
    scores: list[float]  # click probability per candidate, in request order
    unknown: dict[str, int]  # ids of each sparse field not in the vocabulary (scored as index 0)
    model: str


class BatchResult(BaseModel):
    scores: list[float]
    unknown: dict[str, int]


class BatchResponse(BaseModel):
    results: list[BatchResult]  # one per request, in order
    model: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[dict[str, Any]] = []


# -------------------------------------------------------------------------------------- request models


def _closed(td: type) -> type:
    td.__pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys are errors, not silently dropped
    return td


class RequestModels:
    """pydantic validators of /v1/score and /v1/score/batch bodies, built from a feature spec and limits.

    Types (strict: no coercion): a categorical id is an int64 integer or a string (or null = unknown, index
    0); a sequence is a list of such ids (null = empty) of at most `max_history`; a dense value is a finite
    number (or null = missing, filled as prepare did). Every user-side field is required in "user", every
    item-side field in each candidate; a context field may be in either (then in every candidate)."""

    def __init__(self, spec: Any, limits: Limits) -> None:
        self.spec, self.limits = spec, limits
        id_t = (Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
                | Annotated[str, Strict(), Field(max_length=limits.max_id_chars)] | None)
        seq_t = Annotated[list[id_t], Field(max_length=limits.max_history)] | None
        num_t = Annotated[float, Strict(), Field(allow_inf_nan=False)] | Annotated[int, Strict()] | None
        typ = {"categorical": id_t, "sequence": seq_t, "dense": num_t}
        self.kind = {f.name: f.kind for f in spec.fields}
        self.side = {f.name: f.side for f in spec.fields}

        def fields(side: str) -> dict[str, Any]:
            return {f.name: typ[f.kind] if f.side == side else NotRequired[typ[f.kind]]
                    for f in spec.fields if f.side in (side, "context")}

        self.user_fields = [f.name for f in spec.fields if f.side == "user"]
        self.item_fields = [f.name for f in spec.fields if f.side == "item"]
        self.context_fields = [f.name for f in spec.fields if f.side == "context"]
        User = _closed(TypedDict("User", fields("user")))  # noqa: N806
        Candidate = _closed(TypedDict("Candidate", fields("item")))  # noqa: N806
        One = _closed(TypedDict("ScoreRequest", {  # noqa: N806
            "user": User,
            "candidates": Annotated[list[Candidate], Field(min_length=1, max_length=limits.max_candidates)]}))
        Many = _closed(TypedDict("BatchRequest", {  # noqa: N806
            "requests": Annotated[list[One], Field(min_length=1, max_length=limits.max_batch)]}))
        self.one, self.many = TypeAdapter(One), TypeAdapter(Many)

    def parse(self, body: bytes, batch: bool) -> list[tuple[dict, list[dict]]]:
        """Body -> [(user, candidates)]; raises ApiError 400 (not UTF-8 / not JSON) or 422 (not the schema)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(400, f"the body is not valid UTF-8 (byte {e.start})") from None
        try:
            req = (self.many if batch else self.one).validate_json(text)
        except pydantic.ValidationError as e:
            raise self._error(e.errors(include_url=False)) from None
        reqs = [(r["user"], r["candidates"]) for r in req["requests"]] if batch else [(req["user"], req["candidates"])]
        if self.context_fields:  # a context field not in "user" must be in every candidate
            for i, (user, cands) in enumerate(reqs):
                for name in self.context_fields:
                    if name not in user:
                        miss = next((j for j, c in enumerate(cands) if name not in c), None)
                        if miss is not None:
                            where = f"requests[{i}]." if batch else ""
                            raise ApiError(422, f"{where}candidates[{miss}].{name}: missing (context field "
                                           f"{name!r} goes in \"user\" or in every candidate)")
        return reqs

    def _error(self, errors: list[dict[str, Any]]) -> ApiError:
        if errors and errors[0]["type"] == "json_invalid":
            return ApiError(400, f"malformed JSON: {errors[0]['ctx']['error']}")
        by_path: dict[str, tuple[bool, str]] = {}  # one line per place: a union reports once per member type;
        for e in errors:  # a broken constraint (too long, out of range) says more than a wrong member type
            path, msg = self._describe(e)
            is_type = e["type"].endswith("_type")
            if path not in by_path or (by_path[path][0] and not is_type):
                by_path[path] = (is_type, msg)
        out = [{"loc": path, "msg": msg} for path, (_, msg) in by_path.items()]
        lines = [f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in out]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        return ApiError(422, "; ".join(lines[:3]) + more, out[:MAX_ERRORS])

    def _describe(self, e: dict[str, Any]) -> tuple[str, str]:
        """A pydantic error -> ("candidates[3].item", "what is wrong"), union member tags dropped."""
        loc, parts, obj, field_name, i = list(e["loc"]), [], None, None, 0
        while i < len(loc):
            x = loc[i]
            if field_name is not None:  # past the field: at most one position in a sequence, then tags
                if isinstance(x, int):
                    parts.append(f"[{x}]")
                break
            if isinstance(x, int):
                parts.append(f"[{x}]")
            elif obj is None and x in ("user", "candidates", "requests"):
                parts.append(("." if parts else "") + x)
                if x == "user" or (x == "candidates" and i + 1 < len(loc) and isinstance(loc[i + 1], int)):
                    obj = x
                    if x == "candidates":
                        parts.append(f"[{loc[i + 1]}]")
                        i += 1
            else:
                if obj is None:  # an unexpected top-level key
                    parts.append(("." if parts else "") + str(x))
                    break
                parts.append(f".{x}")
                field_name = str(x)
            i += 1
        path = "".join(parts)
        kind = e["type"]
        if kind == "extra_forbidden":
            if field_name in self.side:
                side = self.side[field_name]
                where = '"user"' if side == "user" else "each candidate"
                article = "an" if side == "item" else "a"
                return path, f"{field_name!r} is {article} {side}-side field: give it in {where}"
            if field_name is None:
                return path, "unknown key; a request is {\"user\": {...}, \"candidates\": [...]}" + \
                    (" inside {\"requests\": [...]}" if "requests" in path else "")
            side = "user" if obj == "user" else "candidate"
            names = self.user_fields if obj == "user" else self.item_fields
            return path, f"unknown field; {side} fields are {names + self.context_fields}"
        if kind == "missing":
            return path, "missing" + (" (send null for an unknown id)" if field_name else "")
        if kind == "string_too_long":
            return path, f"a text id of {len(str(e.get('input')))} characters exceeds the limit of " \
                f"{self.limits.max_id_chars}"
        if kind in ("too_long", "too_short"):
            ctx = e.get("ctx", {})
            what = ("candidates" if path.endswith("candidates") else "requests" if path.endswith("requests")
                    else "ids")
            if kind == "too_short":
                return path, f"empty: at least {ctx.get('min_length')} {what[:-1] if what != 'ids' else 'id'} needed"
            flag = {"candidates": "--max-candidates", "requests": "--max-batch", "ids": "--max-history"}[what]
            return path, f"{ctx.get('actual_length')} {what} exceed the limit of {ctx.get('max_length')} ({flag})"
        if field_name in self.kind:
            got = e.get("input")
            got_s = f"{type(got).__name__} {str(got)[:40]}" if not isinstance(got, (dict, list)) else \
                type(got).__name__
            want = {"categorical": "an integer (int64) or string id, or null",
                    "sequence": "a list of integer or string ids, or null",
                    "dense": "a finite number, or null"}[self.kind[field_name]]
            if self.kind[field_name] == "sequence" and path.endswith("]"):
                want = "an integer (int64) or string id, or null"
            return path, f"expected {want}; got {got_s}"
        return path, e["msg"]


@dataclass(frozen=True)
class Loaded:
    """Everything one request uses, swapped as one reference on reload."""

    scorer: Scorer
    requests: RequestModels

    @classmethod
    def load(cls, config: ServeConfig) -> Loaded:
        scorer = Scorer.load(config)
        return cls(scorer, RequestModels(scorer.spec, config.limits))


# -------------------------------------------------------------------------------------- the app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes (header or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"bad Content-Length {declared[:20]!r}")
        if int(declared) > limit:
            raise ApiError(413, f"the body of {declared} bytes exceeds the limit of {limit} bytes (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body exceeds the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServeConfig, *, loaded: Loaded | None = None,
               loader: Callable[[ServeConfig], Loaded] = Loaded.load) -> FastAPI:
    """The service for `config`; the model is loaded here (before any port is bound) unless given."""
    state = {"current": loaded or loader(config)}
    reload_lock = asyncio.Lock()

    async def do_reload() -> dict[str, Any]:
        if reload_lock.locked():
            raise ApiError(409, "a reload is already running")
        async with reload_lock:
            old: Loaded = state["current"]
            t0 = time.perf_counter()
            try:  # fully loaded off the event loop while the old model keeps serving
                new = await run_in_threadpool(loader, config)
            except Exception as e:  # noqa: BLE001 - a broken checkpoint on disk: keep serving the old one
                log.exception("reload failed")
                raise ApiError(500, f"reload failed, still serving checkpoint "
                               f"{old.scorer.info['checkpoint']['sha256'][:12]}: {type(e).__name__}: "
                               f"{(str(e).splitlines() or [''])[0]}") from None
            state["current"] = new  # the swap: one reference; requests in flight keep the object they took
        return {"model": new.scorer.info["model"], "checkpoint_sha256": new.scorer.info["checkpoint"]["sha256"],
                "previous_checkpoint_sha256": old.scorer.info["checkpoint"]["sha256"],
                "seconds": round(time.perf_counter() - t0, 3)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        loop = asyncio.get_running_loop()
        hup = config.workers == 1 and hasattr(signal, "SIGHUP")
        if hup:
            try:  # SIGHUP reloads like POST /v1/reload (several workers: uvicorn's parent restarts them)
                loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_hup_reload()))
            except (ValueError, RuntimeError):  # not the main thread (an embedded server)
                hup = False
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)

    async def _hup_reload() -> None:
        try:
            result = await do_reload()
            log.info("SIGHUP: reloaded %s", result)
        except ApiError as e:
            log.error("SIGHUP: %s", e.detail)

    app = FastAPI(title="canctr scoring service", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.serve = state
    limits = config.limits

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"detail": e.detail, "errors": e.errors}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = [{"loc": ".".join(map(str, x["loc"])), "msg": x["msg"]} for x in e.errors()][:MAX_ERRORS]
        return JSONResponse({"detail": "; ".join(f"{x['loc']}: {x['msg']}" for x in errs[:3]), "errors": errs},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(e.detail), "errors": []}, status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:  # a server bug: logged, still JSON
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(e).__name__}", "errors": []}, status_code=500)

    def _score(cur: Loaded, body: bytes, batch: bool) -> list[tuple[Any, dict[str, int]]]:
        reqs = cur.requests.parse(body, batch)
        try:
            return cur.scorer.score_many(reqs)
        except RequestError as e:
            raise ApiError(422, str(e)) from None

    errors = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}

    @app.post("/v1/score", response_model=ScoreResponse, responses=errors)
    async def score(request: Request) -> JSONResponse:
        """One user and up to --max-candidates candidates -> one probability per candidate, in order."""
        body = await _read_body(request, limits.max_body_bytes)
        cur: Loaded = state["current"]  # taken once: a reload during this request does not affect it
        (prob, unknown), = _score(cur, body, batch=False)
        return JSONResponse({"scores": prob.tolist(), "unknown": unknown, "model": cur.scorer.info["model"]})

    @app.post("/v1/score/batch", response_model=BatchResponse, responses=errors)
    async def score_batch(request: Request) -> JSONResponse:
        """Up to --max-batch users, each with its candidates, scored in one model call."""
        body = await _read_body(request, limits.max_body_bytes)
        cur: Loaded = state["current"]
        results = _score(cur, body, batch=True)
        return JSONResponse({"results": [{"scores": p.tolist(), "unknown": u} for p, u in results],
                             "model": cur.scorer.info["model"]})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        info = state["current"].scorer.info
        return {"status": "ok", "model": info["model"], "checkpoint_sha256": info["checkpoint"]["sha256"]}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return {**state["current"].scorer.info, "workers": config.workers, "pid": os.getpid()}

    @app.post("/v1/reload")
    async def reload() -> dict[str, Any]:
        """Load the run's checkpoint again (fully), then swap it in; the old model serves until then."""
        if config.workers > 1:
            raise ApiError(409, f"with --workers {config.workers} this reaches one worker only: send SIGHUP to "
                           f"the server's main process (pid {os.getppid()}) to replace every worker")
        return await do_reload()

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for --workers > 1: each worker process builds its app from CANCTR_SERVE_CONFIG."""
    return create_app(ServeConfig.from_json(os.environ["CANCTR_SERVE_CONFIG"]))


__all__ = ["ApiError", "Loaded", "RequestModels", "ScoreResponse", "BatchResponse", "create_app", "app_from_env"]
