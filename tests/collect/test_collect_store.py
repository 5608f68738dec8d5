"""The store and its queue, each test on SQLite and on a throwaway PostgreSQL 15 (marker `postgres`)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from collect_support import PASSWORD, make_store, seed
from sqlalchemy import func, select

from alignkit.errors import UserError
from collect.store import Assignment, Conflict, Store, User, Vote


def _votes(store, item=None, active=True):
    with store.read() as s:
        q = select(func.count()).select_from(Vote).where(Vote.active.is_(active))
        if item is not None:
            q = q.where(Vote.item_id == item)
        return s.scalar(q)


def test_passwords_are_argon2_hashes_and_sessions_work(store_url):
    store = make_store(store_url)
    store.add_user("ann", "annotator", PASSWORD)
    with store.read() as s:
        digest = s.scalar(select(User.password_hash).where(User.name == "ann"))
    assert digest.startswith("$argon2id$") and PASSWORD not in digest
    assert store.login("ann", "wrong-password") is None
    assert store.login("nobody", PASSWORD) is None
    token = store.login("ann", PASSWORD)
    assert store.session_user(token) == {"name": "ann", "role": "annotator"}
    assert store.session_user(token + "x") is None
    store.logout(token)
    assert store.session_user(token) is None
    actions = [a["action"] for a in store.audit_log()]
    assert actions.count("login_failed") == 2 and "login" in actions and "user_add" in actions
    with pytest.raises(UserError, match="8 characters"):
        store.add_user("bob", "annotator", "short")
    with pytest.raises(UserError, match="role"):
        store.add_user("bob", "boss", PASSWORD)


def test_each_item_gets_n_votes_and_no_annotator_sees_an_item_twice(store_url):
    store = make_store(store_url, overlap=2)
    items = seed(store, prompts=3, users=("u1", "u2", "u3"))
    seen = {u: [] for u in ("u1", "u2", "u3")}
    for user in ("u1", "u2", "u3"):
        shown = store.next_item(user)
        while shown is not None:
            assert store.next_item(user).assignment_id == shown.assignment_id  # reload shows the same item
            seen[user].append(shown.item_id)
            shown = store.submit(user, shown.assignment_id, "a", shown.idempotency_key, "clear").next
    for user, got in seen.items():
        assert len(got) == len(set(got)), user
    assert sorted(seen["u1"]) == items and sorted(seen["u2"]) == items and seen["u3"] == []
    assert all(_votes(store, i) == 2 for i in items)


def test_left_right_order_is_random_and_recorded(store_url):
    store = make_store(store_url, overlap=1)
    seed(store, prompts=24, users=("u1",))
    lefts, shown = [], store.next_item("u1")
    while shown is not None:
        with store.read() as s:
            left = s.get(Assignment, shown.assignment_id).left
        lefts.append(left)
        assert shown.left.startswith("answer one") == (left == "first")
        receipt = store.submit("u1", shown.assignment_id, "a", shown.idempotency_key)
        with store.read() as s:
            assert s.get(Vote, receipt.vote_id).label == left  # 'a' (left) maps back to the stored side
        shown = receipt.next
    assert len(lefts) == 24 and 0 < lefts.count("first") < 24  # P(all 24 the same) = 2**-23


def test_reservations_expire_and_the_item_returns(store_url):
    store = make_store(store_url, overlap=1, reservation_minutes=0.5 / 60)
    (item,) = seed(store, prompts=1, users=("u1", "u2"))
    first = store.next_item("u1")
    assert first.item_id == item and store.next_item("u2") is None  # reserved: no room for u2
    time.sleep(0.6)
    second = store.next_item("u2")
    assert second is not None and second.item_id == item
    with pytest.raises(Conflict, match="expired"):  # u1 is late and u2 holds the only place
        store.submit("u1", first.assignment_id, "a", first.idempotency_key)
    store.submit("u2", second.assignment_id, "b", second.idempotency_key)
    assert _votes(store, item) == 1


def test_late_submit_is_kept_when_the_item_still_has_room(store_url):
    store = make_store(store_url, overlap=2, reservation_minutes=0.3 / 60)
    (item,) = seed(store, prompts=1, users=("u1",))
    shown = store.next_item("u1")
    time.sleep(0.4)
    store.submit("u1", shown.assignment_id, "tie", shown.idempotency_key)
    assert _votes(store, item) == 1


def test_concurrent_annotators_never_overfill_an_item(store_url):
    """24 annotators race for 2 items needing 3 votes each: exactly 6 reservations, 3 per item."""
    store = make_store(store_url, overlap=3)
    items = seed(store, prompts=2, users=tuple(f"u{i}" for i in range(24)))
    # A second Store on the same database: separate locks and pools, like a second server process.
    other = Store(store_url, overlap=3)
    barrier = threading.Barrier(24)

    def grab(i):
        barrier.wait()
        st = store if i % 2 else other
        shown = st.next_item(f"u{i}")
        if shown:
            st.submit(f"u{i}", shown.assignment_id, "b", shown.idempotency_key, then_next=False)
        return shown.item_id if shown else None

    with ThreadPoolExecutor(24) as pool:
        got = list(pool.map(grab, range(24)))
    assert sorted(g for g in got if g) == sorted(items * 3)
    assert [_votes(store, i) for i in items] == [3, 3]


def test_idempotency_key_makes_one_vote_from_retries_and_double_clicks(store_url):
    store = make_store(store_url, overlap=3)
    (item, _) = seed(store, prompts=2, users=("u1", "u2"))
    shown = store.next_item("u1")
    first = store.submit("u1", shown.assignment_id, "a", shown.idempotency_key, "decisive")
    again = store.submit("u1", shown.assignment_id, "a", shown.idempotency_key, "decisive")
    assert not first.replay and again.replay and again.vote_id == first.vote_id
    assert again.next.assignment_id == first.next.assignment_id
    with pytest.raises(Conflict):  # the same assignment under a new key: already voted
        store.submit("u1", shown.assignment_id, "b", "another-key")
    with pytest.raises(Conflict):  # someone else's key is not a replay for them
        store.submit("u2", shown.assignment_id, "a", shown.idempotency_key)
    nxt = first.next
    barrier = threading.Barrier(8)

    def click(_):
        barrier.wait()
        return store.submit("u1", nxt.assignment_id, "b", nxt.idempotency_key, then_next=False).vote_id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(click, range(8)))
    assert len(ids) == 1 and _votes(store) == 2


def test_undo_takes_back_the_last_vote_and_returns_the_item(store_url):
    store = make_store(store_url, overlap=1)
    seed(store, prompts=3, users=("u1",))
    shown = store.next_item("u1")
    receipt = store.submit("u1", shown.assignment_id, "a", shown.idempotency_key)
    back = store.undo("u1")
    assert back.item_id == shown.item_id and _votes(store) == 0 and _votes(store, active=False) == 1
    assert store.undo("u1") is None  # only the last submission, once
    assert store.next_item("u1").item_id == shown.item_id  # the undone item comes before the one reserved after
    relabel = store.submit("u1", back.assignment_id, "b", back.idempotency_key)
    assert relabel.vote_id != receipt.vote_id and relabel.next.item_id == receipt.next.item_id
    assert store.progress("u1")["votes"] == 1
    assert [v["choice"] for v in store.dump()["votes"]] == ["b"]
    assert "undo" in [a["action"] for a in store.audit_log()]


def test_skip_gives_the_place_back(store_url):
    store = make_store(store_url, overlap=1)
    (item,) = seed(store, prompts=1, users=("u1", "u2"))
    shown = store.next_item("u1")
    assert store.submit("u1", shown.assignment_id, "skip", shown.idempotency_key).next is None
    assert store.next_item("u1") is None  # never again for u1
    other = store.next_item("u2")
    assert other.item_id == item
    assert store.progress("u1") == {"user": "u1", "votes": 0, "skipped": 1, "items": 1}


def test_blind_repeats_come_back_after_the_gap(store_url):
    store = make_store(store_url, overlap=1, repeat_every=3, repeat_gap=2)
    seed(store, prompts=6, users=("u1",))  # pairs 1 2 3 5 6 8; repeats 4 (of 3) and 7 (of 6)
    order, shown = [], store.next_item("u1")
    while shown is not None:
        order.append(shown.item_id)
        shown = store.submit("u1", shown.assignment_id, "a", shown.idempotency_key).next
    dump = store.dump()
    repeats = {i: it["repeat_of"] for i, it in dump["items"].items() if it["kind"] == "repeat"}
    assert repeats == {4: 3, 7: 6} and sorted(order) == sorted(dump["items"])
    assert order == [1, 2, 3, 5, 6, 4, 8, 7]
    for rep, orig in repeats.items():
        assert order.index(rep) - order.index(orig) > 2  # at least repeat_gap own votes in between


def test_unknown_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="collect init"):
        Store(f"sqlite:///{tmp_path}/none.db")
    with pytest.raises(UserError, match="expected sqlite"):
        Store("mysql://x")


def test_sqlite_runs_wal_and_synchronous_full_unless_asked(tmp_path):
    """journal_mode WAL; synchronous 2 = FULL (fsync per commit), 1 = NORMAL (opt-in via the URL)."""
    for query, level in (("", 2), ("?synchronous=normal", 1)):
        store = Store(f"sqlite:///{tmp_path}/s{level}.db{query}", create=True)
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level
    with pytest.raises(UserError, match="only \\?synchronous"):
        Store(f"sqlite:///{tmp_path}/x.db?cache=shared")



def _items_in_database_file(db, tmp_path) -> int:
    """Items present in the main database file alone (a copy without its -wal): what checkpoints put there."""
    import shutil
    import sqlite3

    copy = tmp_path / "main-file-only.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.DatabaseError:  # copied while the checkpoint was writing pages: look again
        return -1
    finally:
        conn.close()


@pytest.mark.parametrize("background", [False, True])
def test_server_store_checkpoints_the_wal_off_the_request_path(tmp_path, background):
    """The server's store turns SQLite's in-commit checkpoint off and folds the WAL in from its own thread;
    a plain store leaves a small WAL to SQLite (1000 pages), so there the database file does not have them yet."""
    db = tmp_path / "c.db"
    Store(f"sqlite:///{db}", create=True).close()
    store = Store(f"sqlite:///{db}", background_checkpoint=background)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (0 if background else 1000)
    seed(store, prompts=30, pairs=2)
    deadline = time.monotonic() + 3
    while _items_in_database_file(db, tmp_path) < 60 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _items_in_database_file(db, tmp_path) == (60 if background else 0)
    store.close()
    assert store._checkpointer is None or not store._checkpointer.is_alive()
