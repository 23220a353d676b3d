"""``sqlora serve``: one model over one or more databases, as an HTTP API (FastAPI) and a web page.

- ``POST /v1/chat/completions``, ``GET /v1/models``: OpenAI-compatible, so any OpenAI client asks.
  The question is the last user message; the database is the request's ``database`` field, else
  the model name's part after ``/`` (``sqlora/<database>``, as ``/v1/models`` lists them), else the
  only database. The answer's content is the SQL.
- ``POST /v1/query`` ``{"database", "question"}``: the SQL (as the model wrote it and, on DuckDB or
  PostgreSQL, as it ran), the columns, the first ``max_rows`` rows, timings, and the sandbox's error.
- ``GET /v1/databases``, and ``GET /``: a page to pick a database, ask, and see the SQL and the table
  (one self-contained HTML file: no CDN, nothing fetched from elsewhere).

Generations take turns on the one model; each query runs in a worker thread, read-only in the
sandbox, so one slow query holds up no other request's database work. Every error is JSON
``{"error": {"message", "type"}}`` with a 4xx status (5xx only for a bug, never with a traceback);
with a token, every ``/v1`` request needs ``Authorization: Bearer <token>``.
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
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from sqlora.data.catalog import read_schema
from sqlora.data.schema import DatabaseSchema
from sqlora.errors import SqloraError
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
    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None  # accepted: greedy decoding gives the same answer whatever the seed

    def refused(self) -> str | None:
        """The first parameter the server cannot honour, and why; None when it honours them all."""
        if self.stream:
            return "stream: streamed answers are not supported; send stream false"
        if self.n not in (None, 1):
            return "n: one choice per request (greedy decoding); send n 1 or leave it out"
        if self.temperature not in (None, 0):
            return "temperature: the server decodes greedily; send 0 or leave it out"
        if self.top_p not in (None, 1):
            return "top_p: the server decodes greedily; send 1 or leave it out"
        return None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


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


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _install_guards(app: FastAPI, token: str | None, limits: ServeLimits) -> None:
    """Every error as JSON (never a traceback), and before any /v1 handler: the bearer token, the body's size."""

    @app.exception_handler(RequestError)
    async def on_request_error(_request, exc: RequestError):
        return error_response(exc.status, exc.message, exc.kind)

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

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if token is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    return error_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)", "authentication_error")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
                return error_response(413, f"request body larger than {limits.max_body_bytes} bytes")
        return await call_next(request)


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

    async def answer(served: Served, question: str, max_new_tokens: int | None = None):
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(assistant.answer, served.database, served.schema, question, limits.timeout_s, max_new_tokens),
                timeout=limits.request_timeout_s,
            )
        except SqloraError as exc:  # a prompt the model cannot hold, an empty question
            raise RequestError(400, str(exc)) from None
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within {limits.request_timeout_s:g} s", "timeout_error") from None

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
        result = await answer(served, question)
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
        refused = body.refused()
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
        result = await answer(served, question_of(users[-1].text()), body.max_completion_tokens or body.max_tokens)
        content, stopped = result.sql, False
        for stop in body.stops():  # honoured as OpenAI does: the text up to the first stop sequence
            if stop and stop in content:
                content, stopped = content[: content.index(stop)], True
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if result.hit_max_new_tokens and not stopped else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.new_tokens,
                "total_tokens": result.prompt_tokens + result.new_tokens,
            },
            # Not OpenAI's, ignored by its clients: where it ran and what the database said.
            "sqlora": {"database": served.database.name, "sql_run": result.native_sql or result.sql, "error": result.error},
        }

    return app
