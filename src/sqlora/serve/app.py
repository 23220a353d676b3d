"""``sqlora serve``: one model over one or more databases, as an HTTP API (FastAPI) and a web page.

- ``POST /v1/chat/completions``, ``GET /v1/models``: OpenAI-compatible, so any OpenAI client asks.
  The question is the last user message; the database is the request's ``database`` field, else
  the model name's part after ``/`` (``sqlora/<database>``, as ``/v1/models`` lists them), else the
  only database. The answer's content is the SQL.
- ``POST /v1/query`` ``{"database", "question"}``: the SQL (as the model wrote it and, on DuckDB or
  PostgreSQL, as it ran), the columns, the first ``max_rows`` rows, timings, and the sandbox's error.
- ``GET /v1/databases``, and ``GET /``: a page to pick a database, ask, and see the SQL and the table
  (one self-contained HTML file: no CDN, nothing fetched from elsewhere).

Questions that arrive together are generated together: each joins the model's running batch
(:class:`sqlora.infer.assistant.Assistant`); a full waiting line answers 503 with ``Retry-After``, and a
request whose client hangs up leaves the batch at its next step. ``stream: true`` answers as OpenAI's
server-sent events, the SQL as it is written. Each query runs in a worker thread, read-only in the
sandbox, so one slow query holds up no other request's database work. Every error is JSON
``{"error": {"message", "type"}}`` with a 4xx status (503 when busy; 500 only for a bug, never with a
traceback); with a token, every ``/v1`` request needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# At module level, not in create_app: FastAPI resolves the handlers' (string) annotations in these globals.
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from sqlora.data.catalog import read_schema
from sqlora.data.schema import DatabaseSchema
from sqlora.errors import SqloraError
from sqlora.infer.live import Busy, Sampling
from sqlora.infer.sql_text import settled_sql
from sqlora.sql.engines import Database, open_database

PAGE = Path(__file__).with_name("page.html")
log = logging.getLogger("sqlora.serve")


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 64 * 1024  # a question with its JSON wrapping; more is refused (413)
    max_question_chars: int = 4000
    max_rows: int = 200  # rows returned per answer (the sandbox refuses a result of more than 100 000)
    timeout_s: float = 30.0  # the query's time limit in the sandbox
    request_timeout_s: float = 120.0  # a whole request: waiting for the model, generating, running
    max_choices: int = 4  # a chat request's n


@dataclass(frozen=True)
class Served:
    database: Database
    schema: DatabaseSchema


def open_databases(specs: list[str]) -> dict[str, Served]:
    """The databases ``--db`` names, by name, their schemas read once; SqloraError for a bad one or a clash of names."""
    if not specs:
        raise SqloraError("serve needs at least one --db")
    served: dict[str, Served] = {}
    for spec in specs:
        database = open_database(spec)
        if database.name in served:
            raise SqloraError(f"--db {database}: a second database named {database.name!r}; each needs its own name")
        served[database.name] = Served(database, read_schema(database))
    return served


class QueryBody(BaseModel):
    """``POST /v1/query``."""

    model_config = ConfigDict(extra="forbid")
    question: str
    database: str | None = None


class TextPart(BaseModel):
    """A chat message's content part; only text parts carry the question."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id...: nothing the answer depends on
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if not isinstance(self.content, list):
            return self.content or ""
        for part in self.content:
            if part.type == "text" and part.text is None:
                raise RequestError(400, "messages: a text content part needs a string 'text'")
        return " ".join(part.text for part in self.content if part.type == "text")


class ChatBody(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's request, each parameter honoured or refused by name."""

    model_config = ConfigDict(extra="allow")  # what OpenAI clients add (user, metadata...) changes nothing
    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    database: str | None = None  # sqlora's: the database asked about (else the model id's part after "/")
    stream: bool = False
    n: int = Field(default=1, ge=1)
    # Greedy (the best single answer) unless a temperature above 0 asks for sampling.
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)  # capped by the server's --max-new-tokens
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None  # sampling's random stream; greedy answers do not depend on it

    def refused(self, max_choices: int) -> str | None:
        """The first parameter the server cannot honour, and why; None when it honours them all."""
        if isinstance(self.stop, list) and len(self.stop) > 4:
            return "stop: at most 4 sequences"
        if self.n > max_choices:
            return f"n: at most {max_choices} choices per request"
        if self.n > 1 and not self.temperature:
            return "n: several choices are drawn by sampling; send a temperature above 0 with n above 1"
        if self.top_p not in (None, 1) and not self.temperature:
            return "top_p: applies to sampling; send a temperature above 0 with it (the default, 0, is greedy)"
        return None

    def sampling(self, max_new_tokens: int) -> Sampling:
        return Sampling(
            max_new_tokens=min(self.max_completion_tokens or self.max_tokens or max_new_tokens, max_new_tokens),
            n=self.n,
            temperature=self.temperature or 0.0,
            top_p=self.top_p or 1.0,
            seed=self.seed,
        )

    def stops(self) -> list[str]:
        return [s for s in ([self.stop] if isinstance(self.stop, str) else list(self.stop or [])) if s]

    def content(self, sql: str) -> tuple[str, bool]:
        """The answer's text: ``sql`` up to its first stop sequence, as OpenAI cuts; and whether one cut it."""
        cut = min((sql.index(stop) for stop in self.stops() if stop in sql), default=None)
        return (sql, False) if cut is None else (sql[:cut], True)

    def streamable(self, text: str) -> str:
        """What a stream may send of a choice's ``text`` so far: :func:`settled_sql`, cut at a stop sequence,
        less the characters a stop sequence could still begin in."""
        content, stopped = self.content(settled_sql(text))
        hold = 0 if stopped else max((len(s) - 1 for s in self.stops()), default=0)
        return content[: len(content) - hold]


def parse_body(model: type[BaseModel], body: dict):
    """``body`` as ``model``, or a 400 naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise RequestError(400, f"{where}: {error['msg']}") from None


class RequestError(Exception):
    """A bad request: its status and one-line message go back as JSON."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def json_value(value):
    """A database value as JSON can hold it: Decimal and dates as text, bytes as their size."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value if not (isinstance(value, float) and value != value) else None  # NaN is not JSON
    if isinstance(value, decimal.Decimal):
        return float(value) if value == value.to_integral_value() or abs(value) < 1e15 else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, (datetime.date, datetime.time, datetime.datetime, datetime.timedelta)):
        return str(value)
    return str(value)


def error_response(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


POLL_S = 0.1  # how often a waiting request checks that its client is still there


def _install_guards(app: FastAPI, token: str | None, limits: ServeLimits) -> None:
    """Every error as JSON (never a traceback), and before any /v1 handler: the bearer token, the body's size."""

    @app.exception_handler(RequestError)
    async def on_request_error(_request, exc: RequestError):
        return error_response(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(HTTPException)
    async def on_http_error(_request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request, exc: RequestValidationError):
        return error_response(400, "bad request: " + "; ".join(str(e.get("msg")) for e in exc.errors())[:300])

    @app.exception_handler(Exception)
    async def on_bug(_request, exc: Exception):  # never a traceback to the client; it goes to the log
        log.exception("internal error")
        return error_response(500, f"internal error ({type(exc).__name__})", "server_error")

    app.add_middleware(_Guard, token=token, max_body_bytes=limits.max_body_bytes)


class _Guard:
    """Before any /v1 handler: the bearer token, the body's declared size. A plain ASGI middleware, not
    Starlette's BaseHTTPMiddleware, which would hide a client's disconnect from the handlers."""

    def __init__(self, app, token: str | None, max_body_bytes: int):
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = Headers(scope=scope)
            refusal = None
            if self.token is not None:
                given = headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                    refusal = error_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)", "authentication_error")
            length = headers.get("content-length")
            if refusal is None and length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                refusal = error_response(413, f"request body larger than {self.max_body_bytes} bytes")
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, max_bytes: int) -> dict:
    """The request's JSON object, read up to ``max_bytes`` (a chunked body too); RequestError otherwise."""
    raw = b""
    try:
        async for chunk in request.stream():  # a chunked body has no Content-Length: count as it comes
            raw += chunk
            if len(raw) > max_bytes:
                raise RequestError(413, f"request body larger than {max_bytes} bytes")
    except ClientDisconnect:  # the client hung up mid-body: nobody to answer, nothing went wrong here
        log.info("client disconnected before sending its whole request")
        raise RequestError(400, "the client disconnected before sending its whole request") from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deep") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    return body


def create_app(
    assistant, databases: dict[str, Served], *, model_name: str = "sqlora", token: str | None = None, limits: ServeLimits = ServeLimits()
):
    """The FastAPI application; ``assistant``: a :class:`sqlora.infer.assistant.Assistant` (anything with its ``answer``)."""
    app = FastAPI(title="sqlora", docs_url=None, redoc_url=None, openapi_url=None)

    _install_guards(app, token, limits)

    async def body_of(request: Request) -> dict:
        return await read_body(request, limits.max_body_bytes)

    def pick_database(name) -> Served:
        if name is None:
            if len(databases) == 1:
                return next(iter(databases.values()))
            raise RequestError(400, f"say which database: one of {', '.join(databases)}")
        if not isinstance(name, str) or name not in databases:
            raise RequestError(404, f"unknown database {name!r}: one of {', '.join(databases)}", "not_found_error")
        return databases[name]

    def question_of(value: str) -> str:
        if not value.strip():
            raise RequestError(400, "the question is empty")
        if len(value) > limits.max_question_chars:
            raise RequestError(413, f"the question is longer than {limits.max_question_chars} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): not text a tokenizer can read
            raise RequestError(400, "the question is not valid Unicode text") from None
        return value.strip()

    def submit(served: Served, question: str, sampling: Sampling | None = None, on_text=None):
        """The question queued for the model: its Pending; 503 when the waiting line is full."""
        try:
            return assistant.submit(served.database, served.schema, question, sampling, on_text)
        except Busy as exc:
            raise RequestError(
                503, f"busy: {exc}; retry after {exc.retry_after} s", "server_busy", {"Retry-After": str(exc.retry_after)}
            ) from None
        except SqloraError as exc:  # a prompt the model cannot hold, an empty question
            raise RequestError(400, str(exc)) from None

    async def generated(request: Request, pending, deadline: float) -> list:
        """The pending question's Generations, awaited while its client is there and time is left; else its
        generation is cancelled (it leaves the batch at the next step)."""
        loop = asyncio.get_running_loop()
        future = asyncio.wrap_future(pending.ticket.future)
        try:
            while not future.done():
                left = deadline - loop.time()
                if left <= 0:
                    raise RequestError(504, f"no answer within {limits.request_timeout_s:g} s", "timeout_error")
                await asyncio.wait({future}, timeout=min(POLL_S, left))
                if not future.done() and await request.is_disconnected():
                    log.info("client disconnected: its generation is cancelled")
                    raise RequestError(499, "the client disconnected", "client_closed")
            return future.result()
        except SqloraError as exc:
            raise RequestError(400, str(exc)) from None
        finally:
            if not future.done() or future.cancelled():
                pending.ticket.cancel()

    def deadline() -> float:
        return asyncio.get_running_loop().time() + limits.request_timeout_s

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(
            PAGE.read_text(encoding="utf-8"),
            headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
            },
        )

    @app.get("/v1/models")
    async def models():
        ids = [model_name] + [f"{model_name}/{name}" for name in databases]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "sqlora"} for i in ids]}

    @app.get("/v1/databases")
    async def list_databases():
        return {
            "databases": [{"name": name, "engine": s.database.engine, "tables": list(s.schema.tables)} for name, s in databases.items()]
        }

    @app.post("/v1/query")
    async def query(request: Request):
        body = parse_body(QueryBody, await body_of(request))
        served = pick_database(body.database)
        question = question_of(body.question)
        until = deadline()
        pending = submit(served, question)
        [result] = await asyncio.to_thread(assistant.execute, pending, (await generated(request, pending, until))[:1], limits.timeout_s)
        rows = result.rows or []
        return {
            "database": served.database.name,
            "engine": served.database.engine,
            "question": question,
            "sql": result.sql,
            "sql_run": result.native_sql or result.sql,
            "columns": result.columns,
            "rows": [[json_value(v) for v in row] for row in rows[: limits.max_rows]] if result.rows is not None else None,
            "row_count": len(rows) if result.rows is not None else None,
            "truncated": len(rows) > limits.max_rows,
            "seconds": {
                "total": round(result.seconds, 4),
                "generate": round(result.generate_seconds, 4),
                "execute": round(result.seconds - result.generate_seconds, 4),
            },
            "error": result.error,
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse_body(ChatBody, await body_of(request))
        refused = body.refused(limits.max_choices)
        if refused:
            raise RequestError(400, refused)
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise RequestError(400, "no user message: the question is the last message with role user")
        model = body.model or model_name
        name = body.database
        if name is None and "/" in model:
            name = model.split("/", 1)[1]
        served = pick_database(name)
        question = question_of(users[-1].text())
        sampling = body.sampling(assistant.max_new_tokens)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        if body.stream:
            return await stream_chat(request, served, question, body, sampling, head)
        until = deadline()
        pending = submit(served, question, sampling)
        generations = await generated(request, pending, until)
        [first] = await asyncio.to_thread(assistant.execute, pending, generations[:1], limits.timeout_s)
        choices = []
        for k, generation in enumerate(generations):
            content, stopped = body.content(generation.sql)
            finish = "length" if generation.hit_max_new_tokens and not stopped else "stop"
            choices.append({"index": k, "message": {"role": "assistant", "content": content}, "finish_reason": finish})
        completion = sum(g.new_tokens for g in generations)
        return {
            **head,
            "object": "chat.completion",
            "choices": choices,
            "usage": {
                "prompt_tokens": first.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": first.prompt_tokens + completion,
            },
            # Not OpenAI's, ignored by its clients: where the first choice ran and what the database said.
            "sqlora": sqlora_part(served, first),
        }

    def sqlora_part(served: Served, answer) -> dict:
        return {"database": served.database.name, "sql_run": answer.native_sql or answer.sql, "error": answer.error}

    async def stream_chat(request: Request, served: Served, question: str, body: ChatBody, sampling: Sampling, head: dict):
        """OpenAI's server-sent events: each choice's SQL as it is written (what no later token can change),
        then its last piece with the finish reason, then ``[DONE]``. Errors before the first event are JSON."""
        loop = asyncio.get_running_loop()
        texts: asyncio.Queue = asyncio.Queue()
        until = deadline()
        pending = submit(served, question, sampling, lambda k, text: loop.call_soon_threadsafe(texts.put_nowait, (k, text)))
        sent = [""] * sampling.n

        def event(choices: list[dict], **extra) -> str:
            return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": choices, **extra}) + "\n\n"

        def deltas() -> list[dict]:
            latest: dict[int, str] = {}
            while not texts.empty():
                k, text = texts.get_nowait()
                latest[k] = text
            out = []
            for k, text in sorted(latest.items()):
                now = body.streamable(text)
                if now.startswith(sent[k]) and len(now) > len(sent[k]):
                    out.append({"index": k, "delta": {"content": now[len(sent[k]) :]}, "finish_reason": None})
                    sent[k] = now
            return out

        async def events():
            finished, waiting = False, None
            try:
                yield event([{"index": k, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for k in range(sampling.n)])
                waiting = asyncio.ensure_future(generated(request, pending, until))
                while not waiting.done():
                    await asyncio.wait({waiting}, timeout=POLL_S)
                    pieces = deltas()
                    if pieces:
                        yield event(pieces)
                try:
                    generations = waiting.result()
                except RequestError as exc:  # too late for a status: the error is the stream's last event
                    yield "data: " + json.dumps({"error": {"message": exc.message, "type": exc.kind}}) + "\n\n"
                    return
                deltas()
                [first] = await asyncio.to_thread(assistant.execute, pending, generations[:1], limits.timeout_s)
                last = []
                for k, generation in enumerate(generations):
                    content, stopped = body.content(generation.sql)
                    if not content.startswith(sent[k]):  # cannot happen by settled_sql's rule; said, not hidden
                        log.warning("streamed text %r is not the start of the answer %r", sent[k], content)
                    rest = content[len(sent[k]) :] if content.startswith(sent[k]) else ""
                    finish = "length" if generation.hit_max_new_tokens and not stopped else "stop"
                    last.append({"index": k, "delta": {"content": rest} if rest else {}, "finish_reason": finish})
                yield event(last, sqlora=sqlora_part(served, first))
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                if not finished:
                    pending.ticket.cancel()
                    if waiting is not None:
                        waiting.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
