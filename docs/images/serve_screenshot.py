"""Makes docs/images/serve.png, the README's screenshot: `sqlora serve` with the published model over a
Spider database, asked through its page in headless Chromium (Debian's chromium; playwright drives it).

    python docs/images/serve_screenshot.py DATABASE QUESTION [--base models/base-gemma]
"""

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

parser = argparse.ArgumentParser()
parser.add_argument("database")
parser.add_argument("question")
parser.add_argument("--model", default="models/published/spider2k-gemma3-lora")
parser.add_argument("--base", default="models/base")
parser.add_argument("--out", default=str(Path(__file__).with_name("serve.png")))
args = parser.parse_args()

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen(
    [sys.executable, "-m", "sqlora.cli", "serve", "--db", args.database, "--model", args.model, "--base", args.base, "--port", str(port)]
)
try:
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "v1/models", timeout=5)
            break
        except OSError:
            if server.poll() is not None:
                sys.exit("the server stopped")
            time.sleep(0.5)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(url)
        page.wait_for_selector("#database option", state="attached")
        page.fill("#question", args.question)
        page.click("#submit")
        page.wait_for_selector("#result, .error", timeout=120_000)
        page.screenshot(path=args.out)
        print(page.inner_text("#answer"))
        browser.close()
finally:
    server.terminate()
    server.wait(30)
