"""The HTTP side of the server: routes, the API key, errors in OpenAI's shape, Prometheus metrics.

Request bodies are read and checked here (not by FastAPI's body parsing) so every problem is
answered the way OpenAI answers it: a 400 naming the parameter, never FastAPI's 422. Any other
failure is logged here and answered with a 500 in the same shape, without a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.serve.engine import Event, Job, Sampling
from tunesmith.serve.models import Served
from tunesmith.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ServeError,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    error_body,
    model_card,
    new_id,
    now,
    usage,
)
from tunesmith.serve.tools import CallStream, Offer, answer, offer, split_answer
from tunesmith.serve.traffic_log import Trace, TrafficLog

log = logging.getLogger("tunesmith.serve")

MAX_BODY_BYTES = 4 * 1024 * 1024
OPEN_PATHS = frozenset({"/health"})
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps in one process stay apart)."""

    def __init__(self, engines: list[Any], traffic: TrafficLog | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunesmith_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "prompt tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("tunesmith_generation_tokens", "tokens generated", ["model"], registry=r)
        self.latency = Histogram("tunesmith_request_latency_seconds", "time from request to its last token", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunesmith_time_to_first_token_seconds", "time from request to its first generated token", buckets=LATENCY_BUCKETS, registry=r)
        queue = Gauge("tunesmith_queue_depth", "requests (choices) waiting for a batch", registry=r)
        queue.set_function(lambda: sum(e.waiting() for e in engines))
        running = Gauge("tunesmith_running_rows", "rows being decoded now", registry=r)
        running.set_function(lambda: sum(e.running_rows for e in engines))
        self.batch_size = Histogram("tunesmith_batch_size", "rows decoded together", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        for engine in engines:
            engine.on_batch = self.batch_size.observe
        if traffic is not None:
            r.register(_TrafficCounts(traffic))


class _TrafficCounts:
    """The traffic log's counts, read when scraped (one log may serve several apps, each with its own registry)."""

    def __init__(self, traffic: TrafficLog):
        self.traffic = traffic

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        t = self.traffic
        yield CounterMetricFamily("tunesmith_traffic_logged", "served requests written to the traffic log", value=t.written)
        yield CounterMetricFamily("tunesmith_traffic_dropped", "served requests not logged: the log's queue was full", value=t.dropped)
        yield CounterMetricFamily("tunesmith_traffic_failed", "served requests not logged: the scrub or the write failed", value=t.failed)
        yield CounterMetricFamily("tunesmith_traffic_log_cpu_seconds", "CPU time spent scrubbing and writing the traffic log", value=t.cpu_s)


def _route_label(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"} else "other"


class KeyCheck(Protocol):
    """What the gate asks of a set of keys (tunesmith.api.keys.KeyStore is one): whether any key is in
    force (none: the routes are open), and whether a presented secret is one of them."""

    def any_active(self) -> bool: ...

    def verify(self, secret: str) -> bool: ...


class OneKey:
    """`tunesmith serve --api-key KEY`: one key, always in force."""

    def __init__(self, key: str):
        self.key = key.encode()

    def any_active(self) -> bool:
        return True

    def verify(self, secret: str) -> bool:
        # compare_digest: how long the comparison takes says nothing about how much of the key was right
        return hmac.compare_digest(secret.encode("latin-1"), self.key)


class CheckedBy:
    """Keys checked by a function (secret -> bool), always in force."""

    def __init__(self, check: Callable[[str], bool]):
        self.verify = check

    def any_active(self) -> bool:
        return True


def key_check(api_key: str | None = None, keys: KeyCheck | Callable[[str], bool] | None = None) -> KeyCheck | None:
    if api_key is not None and keys is not None:
        raise ValueError("give the gate either api_key or keys, not both")
    if api_key:
        return OneKey(api_key)
    if keys is None or hasattr(keys, "any_active"):
        return keys  # type: ignore[return-value]
    return CheckedBy(keys)


class Gate:
    """Pure ASGI middleware (streaming responses pass through untouched): the API key, the body
    size limits, and the request counter. `keys` (a KeyCheck, or a function secret -> bool) or one
    `api_key`; with neither, or while a KeyCheck has no active key, every route is open.
    `max_body` (None: no limit here, the app sets its own) holds for every path but those in
    `path_limits` (the jobs API's uploads are larger than its JSON bodies). A body is counted as it
    arrives, so one sent without Content-Length is cut off at its limit too. `metrics` may be None.
    `open_prefixes`: paths starting with one of these need no key (the dashboard's static shell, which
    holds no data: its data routes stay gated)."""

    def __init__(
        self,
        app: Any,
        api_key: str | None = None,
        metrics: Metrics | None = None,
        max_body: int | None = None,
        keys: KeyCheck | Callable[[str], bool] | None = None,
        path_limits: Mapping[str, int] | None = None,
        open_paths: frozenset[str] = frozenset(),
        open_prefixes: tuple[str, ...] = (),
    ):
        self.app, self.keys, self.metrics = app, key_check(api_key, keys), metrics
        self.max_body, self.path_limits = max_body, dict(path_limits or {})
        self.open_paths, self.open_prefixes = OPEN_PATHS | open_paths, open_prefixes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        limit = self.path_limits.get(scope["path"], self.max_body)
        try:
            refusal = self._refusal(scope, limit)
            if refusal is not None:
                await refusal(scope, receive, counted_send)
            else:
                await self.app(scope, _counted(receive, limit), counted_send)
        except ServeError as exc:  # the body ran past its limit while a route read it, before any answer began
            await JSONResponse(exc.body(), status_code=exc.status)(scope, receive, counted_send)
        finally:
            if self.metrics is not None:
                self.metrics.requests.labels(_route_label(scope["path"]), str(status["code"])).inc()

    def _refusal(self, scope: dict, limit: int | None) -> Response | None:
        headers = dict(scope.get("headers") or [])
        path = scope["path"]
        open_path = path in self.open_paths or (scope["method"] == "GET" and path.startswith(self.open_prefixes))
        if self.keys is not None and not open_path and self.keys.any_active():
            given = headers.get(b"authorization", b"")
            if not given:
                return _error(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.", code="invalid_api_key")
            scheme, _, token = given.partition(b" ")
            # latin-1 maps every byte to one character: the checker sees exactly the bytes that were sent
            if scheme.lower() != b"bearer" or not self.keys.verify(token.strip().decode("latin-1")):
                return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        length = headers.get(b"content-length")
        if limit is not None and length is not None and (not length.isdigit() or int(length) > limit):
            return _too_large(limit)
        return None


def _too_large(limit: int) -> JSONResponse:
    exc = _too_large_error(limit)
    return JSONResponse(exc.body(), status_code=exc.status)


def _too_large_error(limit: int) -> ServeError:
    return ServeError(413, f"The request body is larger than this server accepts ({limit} bytes).", code="request_too_large")


def _counted(receive: Any, limit: int | None) -> Any:
    """`receive`, raising a 413 once the body read so far passes `limit`."""
    if limit is None:
        return receive
    seen = 0

    async def counted() -> dict:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _too_large_error(limit)
        return message

    return counted


def _error(status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status)


_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none|.*[\[\]-].*)$")  # pydantic names the union member it tried: not a parameter


def _param_of(location: tuple) -> str:
    parts = [str(p) for p in location if p != "body" and (isinstance(p, int) or not _UNION_BRANCH.match(str(p)))]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text


def _parse(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise ServeError(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param_of(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            raise ServeError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unrecognized_argument") from None
        if first["type"] == "missing":
            raise ServeError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter") from None
        given = first.get("input")
        shown = json.dumps(given)[:80] if not isinstance(given, dict) else "an object"
        raise ServeError(400, f"Invalid value for '{param}': {first['msg']} (got {shown}).", param=param, code="invalid_value") from None


async def _read_json(request: Request, limit: int) -> Any:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a body sent without Content-Length is bounded too
            raise ServeError(413, f"The request body is larger than this server accepts ({limit} bytes).", code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError:
        raise ServeError(400, "The request body is not valid JSON.", code="invalid_json") from None


def create_app(
    served: list[Served], *, api_key: str | None = None, max_body: int = MAX_BODY_BYTES, engine_name: str = "transformers", traffic: TrafficLog | None = None
) -> FastAPI:
    """The ASGI app over models already loaded (`serve.launch.open_models`). `traffic`: where every
    answered request is logged (serve/traffic_log.py); None logs nothing."""
    by_name: dict[str, Served] = {name: s for s in served for name in s.names}
    engines = list({id(s.engine): s.engine for s in served}.values())
    metrics = Metrics(engines, traffic)
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engines = engines

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _param_of(tuple(first["loc"]))
        return _error(400, f"Invalid value for '{param}': {first['msg']}", param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"Unknown request URL: {request.method} {request.url.path}." if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message, code="unknown_url" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return _error(500, "The server had an error while processing your request.", type="server_error")

    def lookup(name: str) -> Served:
        if name not in by_name:
            raise ServeError(
                404, f"The model '{name}' does not exist. This server serves: {', '.join(sorted(by_name))}.", param="model", code="model_not_found"
            )
        return by_name[name]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "engine": engine_name, "models": sorted(by_name)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name, s.owned_by, s.created) for name, s in by_name.items()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        found = lookup(model)
        return model_card(model, found.owned_by, found.created)

    def logged_failure(trace: Trace | None, exc: Exception) -> None:
        """A request answered with an error is logged too, with the status the client got."""
        if traffic is None or trace is None:
            return
        status, message = (exc.status, exc.message) if isinstance(exc, ServeError) else (500, f"{type(exc).__name__}")
        traffic.submit(trace.record(new_id("chatcmpl" if trace.endpoint == "chat.completions" else "cmpl"), status=status, error=message))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        started = time.perf_counter()
        trace = Trace("chat.completions") if traffic is not None else None
        try:
            body = await _read_json(request, max_body)
            if trace is not None:
                trace.read(body)
            req: ChatCompletionRequest = _parse(ChatCompletionRequest, body)
            served = lookup(req.model)
            _refuse_unsupported(req)
            messages = [m.for_template() for m in req.messages]
            if served.system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": served.system})  # the run was trained with it (docs/serve.md)
            offered = offer(req)
            prompt_ids = served.encode(served.render(messages, tools=offered.tools) + offered.prefix)
            sampling = _sampling(req, req.token_limit(), len(prompt_ids), served.context_length, "messages")
            prompts = [prompt_ids]
            return await _answer(served, req, prompts, sampling, started, chat=True, offered=offered, trace=trace)
        except Exception as exc:
            logged_failure(trace, exc)
            raise

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        started = time.perf_counter()
        trace = Trace("completions") if traffic is not None else None
        try:
            body = await _read_json(request, max_body)
            if trace is not None:
                trace.read(body)
            req: CompletionRequest = _parse(CompletionRequest, body)
            served = lookup(req.model)
            _refuse_unsupported(req)
            prompts = [served.encode(text) for text in req.prompts()]
            longest = max(len(p) for p in prompts)
            if min(len(p) for p in prompts) == 0:
                raise ServeError(400, "The prompt is empty.", param="prompt", code="invalid_value")
            sampling = _sampling(req, req.token_limit(), longest, served.context_length, "prompt")
            return await _answer(served, req, prompts, sampling, started, chat=False, trace=trace)
        except Exception as exc:
            logged_failure(trace, exc)
            raise

    def logged(
        trace: Trace | None, rid: str, text: str, reason: str | None, prompt_tokens: int, generated: int, confidence: float | None, offered: Offer | None
    ) -> None:
        """The first choice of an answered request, to the log."""
        if traffic is None or trace is None:
            return
        content, calls = split_answer(text, offered) if offered is not None and offered.tools is not None else (text, [])
        traffic.submit(
            trace.record(
                rid,
                answer=content,
                tool_calls=calls or None,
                prompt_tokens=prompt_tokens,
                completion_tokens=generated,
                finish_reason="tool_calls" if calls and reason == "stop" else reason,
                confidence=confidence,
            )
        )

    async def _answer(
        served: Served,
        req: Any,
        prompts: list[list[int]],
        sampling: Sampling,
        started: float,
        chat: bool,
        offered: Offer | None = None,
        trace: Trace | None = None,
    ) -> Any:
        route = "/v1/chat/completions" if chat else "/v1/completions"
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        counter = metrics.generated_tokens.labels(served.names[0])

        def emit(index: int, ev: Event) -> None:  # in the engine's thread
            if ev.kind == "delta":
                counter.inc()  # every token decoded, also for a client that has gone away
            try:
                loop.call_soon_threadsafe(events.put_nowait, (index, ev))
            except RuntimeError:  # the server is shutting down and its loop is closed: nobody is listening
                pass

        if trace is not None:
            trace.serving(served, sampling.max_tokens)
        n = req.n or 1
        jobs = []
        for p, prompt in enumerate(prompts):
            for j in range(n):
                index = p * n + j
                # Choice i of a seeded request draws from seed + i: the choices differ, and each is reproducible.
                seed = None if req.seed is None else req.seed + index
                row = Sampling(sampling.max_tokens, sampling.temperature, sampling.top_p, seed, sampling.stops)
                jobs.append(Job(served.route, prompt, row, emit=partial(emit, index)))
        prompt_tokens = sum(len(p) for p in prompts)
        metrics.prompt_tokens.labels(served.names[0]).inc(prompt_tokens)
        for job in jobs:
            served.engine.submit(job)
        rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
        first_token = {"seen": False}

        def note(ev: Event) -> None:
            if ev.kind == "delta" and not first_token["seen"]:
                first_token["seen"] = True
                metrics.ttft.observe(time.perf_counter() - started)

        def cancel_all() -> None:
            for job in jobs:
                job.cancelled = True  # the engine drops the row at its next step

        if not req.stream:
            texts, reasons, generated = [""] * len(jobs), [""] * len(jobs), 0
            confidence: float | None = None
            try:
                pending = len(jobs)
                while pending:
                    index, ev = await events.get()
                    note(ev)
                    if ev.kind == "delta":
                        texts[index] += ev.text
                    elif ev.kind == "done":
                        reasons[index], pending, generated = ev.finish_reason or "stop", pending - 1, generated + ev.tokens
                        confidence = ev.confidence if index == 0 else confidence
                    else:
                        raise ServeError(500, "The server had an error while processing your request.", type="server_error")
            finally:
                cancel_all()
            metrics.latency.labels(route).observe(time.perf_counter() - started)
            logged(trace, rid, texts[0], reasons[0], prompt_tokens, generated, confidence, offered)
            if chat:
                choices = [answer(text, reason, offered or Offer()) for text, reason in zip(texts, reasons, strict=True)]
                return chat_completion(rid, req.model, choices, prompt_tokens, generated)
            return completion(rid, req.model, list(zip(texts, reasons, strict=True)), prompt_tokens, generated)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def sse(data: dict[str, Any]) -> str:
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        # With tools offered, each choice's text goes through a CallStream: calls leave as delta.tool_calls.
        calls = [CallStream(offered) for _ in jobs] if chat and offered is not None and offered.tools is not None else None

        async def stream() -> AsyncIterator[str]:
            generated = 0
            first_text, first_reason, confidence, failed = "", None, None, None
            try:
                if chat:
                    for index in range(len(jobs)):
                        yield sse(chat_chunk(rid, req.model, created, index, {"role": "assistant", "content": ""}, None))
                pending = len(jobs)
                while pending:
                    index, ev = await events.get()
                    note(ev)
                    if ev.kind == "delta" and ev.text:
                        if index == 0:
                            first_text += ev.text
                        if calls is not None:
                            for delta in calls[index].push(ev.text):
                                yield sse(chat_chunk(rid, req.model, created, index, delta, None))
                        else:
                            yield sse(
                                chat_chunk(rid, req.model, created, index, {"content": ev.text}, None)
                                if chat
                                else completion_chunk(rid, req.model, created, index, ev.text, None)
                            )
                    elif ev.kind == "done":
                        pending, generated = pending - 1, generated + ev.tokens
                        reason = ev.finish_reason
                        if index == 0:
                            first_reason, confidence = ev.finish_reason or "stop", ev.confidence
                        if calls is not None:
                            last, reason = calls[index].finish(ev.finish_reason or "stop")
                            for delta in last:
                                yield sse(chat_chunk(rid, req.model, created, index, delta, None))
                        yield sse(
                            chat_chunk(rid, req.model, created, index, {}, reason) if chat else completion_chunk(rid, req.model, created, index, "", reason)
                        )
                    elif ev.kind == "error":
                        failed = ev.text or "generation failed"
                        yield sse(error_body("The server had an error while processing your request.", "server_error"))
                        return
                if include_usage:
                    tail = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created, "model": req.model}
                    yield sse({**tail, "choices": [], "usage": usage(prompt_tokens, generated)})
                yield "data: [DONE]\n\n"
            finally:
                # Also reached when the client goes away mid-stream (the task is cancelled): its rows leave the batch.
                cancel_all()
                metrics.latency.labels(route).observe(time.perf_counter() - started)
                if failed is not None and traffic is not None and trace is not None:
                    traffic.submit(trace.record(rid, status=500, error=failed, prompt_tokens=prompt_tokens, completion_tokens=generated))
                elif first_reason is None and traffic is not None and trace is not None:  # the client left before the answer ended
                    traffic.submit(
                        trace.record(rid, answer=first_text, prompt_tokens=prompt_tokens, completion_tokens=generated, status=499, error="client disconnected")
                    )
                else:
                    logged(trace, rid, first_text, first_reason, prompt_tokens, generated, confidence, offered)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.add_middleware(Gate, api_key=api_key, metrics=metrics, max_body=max_body)
    return app


def _refuse_unsupported(req: Any) -> None:
    field = req.unsupported()
    if field is not None:
        raise ServeError(400, f"'{field}' is not supported by this server; leave it unset.", param=field, code="unsupported_parameter")


def _sampling(req: Any, limit: int | None, prompt_tokens: int, context: int, prompt_param: str) -> Sampling:
    """The row settings, or a 400 when the prompt (with the tokens asked for) does not fit the context."""
    if prompt_tokens >= context:
        raise ServeError(
            400,
            f"This model's maximum context length is {context} tokens, but the {prompt_param} has {prompt_tokens} tokens. Shorten the {prompt_param}.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    room = context - prompt_tokens
    if limit is not None and limit > room:
        param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) is not None else "max_tokens"
        raise ServeError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested {prompt_tokens + limit} tokens "
            f"({prompt_tokens} in the {prompt_param}, {limit} in the completion). Reduce the {prompt_param} or {param}.",
            param=param,
            code="context_length_exceeded",
        )
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    return Sampling(max_tokens=limit if limit is not None else room, temperature=temperature, top_p=top_p, seed=req.seed, stops=req.stops())
