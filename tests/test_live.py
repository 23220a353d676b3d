"""Continuous batching across callers (sqlora.infer.live), and sqlora serve on it: requests that arrive
together are generated together and get what each would get alone; a cancelled one leaves the batch; a full
line answers Busy (503 with Retry-After); streamed answers add up to the answer; settled_sql never takes back."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from sqlora.infer.engine import generate
from sqlora.infer.live import Busy, LiveEngine, Sampling
from sqlora.infer.loading import load_for_inference
from sqlora.infer.sql_text import extract_sql, settled_sql
from tests.helpers import serving

SCHEMA = "CREATE TABLE singer (singer_id INT, name TEXT, country TEXT, age INT);\nCREATE TABLE concert (concert_id INT, year INT);"


@pytest.fixture(scope="module")
def chaotic_model(chaotic_dir):
    return load_for_inference(chaotic_dir, dtype="float32")


def prompts_of(tokenizer):
    """Prompts about two schemas, questions of several lengths, with each prompt's shared prefix length."""
    from sqlora.data.prompt import common_prefix, encode_prompt

    texts = [f"{SCHEMA}\nQuestion {w}?\n###Response: " for w in ["one", "two two", "three three three", "4", "five"]]
    texts += [f"Another schema entirely. Question {w}?" for w in ["a", "b b"]]
    ids = [encode_prompt(tokenizer, t) for t in texts]
    return texts, ids, [common_prefix(i, ids[0] if k < 5 else ids[5]) for k, i in enumerate(ids)]


def test_concurrent_callers_get_what_each_gets_alone(chaotic_model):
    """Seven callers at once, two schemas: each greedy answer equals generate() of its prompt alone."""
    model, tokenizer = chaotic_model
    texts, ids, prefixes = prompts_of(tokenizer)
    alone = [generate(model, tokenizer, [t], 1, 12, progress=False)[0].raw for t in texts]
    live = LiveEngine(model, tokenizer, batch_size=4, max_new_tokens=12)
    try:
        with ThreadPoolExecutor(7) as pool:
            tickets = list(pool.map(lambda k: live.submit(ids[k], prefixes[k], Sampling(max_new_tokens=12)), range(7)))
            got = [t.future.result(timeout=120) for t in tickets]
        assert [g[0].raw for g in got] == alone
        assert all(g[0].engine == "sqlora" for g in got)
        assert not live._running and not live._encoded  # nothing left behind
    finally:
        live.close()


def test_a_cancelled_request_leaves_and_the_others_finish(chaotic_model):
    model, tokenizer = chaotic_model
    texts, ids, prefixes = prompts_of(tokenizer)
    live = LiveEngine(model, tokenizer, batch_size=4, max_new_tokens=40)
    try:
        # The first request is cancelled once it has written a token (its caller gives up): it leaves the batch.
        tickets = []
        first = live.submit(ids[0], prefixes[0], Sampling(max_new_tokens=40), on_text=lambda k, text: tickets[0].cancel())
        tickets.append(first)
        others = [live.submit(ids[k], prefixes[k], Sampling(max_new_tokens=12)) for k in (1, 5)]
        results = [t.future.result(timeout=120) for t in others]
        assert first.future.cancelled() and all(len(r) == 1 for r in results)
        for _ in range(100):  # the dropped rows leave at the engine's next step
            if not live._running:
                break
            time.sleep(0.05)
        assert not live._running and not live._encoded
        # A request cancelled while it waits never runs.
        with live._lock:  # the engine cannot take it meanwhile
            waiting = live.submit(ids[1], prefixes[1], Sampling(max_new_tokens=12))
            waiting.cancel()
        after = live.submit(ids[2], prefixes[2], Sampling(max_new_tokens=12))
        assert after.future.result(timeout=120) and waiting.future.cancelled()
    finally:
        live.close()


def test_a_full_line_is_busy_with_a_retry_after(chaotic_model):
    model, tokenizer = chaotic_model
    _, ids, prefixes = prompts_of(tokenizer)
    live = LiveEngine(model, tokenizer, batch_size=2, max_waiting=2, max_new_tokens=8)
    try:
        with live._lock:  # the engine takes nothing while the line fills
            tickets = [live.submit(ids[k], prefixes[k], Sampling(max_new_tokens=8)) for k in range(2)]
            with pytest.raises(Busy) as busy:
                live.submit(ids[2], prefixes[2], Sampling(max_new_tokens=8))
        assert busy.value.retry_after >= 1 and "2 requests are waiting" in str(busy.value)
        assert all(t.future.result(timeout=120) for t in tickets)
        with pytest.raises(Exception, match="n is 3: from 1 to 2 choices"):
            live.submit(ids[0], prefixes[0], Sampling(max_new_tokens=8, n=3, temperature=1.0))
    finally:
        live.close()


def test_sampled_choices_follow_their_seed_and_stream_their_text(chaotic_model):
    model, tokenizer = chaotic_model
    _, ids, prefixes = prompts_of(tokenizer)
    live = LiveEngine(model, tokenizer, batch_size=8, max_new_tokens=10)
    try:
        heard: dict[int, list[str]] = {}
        sampling = Sampling(max_new_tokens=10, n=3, temperature=1.5, top_p=1.0, seed=3)
        first = live.submit(ids[0], prefixes[0], sampling, on_text=lambda k, text: heard.setdefault(k, []).append(text))
        again = live.submit(ids[0], prefixes[0], sampling)
        a, b = first.future.result(timeout=120), again.future.result(timeout=120)
        assert [g.raw for g in a] == [g.raw for g in b]  # the seed decides
        assert len({g.raw for g in a}) > 1  # three draws, not one answer thrice
        for k, generation in enumerate(a):  # each choice's text grew token by token to its answer
            assert len(heard[k]) == generation.new_tokens and all(y.startswith(x) for x, y in zip(heard[k], heard[k][1:]))
    finally:
        live.close()


@pytest.mark.parametrize("seed", range(3))
def test_settled_sql_is_never_taken_back(seed):
    """For generations cut at every point: what settled_sql gives is the start of the final extract_sql."""
    rng = random.Random(seed)
    pieces = ["SELECT", " name", ",", " count(*)", " FROM", " singer", "\n", "  ", "WHERE", " age", " >", " 3", ";", "#", "##",
              "\n\n", "```", "<|", "|>", "\nSELECT", " UNION", " (", ")", " AS", " x", "s", "ELECT", "\n", " --"]  # fmt: skip
    for _ in range(300):
        text = "SELECT" + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 20)))
        final = extract_sql(text)
        for end in range(len(text) + 1):
            assert final.startswith(settled_sql(text[:end])), (text[:end], text)
    assert settled_sql("Here is the query: SELECT 1") == ""  # prose may still lead to a fenced block
    assert settled_sql("SELECT name FROM sing") == "SELECT name FROM"  # a word may still grow


# --- sqlora serve on the live engine ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(chaotic_dir, sample_dir, tmp_path_factory):
    """A live server on the tiny (chaotic) model, its generations batched through our engine."""
    import shutil

    from sqlora.infer.assistant import Assistant
    from sqlora.serve.app import ServeLimits, create_app, open_databases

    db = tmp_path_factory.mktemp("live") / "airline.sqlite"
    shutil.copy(sample_dir / "database" / "airline" / "airline.sqlite", db)
    model = tmp_path_factory.mktemp("live-model") / "none"
    model.mkdir()
    (model / "sqlora_model.json").write_text(json.dumps({"method": "none", "base": str(chaotic_dir)}))
    assistant = Assistant(model, chaotic_dir, max_new_tokens=24, dtype="float32", batch_size=8, max_waiting=32)
    assert assistant.live is not None
    app = create_app(assistant, open_databases([str(db)]), limits=ServeLimits(timeout_s=2.0))
    with serving(app) as url:
        yield {"url": url, "assistant": assistant, "db": db}
    assistant.close()


def post(url: str, body: dict, timeout: float = 120):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow  # a live server
def test_sixteen_concurrent_openai_users_without_a_5xx(live_server):
    """16 clients at once through the OpenAI client: every answer is what the question gets alone."""
    from openai import OpenAI

    client = OpenAI(base_url=live_server["url"] + "/v1", api_key="none", max_retries=0, timeout=120)
    questions = [f"How many flights {'x' * k}?" for k in range(16)]

    def ask(question):
        answer = client.chat.completions.create(model="sqlora/airline", messages=[{"role": "user", "content": question}])
        return answer.choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, questions))
    assert together == [ask(q) for q in questions[:4]] + together[4:]  # the first four again, one at a time
    assert not live_server["assistant"].live._running


@pytest.mark.slow  # a live server
def test_a_streamed_answer_adds_up_to_the_answer(live_server):
    from openai import OpenAI

    client = OpenAI(base_url=live_server["url"] + "/v1", api_key="none", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Which airlines are from Spain?"}]
    whole = client.chat.completions.create(model="sqlora/airline", messages=messages)
    chunks = list(client.chat.completions.create(model="sqlora/airline", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"


@pytest.mark.slow  # a live server
def test_a_client_that_hangs_up_is_cancelled_and_logged_as_info(live_server, caplog, monkeypatch):
    """A client gives up after 0.3 s: its generation leaves the batch, one info line says so, no error."""
    import logging
    import socket

    host, port = live_server["url"].removeprefix("http://").split(":")
    body = json.dumps({"database": "airline", "question": "List every airline and country please"}).encode()
    live = live_server["assistant"].live
    step = live.engine._step

    def slow_step(*args, **kwargs):  # the tiny model writes 24 tokens in milliseconds: slow it to a real model's pace
        time.sleep(0.1)
        return step(*args, **kwargs)

    monkeypatch.setattr(live.engine, "_step", slow_step)
    with caplog.at_level(logging.INFO, logger="sqlora.serve"):
        for _ in range(3):
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(
                    b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                )  # fmt: skip
                time.sleep(0.3)
        for _ in range(200):
            if not live._running and not live.waiting():
                break
            time.sleep(0.05)
    assert not live._running and not live.waiting()
    gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert gone and all(r.levelno == logging.INFO for r in gone)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    status, _ = post(live_server["url"] + "/v1/query", {"database": "airline", "question": "How many flights?"})
    assert status == 200


@pytest.mark.slow  # the real sqlora serve, in a subprocess
def test_bench_serve_runs_its_levels_without_a_5xx(chaotic_dir, tmp_path):
    """make bench-serve, small: the real `sqlora serve` under 1 and 4 clients over SQLite and DuckDB copies of
    the sample's databases, with its cancellation and memory checks; every answer a 200, files unchanged."""
    import subprocess
    import sys

    from tests.helpers import REPO

    model = tmp_path / "none"
    model.mkdir()
    (model / "sqlora_model.json").write_text(json.dumps({"method": "none", "base": str(chaotic_dir)}))
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "benchmarks/bench_serve.py"), "--model", str(model), "--base", str(chaotic_dir)]
    command += ["--spider", str(tmp_path / "no-spider"), "--levels", "1,4", "--per-client", "3", "--memory-requests", "20"]
    command += ["--dtype", "float32", "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [level["clients"] for level in results["levels"]] == [1, 4]
    assert [level["statuses"] for level in results["levels"]] == [{"200": 3}, {"200": 12}]
    assert results["databases_unchanged"] and all(v > 0 for v in results["rss_mb"].values())
    assert results["cancellation"]["abandoned"] == 5 and "5xx answers: 0" in run.stdout


def test_the_fallback_takes_turns_with_a_bounded_line(tiny_model_dir, tmp_path, sample_dir, monkeypatch):
    """Where our engine does not run (engine transformers), generations take turns; a full line is Busy too."""
    import sqlora.infer.engine
    from sqlora.data.catalog import read_schema
    from sqlora.infer.assistant import Assistant
    from sqlora.infer.base import Generation
    from sqlora.sql.engines import open_database

    release = threading.Event()

    def held_generate(*, prompts, **_):
        release.wait(60)
        return [Generation(sql="SELECT 1", raw="SELECT 1;", new_tokens=3, hit_max_new_tokens=False) for _ in prompts]

    monkeypatch.setattr(sqlora.infer.engine, "generate", held_generate)
    model = tmp_path / "none"
    model.mkdir()
    (model / "sqlora_model.json").write_text(json.dumps({"method": "none", "base": str(tiny_model_dir)}))
    assistant = Assistant(model, tiny_model_dir, engine="transformers", max_waiting=1)
    try:
        assert assistant.live is None
        database = open_database(sample_dir / "database" / "airline" / "airline.sqlite")
        schema = read_schema(database)
        first = assistant.submit(database, schema, "How many flights?")
        for _ in range(100):  # the first is taken (generating), so the line is empty again
            if assistant._queued == 0:
                break
            time.sleep(0.01)
        second = assistant.submit(database, schema, "How many airlines?")
        with pytest.raises(Busy, match="1 requests are waiting"):
            assistant.submit(database, schema, "How many airports?")
        release.set()
        assert [g.sql for g in first.ticket.future.result(60)] == ["SELECT 1"]
        assert [a.rows for a in assistant.execute(second, second.ticket.future.result(60))] == [[(1,)]]
        assert assistant._queued == 0
    finally:
        release.set()
        assistant.close()


def test_constrained_requests_in_a_batch_get_what_each_gets_alone(chaotic_model):
    """Schema-constrained decoding inside the shared batch: the same tokens as generate(constrained) alone."""
    from sqlora.infer.constrained import SchemaNames

    model, tokenizer = chaotic_model
    texts, ids, prefixes = prompts_of(tokenizer)
    names = SchemaNames({"singer": frozenset({"singer_id", "name", "country", "age"}), "concert": frozenset({"concert_id", "year"})})
    alone = [generate(model, tokenizer, [t], 1, 12, progress=False, constrained=True, constraints=[names])[0] for t in texts[:4]]
    live = LiveEngine(model, tokenizer, batch_size=4, max_new_tokens=12, constrained=True)
    try:
        tickets = [live.submit(ids[k], prefixes[k], Sampling(max_new_tokens=12), names) for k in range(4)]
        together = [t.future.result(timeout=120)[0] for t in tickets]
        assert [g.raw for g in together] == [g.raw for g in alone]
        assert [g.constraint for g in together] == [g.constraint for g in alone]
    finally:
        live.close()
