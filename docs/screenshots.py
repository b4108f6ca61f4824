"""Screenshots of the documentation's main pages in headless Chromium, and a check that no page
and no code block runs past its column (``make docs-shots``; not in CI: it needs a browser).

    python docs/screenshots.py                      # desktop and phone widths, PNGs in /tmp/docs-shots
    python docs/screenshots.py --pages index,options --out shots/

Builds the site with ``mkdocs build``, serves it on localhost, opens each page at each width
with Playwright driving the machine's Chromium (``--chromium``, default ``/usr/bin/chromium``;
Debian: ``apt-get install chromium``; ``pip install playwright``, no browser download), saves a
full-page PNG, and counts code blocks whose text is wider than the block (a reader would scroll
sideways), tables whose scroll box runs past the column, and pages wider than the window. Prints a table; exits 1 when anything overflows.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("index", "concepts", "recipes", "plugins", "architecture", "options", "hooks", "serving", "benchmarks")
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
# a root Chromium on a machine with no outside network: no sandbox, no background connections
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
OVERFLOW = """() => ({
  code: [...document.querySelectorAll('.md-content pre > code')].filter(c => c.scrollWidth > c.clientWidth + 1).length,
  tables: [...document.querySelectorAll('.md-content table')].map(t => t.closest('.md-typeset__scrollwrap') || t)
      .filter(box => box.getBoundingClientRect().right >
        document.querySelector('.md-content').getBoundingClientRect().right + 1).length,
  page: document.documentElement.scrollWidth > window.innerWidth,
})"""


def build_site(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(out)], cwd=ROOT, check=True)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one table out, not a line per request
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def shoot(pages: list[str], out: Path, chromium: str) -> list[tuple[str, str, dict]]:
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        build_site(site)
        server, port = serve(site)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
                for width_name, (w, h) in WIDTHS.items():
                    page = browser.new_page(viewport={"width": w, "height": h})
                    for name in pages:
                        path = "" if name == "index" else f"{name}/"
                        page.goto(f"http://127.0.0.1:{port}/{path}", wait_until="load")
                        page.screenshot(path=str(out / f"{name}-{width_name}.png"), full_page=True)
                        rows.append((name, width_name, page.evaluate(OVERFLOW)))
                    page.close()
                browser.close()
        finally:
            server.shutdown()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", default=",".join(PAGES))
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "docs-shots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = shoot(args.pages.split(","), args.out, args.chromium)
    print("| page | width | code blocks wider than their column | tables past the column | page wider than the window |")
    print("|---|---|---|---|---|")
    bad = 0
    for name, width, found in rows:
        bad += found["code"] + found["tables"] + int(found["page"])
        print(f"| {name} | {width} | {found['code']} | {found['tables']} | {'yes' if found['page'] else 'no'} |")
    print(f"\nscreenshots: {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
