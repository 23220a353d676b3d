"""sqlora serve on a live server on 127.0.0.1: the OpenAI client, /v1/query on SQLite, DuckDB and PostgreSQL,
JSON errors, the bearer token, caps, concurrency, a load check, and the page in headless Chromium.

The model is the tiny random Llama with its generation scripted (the question decides the SQL), so the
tests check the server, not a model's SQL; a CLI test starts the real command with the real model path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sqlora.infer.base import Generation
from tests.databases import copy_to_duckdb, copy_to_postgres, free_port
from tests.helpers import SQLORA, serving

pytestmark = pytest.mark.slow  # live servers and a browser

# Question -> the SQL the scripted model writes. The slow one runs until the sandbox's time limit.
SCRIPT = {
    "how many flights": "SELECT count(*) FROM flight",
    "list airlines": "SELECT name, country FROM airline ORDER BY airline_id",
    "which airlines are from spain": 'SELECT Name FROM Airline WHERE Country = "Spain" ORDER BY Name',
    "delete everything": "DELETE FROM flight",
    "all the flights": "SELECT * FROM flight",
    "slow": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "crash": "CRASH",
}


ASKED: dict = {}  # the last generate() call's max_new_tokens, prompts and decoding


def scripted_generate(*, prompts, max_new_tokens=None, **settings):
    ASKED.update(max_new_tokens=max_new_tokens, prompts=len(prompts), decoding=settings.get("decoding", "greedy"))
    ASKED.update(temperature=settings.get("temperature"), seed=settings.get("seed"))
    out = []
    for prompt in prompts:
        question = prompt.rsplit("###Input:\n", 1)[1].split("\n\n###Response", 1)[0].strip().lower()
        if question == "crash":
            raise RuntimeError("boom")
        sql = SCRIPT.get(question, "SELECT 1")
        out.append(Generation(sql=sql, raw=sql + ";", new_tokens=7, hit_max_new_tokens=False))
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def airline_db(sample_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "airline.sqlite"
    shutil.copy(sample_dir / "database" / "airline" / "airline.sqlite", out)
    return out


@pytest.fixture(scope="module")
def duck_db(airline_db) -> Path:
    return copy_to_duckdb(airline_db, airline_db.with_name("airline_duck.duckdb"))


@pytest.fixture(scope="module")
def server(request, airline_db, duck_db, tiny_model_dir, tmp_path_factory):
    """A live server (uvicorn in a thread of this process, so the generation can be scripted) over the
    SQLite file, its DuckDB copy and, where PostgreSQL binaries exist, a PostgreSQL copy."""

    import sqlora.infer.engine
    from sqlora.infer.assistant import Assistant
    from sqlora.serve.app import ServeLimits, create_app, open_databases

    specs = [str(airline_db), str(duck_db)]
    try:
        cluster = request.getfixturevalue("postgres")
        url = cluster.create_database("airline_pg")
        copy_to_postgres(airline_db, url)
        specs.append(url)
    except pytest.skip.Exception:
        pass
    patch = pytest.MonkeyPatch()
    patch.setattr(sqlora.infer.engine, "generate", scripted_generate)
    model = tmp_path_factory.mktemp("serve-model") / "none"
    model.mkdir()
    (model / "sqlora_model.json").write_text(json.dumps({"method": "none", "base": str(tiny_model_dir)}))
    assistant = Assistant(model, tiny_model_dir, engine="transformers")  # generations take turns, scripted
    limits = ServeLimits(max_rows=5, timeout_s=2.0, max_body_bytes=4096)
    app = create_app(assistant, open_databases(specs), token="s3cret", limits=limits)
    with serving(app) as url:
        yield {"url": url, "pg": len(specs) == 3, "pg_url": specs[-1] if len(specs) == 3 else None}
    patch.undo()


def call(server, path, body=None, token="s3cret", raw: bytes | None = None, method=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server["url"] + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text)


def test_openai_client_lists_models_and_answers_sql(server):
    from openai import OpenAI

    client = OpenAI(base_url=server["url"] + "/v1", api_key="s3cret")
    ids = [m.id for m in client.models.list().data]
    assert ids[:3] == ["sqlora", "sqlora/airline", "sqlora/airline_duck"]
    reply = client.chat.completions.create(
        model="sqlora/airline", messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": "How many flights"}]
    )
    assert reply.choices[0].message.content == "SELECT count(*) FROM flight"
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 7
    # The database by a field instead of the model name.
    reply = client.chat.completions.create(
        model="sqlora", messages=[{"role": "user", "content": "List airlines"}], extra_body={"database": "airline_duck"}
    )
    assert reply.choices[0].message.content.startswith("SELECT name, country")


def test_query_returns_the_same_rows_on_every_engine(server, airline_db):
    import sqlite3

    expected = sqlite3.connect(airline_db).execute("SELECT name FROM airline WHERE country = 'Spain' ORDER BY name").fetchall()
    names = ["airline", "airline_duck"] + (["airline_pg"] if server["pg"] else [])
    for name in names:
        status, body = call(server, "/v1/query", {"database": name, "question": "Which airlines are from Spain"})
        assert status == 200 and body["error"] is None, body
        assert body["sql"] == 'SELECT Name FROM Airline WHERE Country = "Spain" ORDER BY Name'
        assert body["rows"] == [list(r) for r in expected[:5]] and body["row_count"] == len(expected)
        assert body["truncated"] == (len(expected) > 5) and body["columns"][0].lower() == "name"
        if name != "airline":  # transpiled: the double-quoted word is a string, as SQLite read it
            assert "'Spain'" in body["sql_run"] and body["engine"] in ("duckdb", "postgresql")
        assert set(body["seconds"]) == {"total", "generate", "execute"}


def test_rows_are_capped_and_writes_refused(server, airline_db, duck_db):
    before = sha256(airline_db), sha256(duck_db)
    status, body = call(server, "/v1/query", {"database": "airline", "question": "All the flights"})
    assert status == 200 and len(body["rows"]) == 5 and body["row_count"] > 5 and body["truncated"]
    for name in ("airline", "airline_duck") + (("airline_pg",) if server["pg"] else ()):
        status, body = call(server, "/v1/query", {"database": name, "question": "Delete everything"})
        assert status == 200 and body["error"] == "refused: DELETE statements are not allowed" and body["rows"] is None
    assert (sha256(airline_db), sha256(duck_db)) == before


@pytest.mark.parametrize(
    "path, body, raw, token, status, message",
    [
        ("/v1/query", {"database": "nope", "question": "x"}, None, "s3cret", 404, "unknown database 'nope'"),
        ("/v1/query", {"database": "airline", "question": "  "}, None, "s3cret", 400, "the question is empty"),
        ("/v1/query", {"question": "x"}, None, "s3cret", 400, "say which database"),
        ("/v1/query", None, b"{not json", "s3cret", 400, "malformed JSON"),
        ("/v1/query", None, b"[1, 2]", "s3cret", 400, "the body must be a JSON object"),
        ("/v1/query", None, b'{"question": "' + b"x" * 5000 + b'"}', "s3cret", 413, "request body larger than 4096 bytes"),
        ("/v1/query", {"database": "airline", "question": "x"}, None, None, 401, "missing or wrong bearer token"),
        ("/v1/models", None, None, "wrong", 401, "missing or wrong bearer token"),
        ("/v1/chat/completions", {"messages": []}, None, "s3cret", 400, "messages: List should have at least 1 item"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, None, "s3cret", 400, "no user message"),
        (
            "/v1/chat/completions",
            {"model": "sqlora/nope", "messages": [{"role": "user", "content": "x"}]},
            None,
            "s3cret",
            404,
            "unknown database 'nope'",
        ),
        (
            "/v1/chat/completions",
            {"stop": ["a", "b", "c", "d", "e"], "messages": [{"role": "user", "content": "x"}]},
            None,
            "s3cret",
            400,
            "stop: at most 4 sequences",
        ),
        # Hostile or malformed input: a 4xx naming what is wrong, never a 500.
        ("/v1/query", None, b'{"a": ' + b"[" * 1500 + b"]" * 1500 + b"}", "s3cret", 400, "malformed JSON: nested too deep"),
        ("/v1/query", None, b'{"database": "airline", "question": "\\ud800 flights"}', "s3cret", 400, "the question is not valid Unicode"),
        ("/v1/query", {"database": "airline", "question": 5}, None, "s3cret", 400, "question: Input should be a valid string"),
        ("/v1/query", {"database": "airline"}, None, "s3cret", 400, "question: Field required"),
        (
            "/v1/chat/completions",
            {"model": "sqlora/airline", "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
            None,
            "s3cret",
            400,
            "messages: a text content part needs a string 'text'",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            None,
            "s3cret",
            400,
            "messages.0.content",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "n": 5, "temperature": 1},
            None,
            "s3cret",
            400,
            "n: at most 4 choices per request",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "n": 2},
            None,
            "s3cret",
            400,
            "n: several choices are drawn by sampling",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "temperature": -5},
            None,
            "s3cret",
            400,
            "temperature: Input should be greater than or equal to 0",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_p": 0.5}, None, "s3cret", 400, "top_p: applies"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, None, "s3cret", 400, "max_tokens:"),
        ("/v1/nothing", None, None, "s3cret", 404, "Not Found"),
        ("/v1/query", {"database": "airline", "question": "crash"}, None, "s3cret", 500, "internal error (RuntimeError)"),
    ],
)
def test_bad_requests_get_json_errors(server, path, body, raw, token, status, message):
    got, answer = call(server, path, body, token=token, raw=raw)
    assert got == status and answer["error"]["message"].startswith(message), answer
    assert "Traceback" not in json.dumps(answer)


def test_openai_parameters_are_honoured(server):
    """max_tokens caps the generation (never above the server's own budget), stop cuts the answer as OpenAI
    does, temperature 0, n 1 and any seed are greedy decoding as it is."""
    question = {"role": "user", "content": "How many flights"}
    ask = {"model": "sqlora/airline", "messages": [question]}
    status, body = call(server, "/v1/chat/completions", ask | {"max_tokens": 3, "temperature": 0, "n": 1, "seed": 7})
    assert status == 200 and ASKED["max_new_tokens"] == 3, body
    status, body = call(server, "/v1/chat/completions", ask | {"max_tokens": 1e12})
    assert status == 200 and ASKED["max_new_tokens"] == 128  # the server's limit (Assistant's max_new_tokens)
    assert ASKED["decoding"] == "greedy"
    status, body = call(server, "/v1/chat/completions", ask | {"stop": [" FROM"]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "SELECT count(*)"
    assert body["choices"][0]["finish_reason"] == "stop"
    # n choices are drawn with the temperature, top_p and seed asked for.
    status, body = call(server, "/v1/chat/completions", ask | {"n": 3, "temperature": 0.8, "top_p": 0.9, "seed": 11})
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2], body
    assert ASKED["prompts"] == 3 and ASKED["decoding"] == "sample" and ASKED["temperature"] == 0.8 and ASKED["seed"] == 11


def test_a_slow_query_does_not_hold_up_others(server):
    """The slow query runs to its 2 s limit in a worker thread; a question asked meanwhile is answered first."""
    finished = {}

    def ask(question):
        status, body = call(server, "/v1/query", {"database": "airline", "question": question})
        finished[question] = (time.monotonic(), status, body)

    slow = threading.Thread(target=ask, args=("slow",))
    slow.start()
    time.sleep(0.3)
    ask("How many flights")
    slow.join()
    assert finished["How many flights"][0] < finished["slow"][0]
    assert finished["slow"][2]["error"] == "timeout after 2.0s" and finished["How many flights"][2]["error"] is None


def test_load_200_requests_from_8_clients(server, airline_db, duck_db):
    before = sha256(airline_db), sha256(duck_db)
    names = ["airline", "airline_duck"] + (["airline_pg"] if server["pg"] else [])
    questions = ["How many flights", "List airlines", "Delete everything", "Which airlines are from Spain"]
    jobs = [(names[i % len(names)], questions[i % len(questions)]) for i in range(200)]

    def one(job):
        return call(server, "/v1/query", {"database": job[0], "question": job[1]})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))
    assert len(results) == 200 and all(status == 200 for status, _ in results)
    for (name, question), (_, body) in zip(jobs, results):
        assert body["database"] == name and body["question"] == question
        assert (body["error"] is None) == (question != "Delete everything")
    assert (sha256(airline_db), sha256(duck_db)) == before
    if server["pg"]:
        import psycopg

        with psycopg.connect(server["pg_url"]) as conn:
            assert conn.execute("SELECT count(*) FROM flight").fetchone()[0] == results[0][1]["rows"][0][0]


def test_the_page_asks_and_shows_the_table(server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium package for the headless page test (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 520})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server["url"] + "/")
        page.fill("#token", "s3cret")
        page.dispatch_event("#token", "change")
        page.wait_for_selector("#database option[value='airline_duck']", state="attached")
        page.select_option("#database", "airline_duck")
        page.fill("#question", "Which airlines are from Spain")
        page.click("#submit")
        page.wait_for_selector("#result")
        assert page.inner_text("pre.sql") == 'SELECT Name FROM Airline WHERE Country = "Spain" ORDER BY Name'
        cells = page.locator("#result tbody td").all_inner_texts()
        assert cells and all(cells)
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert all(url.startswith(server["url"]) for url in requests)  # nothing from a CDN or elsewhere


def test_serve_command_bad_input_is_one_line_and_exit_2(tmp_path, airline_db):
    def run(*args):
        done = subprocess.run([*SQLORA, "serve", *args], capture_output=True, text=True, timeout=120)
        return done.returncode, done.stderr.strip()

    code, err = run("--db", str(tmp_path / "missing.sqlite"))
    assert code == 2 and err == f"error: {tmp_path / 'missing.sqlite'}: no such file"
    code, err = run("--db", "mysql://u@localhost/shop")
    assert code == 2 and err.startswith("error: mysql://u@localhost/shop: unknown database engine 'mysql'")
    code, err = run("--db", f"postgresql://u:hunter2@127.0.0.1:{free_port()}/shop")
    assert code == 2 and err.startswith("error: postgresql://u:***@127.0.0.1:") and "cannot connect" in err
    assert "hunter2" not in err and len(err.splitlines()) == 1
    code, err = run("--db", str(airline_db), "--db", str(airline_db))
    assert code == 2 and "a second database named 'airline'" in err
    empty = tmp_path / "empty.sqlite"
    import sqlite3

    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.execute("DROP TABLE t")
    code, err = run("--db", str(empty))
    assert code == 2 and err == f"error: {empty}: the database has no tables"


def test_serve_command_starts_and_answers(tmp_path, airline_db, tiny_model_dir):
    """The real command with a real (tiny, random) model: whatever SQL it writes, the answer is JSON."""
    model = tmp_path / "none"
    model.mkdir()
    (model / "sqlora_model.json").write_text(json.dumps({"method": "none", "base": str(tiny_model_dir)}))
    port = free_port()
    process = subprocess.Popen(
        [
            *SQLORA,
            "serve",
            "--db",
            str(airline_db),
            "--model",
            str(model),
            "--base",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--max-new-tokens",
            "8",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server = {"url": f"http://127.0.0.1:{port}"}
        for _ in range(300):
            try:
                status, body = call(server, "/v1/models", token=None)
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stderr.read()
                time.sleep(0.2)
        assert status == 200 and [m["id"] for m in body["data"]] == ["sqlora", "sqlora/airline"]
        status, body = call(server, "/v1/query", {"database": "airline", "question": "How many flights?"}, token=None)
        assert status == 200 and isinstance(body["sql"], str) and set(body) >= {"columns", "rows", "error", "seconds"}
        with urllib.request.urlopen(server["url"] + "/", timeout=30) as page:
            assert b'<select id="database"' in page.read()
    finally:
        process.terminate()
        process.wait(30)
