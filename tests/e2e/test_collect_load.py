"""Load with a crash: 50 annotators over HTTP cast 2,000 votes; the server is killed (-9) and restarted midway.

Afterwards every acknowledged vote is in the store, no vote is duplicated, no item has more than N votes,
and no annotator voted on one item twice. Bounded: 50 clients on 127.0.0.1, 240 s deadline.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collect"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from collect_load import make_sessions, prepare_store, run_load  # noqa: E402
from collect_support import PASSWORD, Server  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from collect.store import Assignment, Store, Vote, hash_password  # noqa: E402

ANNOTATORS, VOTES, N = 50, 2000, 3


def test_acknowledged_votes_survive_kill_9(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    users = [f"a{i:02d}" for i in range(ANNOTATORS)]
    prepare_store(url, users, hash_password(PASSWORD), prompts=80, pairs=9, overlap=N)  # 720 items × 3
    tokens = make_sessions(url, users)  # logins are tested elsewhere; 50 argon2 checks would cost ~15 s here
    server = Server(url, tmp_path).start()
    box: dict = {}
    load = threading.Thread(target=lambda: box.update(res=run_load(server.base, users, tokens, VOTES,
                                                                   timeout_s=240)))
    try:
        load.start()
        store = Store(url, overlap=N)
        while store_votes(store) < VOTES // 2:  # kill in the middle, while clients are mid-request
            assert load.is_alive(), "load ended early"
            time.sleep(0.05)
        server.kill9()
        killed_at = store_votes(store)
        server.start()
        load.join(timeout=260)
        assert not load.is_alive(), "load did not finish in time"
    finally:
        server.stop()
    res = box["res"]
    assert res.retries > 0 and VOTES // 2 <= killed_at < VOTES  # the kill did interrupt the load

    assert len(res.acked) == VOTES
    assert len({a["key"] for a in res.acked}) == VOTES and len({a["vote_id"] for a in res.acked}) == VOTES
    with store.read() as s:
        stored = {v.idempotency_key: v for v in s.scalars(select(Vote))}
        per_item = Counter(s.scalars(select(Vote.item_id).where(Vote.active.is_(True), Vote.label.is_not(None))))
        per_assignment = Counter(s.scalars(select(Vote.assignment_id)))
        seen = s.execute(select(Assignment.item_id, Assignment.user_id, func.count()).group_by(
            Assignment.item_id, Assignment.user_id)).all()
    lost = sum(a["key"] not in stored for a in res.acked)
    print(f"\nkill -9 load: {len(res.acked)} acknowledged, {len(stored)} stored, {lost} lost, "
          f"{sum(n - 1 for n in per_assignment.values())} duplicated votes, max {max(per_item.values())} votes per "
          f"item (N={N}), {res.retries} retries, "
          f"killed at {killed_at} votes")
    for a in res.acked:  # every acknowledged vote is stored, as acknowledged
        v = stored[a["key"]]
        assert v.id == a["vote_id"] and v.item_id == a["item"] and v.choice == a["choice"] and v.active
    assert len(stored) == VOTES  # nothing stored that was not acknowledged (retries were replays)
    assert max(per_item.values()) <= N and max(per_assignment.values()) == 1
    assert all(n == 1 for *_, n in seen)


def store_votes(store) -> int:
    with store.read() as s:
        return s.scalar(select(func.count()).select_from(Vote))
