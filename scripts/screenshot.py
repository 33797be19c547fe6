"""Screenshot the customer-360 page on the demo data: docs/customer-360.png.

Usage: .venv/bin/python scripts/screenshot.py [--customer cust-0000023] [--out PATH] [--full]

Runs `profilestore demo` (500 customers, fixed seed) into a temporary home, decides the
receipt and loyalty triggers on its orders (enabled since 2000, so the demo's history is
not warm-up), starts `profilestore serve --role api` on 127.0.0.1 with a throwaway key, logs in through the form in Debian's chromium (headless, Playwright) and
saves the profile page. Needs what `scripts/bootstrap test` installs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PROFILESTORE_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customer", default="cust-0000023")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "customer-360.png")
    parser.add_argument("--full", action="store_true", help="the whole page, not the top")
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    key = secrets.token_urlsafe(24)
    digest = hashlib.sha256(key.encode()).hexdigest()
    script = Path(sys.executable).parent / "profilestore"
    with tempfile.TemporaryDirectory() as home:
        env = os.environ | {
            "PROFILESTORE_API__KEYS": f'[{{name="demo", sha256="{digest}", '
            'scopes=["read", "audit"]}]',
        }
        for trigger in ("RECEIPT", "LOYALTY"):
            env[f"PROFILESTORE_TRIGGERS__{trigger}__ENABLED"] = "true"
            env[f"PROFILESTORE_TRIGGERS__{trigger}__SINCE"] = "2000-01-01T00:00:00Z"
        subprocess.run(
            [str(script), "--home", home, "demo", "--customers", "500"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        subprocess.run(
            [str(script), "--home", home, "triggers", "run"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        port = free_port()
        server = subprocess.Popen(
            [str(script), "--home", home, "serve", "--role", "api", "--port", str(port)],
            env=env,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.1)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(
                    base_url=base, viewport={"width": 1400, "height": args.height}
                )
                page.goto(f"/ui/profile?id={args.customer}")
                page.fill("#key", key)
                page.click("button[type=submit]")
                page.wait_for_selector("#customer-id")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=args.full)
                browser.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    print(args.out)


if __name__ == "__main__":
    main()
