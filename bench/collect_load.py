"""Collect server under load: submit latency p50/p99 and votes/s at 1, 10 and 50 concurrent annotators.

    .venv/bin/python bench/collect_load.py [--votes 1500] [--no-browser]

Each level gets a fresh SQLite store (80 prompts × 9 pre-generated pairs, N = 3) and a fresh
`python -m collect serve` process on 127.0.0.1; simulated annotators log in over the JSON API and vote
as fast as the server answers (no think time: the worst case). The browser check measures, in headless
Chromium, the time from pressing Enter to the next item's prompt on screen, while 50 annotators load the
server. Targets (2 cores): p99 < 300 ms at 50 annotators; next item on screen < 200 ms.
Results: bench/results/collect_load.md (overwritten). There is no plain-TRL baseline for a labeling server.

The driver (`run_load`) is also what tests/e2e/test_collect_load.py uses for its kill -9 test.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RETRYABLE = (httpx.TransportError,)  # connection refused/reset, timeouts: the server is (re)starting


@dataclass
class LoadResult:
    acked: list[dict] = field(default_factory=list)  # one per acknowledged vote: user, key, vote_id, item
    latencies: list[float] = field(default_factory=list)  # seconds per successful submit (first try only)
    retries: int = 0
    conflicts: int = 0
    wall_s: float = 0.0


async def _request(client, method, url, deadline, result, **kw):
    """Send until the server answers (it may be down for a restart); a 5xx is retried too."""
    delay = 0.05
    while True:
        try:
            r = await client.request(method, url, **kw)
            if r.status_code < 500:
                return r
        except RETRYABLE:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{method} {url}: no answer before the deadline")
        result.retries += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _login(client, base, user, password, result, deadline, slots) -> dict:
    async with slots:  # argon2 costs ~0.3 s of CPU each: people do not all log in in the same second
        r = await _request(client, "POST", f"{base}/api/v1/login", deadline, result,
                           json={"username": user, "password": password}, timeout=60)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _annotator(client, base, user, headers, quota, result, deadline, rng):
    item = (await _request(client, "GET", f"{base}/api/v1/next", deadline, result, headers=headers)).json()["item"]
    done = 0
    while item is not None and done < quota:
        vote = {"assignment_id": item["assignment_id"], "idempotency_key": item["idempotency_key"],
                "choice": rng.choice(["a", "a", "b", "b", "tie", "both_bad"]),
                "strength": rng.choice(["slight", "clear", "decisive"])}
        start = time.perf_counter()
        before = result.retries
        r = await _request(client, "POST", f"{base}/api/v1/votes", deadline, result, json=vote, headers=headers)
        if r.status_code == 409:  # reservation lost (expired and refilled): ask for another item
            result.conflicts += 1
            item = (await _request(client, "GET", f"{base}/api/v1/next", deadline, result,
                                   headers=headers)).json()["item"]
            continue
        r.raise_for_status()
        body = r.json()
        if result.retries == before:
            result.latencies.append(time.perf_counter() - start)
        result.acked.append({"user": user, "key": vote["idempotency_key"], "vote_id": body["vote_id"],
                             "item": item["item_id"], "choice": vote["choice"]})
        done += 1
        item = body["next"]


async def _run(base, users, password, votes_total, timeout_s, seed):
    result = LoadResult()
    per_user = -(-votes_total // len(users))
    quotas = [min(per_user, votes_total - i * per_user) for i in range(len(users))]
    deadline = time.monotonic() + timeout_s
    limits = httpx.Limits(max_connections=len(users), max_keepalive_connections=len(users))
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=limits) as client:
        slots = asyncio.Semaphore(2)
        tokens = await asyncio.gather(*(_login(client, base, u, password, result, deadline, slots) for u in users))
        start = time.perf_counter()
        await asyncio.gather(*(_annotator(client, base, u, h, q, result, deadline, random.Random(seed + i))
                               for i, (u, h, q) in enumerate(zip(users, tokens, quotas)) if q > 0))
    result.wall_s = time.perf_counter() - start
    return result


def run_load(base: str, users: list[str], password: str, votes_total: int, timeout_s: float = 300,
             seed: int = 0) -> LoadResult:
    """`len(users)` concurrent annotators over HTTP casting `votes_total` votes between them."""
    return asyncio.run(_run(base, users, password, votes_total, timeout_s, seed))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def prepare_store(url: str, users: list[str], password_hash: str, prompts: int = 80, pairs: int = 9,
                  overlap: int = 3):
    """A store with pre-generated candidates (inserted directly: the bench measures the server, not a model)."""
    from collect.store import Candidate, Item, Store, User

    store = Store(url, overlap=overlap, create=True)
    store.set_meta(overlap=overlap, reservation_minutes=15, repeat_every=0, repeat_gap=5)
    store.add_prompts([{"prompt": [{"role": "user", "content": f"Question {i}: explain topic {i} briefly."}],
                        "category": "bench"} for i in range(prompts)])
    body = "A fairly typical answer of a small model, with some *markdown* and a list:\n\n- one\n- two\n\n" * 3
    now = time.time()
    with store.write() as s:  # one transaction: Store.add_item would fsync once per item
        for pid, _ in store.prompts():
            for k in range(pairs):
                c1 = Candidate(prompt_id=pid, text=f"{body}\n\nVersion one of {pid}.{k}", generator="bench",
                               sampling={}, created_at=now)
                c2 = Candidate(prompt_id=pid, text=f"Different wording.\n\n{body}\n\nVersion two of {pid}.{k}",
                               generator="bench", sampling={}, created_at=now)
                s.add_all([c1, c2])
                s.flush()
                s.add(Item(prompt_id=pid, first_id=c1.id, second_id=c2.id, kind="pair", status="ready",
                           similarity=0.5, created_at=now))
        for name in users:
            s.add(User(name=name, role="annotator", password_hash=password_hash, active=True, created_at=time.time()))
    return store


def _server(url, workdir):
    sys.path.insert(0, str(ROOT / "tests" / "collect"))
    from collect_support import Server

    return Server(url, Path(workdir)).start()


def browser_next_item_ms(base: str, user: str, password: str, samples: int = 15) -> list[float]:
    """Enter pressed → next prompt on screen, in ms, measured inside the page (performance.now)."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page()
        page.goto(base + "/login")
        page.fill("#username", user)
        page.fill("#password", password)
        page.click("#login")
        page.wait_for_selector("#ak-a .ak-answer", timeout=60_000)
        for _ in range(samples):
            before = page.inner_text("#ak-prompt")
            page.keyboard.press("1")
            page.wait_for_function("document.querySelector('#ak-choice input[value=a]').checked")
            ms = page.evaluate("""(before) => new Promise(resolve => {
                const t0 = performance.now();
                const el = document.querySelector('#ak-prompt');
                const obs = new MutationObserver(() => {
                  if (el.innerText !== before && el.innerText.trim()) { obs.disconnect(); resolve(performance.now() - t0); }
                });
                obs.observe(el, {subtree: true, childList: true, characterData: true});
                document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
            })""", before)
            out.append(ms)
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=int, default=1500, help="votes per concurrency level")
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    from collect.store import hash_password

    password = "bench-password-1"
    digest = hash_password(password)
    rows, browser_rows = [], []
    for level in (int(x) for x in args.levels.split(",")):
        tmp = tempfile.mkdtemp(prefix="collect-bench-")
        url = f"sqlite:///{tmp}/c.db"
        users = [f"a{i}" for i in range(level)] + ["browser"]
        prepare_store(url, users, digest)
        server = _server(url, tmp)
        try:
            votes = args.votes if level > 1 else min(args.votes, 300)
            measured: dict = {}
            browser = None
            if level == 50 and not args.no_browser:  # measured while the 50 annotators load the server
                browser = threading.Thread(target=lambda: measured.update(
                    ms=(time.sleep(3), browser_next_item_ms(server.base, "browser", password))[1]))
                browser.start()
            res = run_load(server.base, users[:level], password, votes, timeout_s=600)
            if browser is not None:
                browser.join()
            lat = [x * 1000 for x in res.latencies]
            rows.append((level, len(res.acked), percentile(lat, 50), percentile(lat, 99), max(lat),
                         len(res.acked) / res.wall_s, res.wall_s))
            print(f"{level:3d} annotators: {len(res.acked)} votes, p50 {rows[-1][2]:.1f} ms, p99 {rows[-1][3]:.1f} ms,"
                  f" {rows[-1][5]:.0f} votes/s", flush=True)
            if measured.get("ms"):
                browser_rows.append(("50 annotators loading the server", measured["ms"]))
        finally:
            server.stop()
    if not args.no_browser:
        tmp = tempfile.mkdtemp(prefix="collect-bench-")
        url = f"sqlite:///{tmp}/c.db"
        prepare_store(url, ["browser"], digest)
        server = _server(url, tmp)
        try:
            browser_rows.insert(0, ("idle server", browser_next_item_ms(server.base, "browser", password)))
        finally:
            server.stop()
    write_report(rows, browser_rows)


def write_report(rows, browser_rows) -> None:
    import os

    lines = [f"# collect load — {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
             f"Python {platform.python_version()}, SQLite WAL + synchronous=FULL, one uvicorn process, "
             "candidates pre-generated, annotators without think time.", "",
             "| annotators | votes | submit p50 ms | submit p99 ms | max ms | votes/s | wall s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.0f} | {r[6]:.1f} |" for r in rows]
    target = next((r for r in rows if r[0] == 50), None)
    if target:
        lines += ["", f"Target p99 < 300 ms at 50 annotators: **{'met' if target[3] < 300 else 'missed'}** "
                      f"({target[3]:.0f} ms)."]
    if browser_rows:
        lines += ["", "Next item on screen after Enter (headless Chromium, ms):", "",
                  "| condition | samples | p50 | p90 | max |", "|---|---:|---:|---:|---:|"]
        for name, ms in browser_rows:
            lines.append(f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {percentile(ms, 90):.0f} | "
                         f"{max(ms):.0f} |")
    out = ROOT / "bench" / "results" / "collect_load.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
