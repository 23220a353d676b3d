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
from starlette.exceptions import HTTPException

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


def create_app(
    assistant, databases: dict[str, Served], *, model_name: str = "sqlora", token: str | None = None, limits: ServeLimits = ServeLimits()
):
    """The FastAPI application; ``assistant``: a :class:`sqlora.infer.assistant.Assistant` (anything with its ``answer``)."""
    app = FastAPI(title="sqlora", docs_url=None, redoc_url=None, openapi_url=None)

    def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

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

    async def body_of(request: Request) -> dict:
        raw = b""
        async for chunk in request.stream():  # a chunked body has no Content-Length: count as it comes
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                raise RequestError(413, f"request body larger than {limits.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"malformed JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    def pick_database(name) -> Served:
        if name is None:
            if len(databases) == 1:
                return next(iter(databases.values()))
            raise RequestError(400, f"say which database: one of {', '.join(databases)}")
        if not isinstance(name, str) or name not in databases:
            raise RequestError(404, f"unknown database {name!r}: one of {', '.join(databases)}", "not_found_error")
        return databases[name]

    def question_of(value) -> str:
        if not isinstance(value, str) or not value.strip():
            raise RequestError(400, "the question is empty")
        if len(value) > limits.max_question_chars:
            raise RequestError(413, f"the question is longer than {limits.max_question_chars} characters")
        return value.strip()

    async def answer(served: Served, question: str):
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(assistant.answer, served.database, served.schema, question, limits.timeout_s),
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
        body = await body_of(request)
        served = pick_database(body.get("database"))
        question = question_of(body.get("question"))
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
        body = await body_of(request)
        if body.get("stream"):
            raise RequestError(400, "stream is not supported: ask with stream false")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise RequestError(400, "no user message: the question is the last message with role user")
        content = users[-1].get("content")
        if isinstance(content, list):  # the content-parts form: the text parts, joined
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        model = body.get("model") or model_name
        name = body.get("database")
        if name is None and isinstance(model, str) and "/" in model:
            name = model.split("/", 1)[1]
        served = pick_database(name)
        result = await answer(served, question_of(content))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.sql},
                    "finish_reason": "length" if result.hit_max_new_tokens else "stop",
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
