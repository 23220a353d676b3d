"""`sqlora serve` under load: N concurrent clients (1, 4, 8, 16) against the real command on 127.0.0.1, over
SQLite files and a DuckDB copy, bounded in requests and time. Usage:
make bench-serve [ARGS="--model models/published/<name> --per-client 6"]

Each client sends OpenAI chat requests one after another (questions of Spider dev on its databases, else the
embedded sample's, in one fixed mix: every level asks the first clients x per-client of them). Per level: answers/s, p50/p95/p99 latency, statuses, the server's RSS. Then a
cancellation check (clients that hang up mid-generation, then one request timed alone) and a memory check
(RSS after the first 100 requests and after --memory-requests in all). The database files are hashed before
and after. Targets (issue 33, 2 CPU cores): 8 clients >= 4x the answers/s of one, p95 at 8 clients <= 3x one
request alone (the 1-client p50), zero 5xx, RSS flat (+10% at most), databases byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlora.model.loader import machine

TARGETS = {"speedup_8": 4.0, "p95_8_over_single": 3.0, "rss_growth": 0.10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/published/spider-gemma3-lora")
    parser.add_argument("--base", help="as sqlora serve's --base (default: found from the model's sqlora_model.json)")
    parser.add_argument("--spider", default="../shared/datasets/spider", help="Spider (its dev questions and databases), if present")
    parser.add_argument("--databases", default="concert_singer,pets_1,car_1", help="Spider databases served (one more as DuckDB)")
    parser.add_argument("--levels", default="1,4,8,16", help="concurrent clients, one level after another")
    parser.add_argument("--per-client", type=int, default=8, help="requests per client at each level")
    parser.add_argument("--memory-requests", type=int, default=500, help="requests in all before the last RSS (0: no memory check)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--level-timeout", type=float, default=900, help="seconds a level may take")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        from tests.databases import free_port

        databases, questions = fixtures(args, work)
        before = {p: digest(p) for p in databases}
        port = free_port()
        command = [sys.executable, "-m", "sqlora.cli", "serve", "--model", args.model, "--port", str(port), "--dtype", args.dtype]
        command += ["--batch-size", str(args.batch_size), "--max-waiting", "256"] + (["--base", args.base] if args.base else [])
        for path in databases:
            command += ["--db", str(path)]
        log = open(work / "server.log", "w")
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, server, work / "server.log")
            results = run(args, url, server.pid, questions)
        finally:
            server.terminate()
            server.wait(30)
        errors = [line for line in (work / "server.log").read_text().splitlines() if "Error" in line or "error" in line]
        if errors:  # the server's own account of what failed
            print("server log:\n" + "\n".join(errors[-20:]))
        results["databases_unchanged"] = all(digest(p) == h for p, h in before.items())
        results["machine"] = machine()
        results["model"] = args.model
        report(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fixtures(args, work: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The served database files (copies: the originals are never opened by the server) and (database, question) pairs."""
    from tests.databases import copy_to_duckdb

    spider = Path(args.spider)
    names = args.databases.split(",")
    if all((spider / "database" / n / f"{n}.sqlite").is_file() for n in names) and (spider / "dev.json").is_file():
        files = {n: spider / "database" / n / f"{n}.sqlite" for n in names}
        dev = json.loads((spider / "dev.json").read_text())
    else:
        from sqlora.data.sample import generate_sample

        sample = work / "sample"
        generate_sample(sample, seed=42)
        dev = json.loads((sample / "dev.json").read_text())
        names = sorted({q["db_id"] for q in dev})[:3]
        files = {n: sample / "database" / n / f"{n}.sqlite" for n in names}
    served = []
    for name, path in files.items():
        served.append(work / f"{name}.sqlite")
        shutil.copy(path, served[-1])
    duck = names[0] + "_duck"
    served.append(copy_to_duckdb(served[0], work / f"{duck}.duckdb"))
    pairs = [(q["db_id"], q["question"]) for q in dev if q["db_id"] in files]
    pairs += [(duck, question) for db, question in pairs if db == names[0]]
    pairs.sort(key=lambda p: hashlib.sha256(repr(p).encode()).hexdigest())  # a fixed mix of databases
    return served, pairs


def run(args, url: str, pid: int, questions: list[tuple[str, str]]) -> dict:
    results: dict = {"levels": []}
    total = 0
    rss = {}
    for clients in (int(c) for c in args.levels.split(",")):
        # Every level asks the same questions from the start of one fixed mix, so levels compare.
        jobs = [questions[k % len(questions)] for k in range(clients * args.per_client)]
        start = time.perf_counter()
        outcomes = ask_all(url, jobs, clients, start + args.level_timeout)
        seconds = time.perf_counter() - start
        total += len(outcomes)
        latencies = sorted(o["seconds"] for o in outcomes if o["status"] == 200)
        level = {
            "clients": clients,
            "requests": len(outcomes),
            "answered": len(latencies),
            "seconds": round(seconds, 2),
            "answers_per_s": round(len(latencies) / seconds, 3),
            "tokens_per_s": round(sum(o.get("tokens", 0) for o in outcomes) / seconds, 1),
            "p50_s": round(percentile(latencies, 50), 2),
            "p95_s": round(percentile(latencies, 95), 2),
            "p99_s": round(percentile(latencies, 99), 2),
            "statuses": dict(Counter(str(o["status"]) for o in outcomes)),
            "rss_mb": rss_mb(pid),
        }
        results["levels"].append(level)
        print(json.dumps(level), flush=True)
        if total >= 100 and "after_100" not in rss:
            rss["after_100"] = rss_mb(pid)
    results["cancellation"] = cancellation(url, questions[0])
    if args.memory_requests > total:
        more = [questions[k % len(questions)] for k in range(total, args.memory_requests)]
        ask_all(url, more, 16, time.perf_counter() + args.level_timeout)
        total = args.memory_requests
    rss.setdefault("after_100", results["levels"][-1]["rss_mb"])
    rss[f"after_{total}"] = rss_mb(pid)
    results["rss_mb"] = rss
    return results


def ask_all(url: str, jobs: list[tuple[str, str]], clients: int, deadline: float) -> list[dict]:
    def one(job):
        if time.perf_counter() > deadline:
            return {"status": "skipped", "seconds": 0.0}
        return chat(url, *job)

    with ThreadPoolExecutor(clients) as pool:
        return [o for o in pool.map(one, jobs) if o["status"] != "skipped"]


def chat(url: str, database: str, question: str, timeout: float = 600) -> dict:
    body = {"model": f"sqlora/{database}", "messages": [{"role": "user", "content": question}]}
    request = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    tokens = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            tokens = json.loads(response.read())["usage"]["completion_tokens"]
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError:
        status = "no answer"
    return {"status": status, "seconds": time.perf_counter() - start, "tokens": tokens}


def cancellation(url: str, job: tuple[str, str], clients: int = 5) -> dict:
    """``clients`` clients send a question and hang up 0.5 s later; then one question is timed: with the
    abandoned generations cancelled it takes what a question alone takes, not theirs too."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": f"sqlora/{job[0]}", "messages": [{"role": "user", "content": job[1]}]}).encode()
    for _ in range(clients):
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
        time.sleep(0.1)
    time.sleep(0.5)
    after = chat(url, *job)
    alone = chat(url, *job)
    return {"abandoned": clients, "next_request_s": round(after["seconds"], 2), "alone_s": round(alone["seconds"], 2)}


def report(results: dict) -> None:
    levels = {level["clients"]: level for level in results["levels"]}
    print(f"machine: {results['machine']}")
    print("| clients | answers/s | generated tokens/s | p50 s | p95 s | p99 s | statuses | server RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for level in results["levels"]:
        print(
            f"| {level['clients']} | {level['answers_per_s']} | {level['tokens_per_s']} | {level['p50_s']} | {level['p95_s']} | {level['p99_s']} | "
            f"{level['statuses']} | {level['rss_mb']} |"
        )
    fives = sum(n for level in results["levels"] for s, n in level["statuses"].items() if str(s).startswith("5"))
    print(f"5xx answers: {fives} (target 0)")
    if 1 in levels and 8 in levels:
        speedup = levels[8]["answers_per_s"] / levels[1]["answers_per_s"]
        single = levels[1]["p50_s"]
        print(f"8 clients: {speedup:.2f}x the answers/s of one (target >= {TARGETS['speedup_8']})")
        print(f"p95 at 8 clients: {levels[8]['p95_s'] / single:.2f}x one request alone (target <= {TARGETS['p95_8_over_single']})")
        results["speedup_8"], results["p95_8_over_single"] = round(speedup, 2), round(levels[8]["p95_s"] / single, 2)
    cancel = results["cancellation"]
    print(
        f"cancellation: {cancel['abandoned']} clients hung up; the next request took {cancel['next_request_s']} s "
        f"(a request alone: {cancel['alone_s']} s)"
    )
    rss = list(results["rss_mb"].items())
    growth = rss[-1][1] / rss[0][1] - 1
    print(f"server RSS: {', '.join(f'{k} {v} MB' for k, v in rss)} ({100 * growth:+.1f}%; target <= +{100 * TARGETS['rss_growth']:.0f}%)")
    print(f"databases byte-identical afterwards: {results['databases_unchanged']}")


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if server.poll() is not None:
            sys.exit(f"bench-serve: the server stopped:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5):
                return
        except OSError:
            time.sleep(1)
    sys.exit(f"bench-serve: the server was not ready within {timeout:g} s")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.databases (the DuckDB copy)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
