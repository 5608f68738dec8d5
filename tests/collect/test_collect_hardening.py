"""Store-level fixes of issue 14 (queue, undo, idempotency, sessions, gold, bad values), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from collect_support import PASSWORD, make_store, seed
from sqlalchemy import func, select

from alignkit.errors import UserError
from collect.store import Assignment, Conflict, Item, Store, Vote


def _votes(store, item=None):
    with store.read() as s:
        q = select(func.count()).select_from(Vote).where(Vote.active.is_(True), Vote.label.is_not(None))
        return s.scalar(q.where(Vote.item_id == item) if item is not None else q)


def _used(store, item):
    """Places held on an item: votes plus live reservations (what N bounds)."""
    import time

    with store.read() as s:
        return s.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.item_id == item,
            (Assignment.state == "voted") | ((Assignment.state == "open") & (Assignment.expires_at > time.time()))))


def test_undo_of_a_skip_never_pushes_an_item_over_n(store_url):
    """Issue 14 item 1. N=1: P skips X; Q votes X; P's undo must not reopen X (it would be a 2nd place)."""
    store = make_store(store_url, overlap=1)
    (x,) = seed(store, prompts=1, users=("p", "q"))
    shown = store.next_item("p")
    store.submit("p", shown.assignment_id, "skip", shown.idempotency_key, then_next=False)
    q = store.next_item("q")
    assert q.item_id == x
    store.submit("q", q.assignment_id, "a", q.idempotency_key, then_next=False)
    with pytest.raises(Conflict, match="filled by others"):
        store.undo("p")
    assert store.next_item("p") is None
    assert _votes(store, x) == 1 and _used(store, x) == 1
    # the skip stays recorded (not undone), so a second try is refused the same way
    with pytest.raises(Conflict):
        store.undo("p")


def test_undo_of_a_skip_reopens_the_item_when_it_has_room(store_url):
    store = make_store(store_url, overlap=2)
    (x,) = seed(store, prompts=1, users=("p", "q"))
    shown = store.next_item("p")
    store.submit("p", shown.assignment_id, "skip", shown.idempotency_key, then_next=False)
    q = store.next_item("q")
    store.submit("q", q.assignment_id, "b", q.idempotency_key, then_next=False)
    again = store.undo("p")
    assert again.item_id == x
    store.submit("p", again.assignment_id, "a", again.idempotency_key + "-2", then_next=False)
    assert _votes(store, x) == 2


def test_parallel_undo_and_votes_keep_every_item_within_n(store_url):
    """Skippers undo while others vote on the same items, all at once: never more than N places per item."""
    store = make_store(store_url, overlap=1)
    items = seed(store, prompts=6, users=tuple(f"s{i}" for i in range(6)) + tuple(f"v{i}" for i in range(6)))
    for i in range(6):  # each skipper skips one item
        shown = store.next_item(f"s{i}")
        while shown.item_id != items[i]:
            store.submit(f"s{i}", shown.assignment_id, "skip", shown.idempotency_key, then_next=False)
            shown = store.next_item(f"s{i}")
        store.submit(f"s{i}", shown.assignment_id, "skip", shown.idempotency_key, then_next=False)
    barrier = threading.Barrier(12)

    def act(i):
        barrier.wait()
        name = f"s{i}" if i < 6 else f"v{i - 6}"
        try:
            shown = store.undo(name) if i < 6 else store.next_item(name)
        except Conflict:
            return
        if shown is not None:
            store.submit(name, shown.assignment_id, "a", f"{name}-{shown.assignment_id}-x", then_next=False)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(act, range(12)))
    assert all(_used(store, i) <= 1 and _votes(store, i) <= 1 for i in items)


def test_an_idempotency_key_replays_only_its_own_reservation(store_url):
    """Issue 14 item 6: reservation 2 submitted with reservation 1's key is refused, not a silent "replay"."""
    store = make_store(store_url, overlap=1)
    seed(store, prompts=3, users=("u",))
    first = store.next_item("u")
    r1 = store.submit("u", first.assignment_id, "a", first.idempotency_key)
    second = r1.next
    with pytest.raises(Conflict, match="another reservation"):
        store.submit("u", second.assignment_id, "b", first.idempotency_key)
    with store.read() as s:
        assert s.get(Assignment, second.assignment_id).state == "open"  # still waiting for its real vote
    assert store.submit("u", first.assignment_id, "a", first.idempotency_key).replay  # a true retry still replays
    r2 = store.submit("u", second.assignment_id, "b", second.idempotency_key, then_next=False)
    assert not r2.replay and _votes(store) == 2


def test_password_or_role_change_ends_every_session(store_url):
    """Issue 14 item 5 (store side): `users add alice` again (new password or role) revokes her tokens."""
    store = make_store(store_url)
    store.add_user("alice", "annotator", PASSWORD)
    t1, t2 = store.login("alice", PASSWORD), store.login("alice", PASSWORD)
    assert store.session_user(t1) and store.session_user(t2)
    store.add_user("alice", "annotator", "a-new-password-1")
    assert store.session_user(t1) is None and store.session_user(t2) is None
    t3 = store.login("alice", "a-new-password-1")
    store.add_user("alice", "admin", "a-new-password-1")  # role change
    assert store.session_user(t3) is None
    assert store.logout(store.login("alice", "a-new-password-1")) is True and store.logout("gone") is False


@pytest.mark.parametrize("name", ["ｒｏｏｔ", "röot", "root\u200b", "a" * 65, "", "al ice", "x\ud800"])
def test_user_names_are_plain_ascii(tmp_path, name):
    store = make_store(f"sqlite:///{tmp_path}/c.db")
    with pytest.raises(UserError, match="ASCII"):
        store.add_user(name, "annotator", PASSWORD)
    assert store.users() == []


def _gold(chosen="Paris.", prompt="Capital of France?"):
    return {"prompt": [{"role": "user", "content": prompt}], "category": None, "chosen": chosen,
            "rejected": "Berlin."}


def test_gold_items_are_stored_once_and_all_or_nothing(store_url):
    """Issue 14 item 8 (store side): re-loading the same gold adds nothing; a failed load stores nothing."""
    store = make_store(store_url)
    assert store.load(gold=[_gold(), _gold(prompt="2+2?", chosen="4")]) == {"prompts": 0, "gold": 2}
    assert store.load(gold=[_gold(), _gold(prompt="2+2?", chosen="4")]) == {"prompts": 0, "gold": 0}
    assert store.load(gold=[_gold(chosen="Paris, France.")])["gold"] == 1  # a different answer is a new item
    before = store.item_count(), len(store.prompts())
    with pytest.raises(Exception):  # the 2nd record breaks inside the transaction: the 1st must not stay
        store.load(prompts=[{"prompt": [{"role": "user", "content": "new one"}]}],
                   gold=[_gold(prompt="new gold"), {"prompt": [{"role": "user", "content": "x"}]}])
    assert (store.item_count(), len(store.prompts())) == before


@pytest.mark.parametrize("assignment_id", [2**63, 2**31, -1, 0, "1", 1.5])
def test_out_of_range_reservation_ids_are_refused(tmp_path, assignment_id):
    """Issue 14 item 10 (store side): no OverflowError from a 64-bit-plus id; PostgreSQL ids are 32-bit."""
    store = make_store(f"sqlite:///{tmp_path}/c.db")
    seed(store, prompts=1, users=("u",))
    with pytest.raises(Conflict, match="no such reservation"):
        store.submit("u", assignment_id, "a", "k-1")


@pytest.mark.parametrize("field", ["rationale", "ideal", "idempotency_key"])
def test_lone_surrogates_are_refused_not_stored(tmp_path, field):
    store = make_store(f"sqlite:///{tmp_path}/c.db")
    seed(store, prompts=1, users=("u",))
    shown = store.next_item("u")
    kw = {"rationale": "", "ideal": "", "idempotency_key": shown.idempotency_key, field: "bad \ud800 text"}
    with pytest.raises(Conflict):
        store.submit("u", shown.assignment_id, "a", kw.pop("idempotency_key"), **kw)
    assert _votes(store) == 0
    assert store.login("u\ud800", PASSWORD) is None and store.login("u", "pass\ud800word") is None


def test_an_in_memory_or_missing_sqlite_store_is_a_user_error(tmp_path):
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///"):
        with pytest.raises(UserError, match="in-memory|sqlite:///path"):
            Store(url, create=True)
    with pytest.raises(UserError, match="no store at"):
        Store(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()  # no empty database file left behind
    (tmp_path / "notes.txt").write_text("just some text, not a database\n" * 200)
    with pytest.raises(UserError, match="not an alignkit collect store"):
        Store(f"sqlite:///{tmp_path}/notes.txt")
    with pytest.raises(UserError, match="unknown option"):
        Store(f"sqlite:///{tmp_path}/c.db?mode=ro&cache", create=True)


def test_stored_queue_settings_survive_commands_without_a_recipe(tmp_path):
    """Issue 14 item 7 (store side): open_store without a recipe reads N, never writes the default over it."""
    from collect.store import open_store

    url = f"sqlite:///{tmp_path}/c.db"
    make_store(url).set_meta(overlap=1, reservation_minutes=7, repeat_every=0, repeat_gap=5)
    store = open_store(url, None, remember=True)
    assert store.overlap == 1 and store.reservation_s == 7 * 60
    assert open_store(url).meta("overlap") == 1
    assert json.loads(json.dumps(store.meta("reservation_minutes"))) == 7
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == 0
