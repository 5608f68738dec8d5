"""`collect` commands in-process: each user error is one line and exit code 2."""

from __future__ import annotations

import json

import pytest
from collect_support import add_users, make_store, seed

from collect.cli import main, read_prompts


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_init_is_idempotent_and_takes_gold_items(tmp_path, capsys, in_tmp):
    url = f"sqlite:///{tmp_path}/db/c.db"
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "Capital of France?", "chosen": "Paris.",
                                "rejected": [{"role": "assistant", "content": "Berlin."}]}) + "\n")
    # the bundled prompts file grows; count its distinct prompts instead of pinning a number
    n = len({json.dumps(r["prompt"], sort_keys=True) for r in read_prompts("recipes/data/prompts.jsonl")})
    code, out, _ = run(["init", "--store", url, "--prompts", "recipes/data/prompts.jsonl", "--gold", str(gold),
                        "--config", "recipes/smollm2/collect.yaml", "queue.overlap=2"], capsys)
    assert code == 0 and f"prompts added: {n}" in out and "gold items added: 1" in out and "2 votes per item" in out
    code, out, _ = run(["init", "--store", url, "--prompts", "recipes/data/prompts.jsonl"], capsys)
    assert code == 0 and f"prompts added: 0 (total {n + 1})" in out
    code, out, _ = run(["stats", "--store", url, "--json"], capsys)
    stats = json.loads(out)
    assert code == 0 and stats["items"] == 1 and stats["votes"] == 0


def test_users_add_reads_stdin_or_env(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path}/c.db"
    make_store(url)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("a-long-password\n"))
    assert run(["users", "add", "alice", "--store", url, "--password-stdin"], capsys)[0] == 0
    monkeypatch.setenv("ALIGNKIT_COLLECT_PASSWORD", "another-password")
    assert run(["users", "add", "root", "--role", "admin", "--store", url], capsys)[0] == 0
    code, out, _ = run(["users", "list", "--store", url], capsys)
    assert "alice" in out and "admin" in out
    from collect.store import Store

    assert Store(url).check_password("alice", "a-long-password") == {"name": "alice", "role": "annotator"}
    monkeypatch.setenv("ALIGNKIT_COLLECT_PASSWORD", "short")
    code, _, err = run(["users", "add", "bob", "--store", url], capsys)
    assert code == 2 and err.strip() == "error: password: at least 8 characters"


@pytest.mark.parametrize("argv, message", [
    (["stats", "--store", "sqlite:///{tmp}/missing.db"], "run `alignkit collect init` first"),
    (["stats", "--store", "redis://x"], "expected sqlite:///path or postgresql://"),
    (["init", "--store", "sqlite:///{tmp}/c.db", "--prompts", "{tmp}/bad.jsonl"], "bad.jsonl:2: 'prompt' must be"),
    (["init", "--store", "sqlite:///{tmp}/c.db", "--prompts", "{tmp}/nope.jsonl"], "nope.jsonl"),
    (["stats", "--store", "sqlite:///{tmp}/c.db", "queue.overlap=2"], "overrides need --config"),
    (["export", "--store", "sqlite:///{tmp}/c2.db", "--out", "{tmp}/p.jsonl", "--min-agreement", "2"],
     "--min-agreement"),
])
def test_user_errors_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    make_store(f"sqlite:///{tmp_path}/c2.db")
    code, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_prompts_must_end_with_the_user(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
                    + "\n")
    with pytest.raises(Exception, match="last message must be the user's"):
        read_prompts(str(path))


def test_export_and_stats_commands(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/c.db"
    store = make_store(url, overlap=2)
    seed(store, prompts=3)
    add_users(store, ["u1", "u2"])
    store.set_meta(overlap=2, reservation_minutes=15, repeat_every=0, repeat_gap=5)
    for user, choices in (("u1", ["a", "b", "tie"]), ("u2", ["a", "a", "tie"])):
        shown = store.next_item(user)
        for c in choices:
            shown = store.submit(user, shown.assignment_id, c, shown.idempotency_key, "clear").next
    code, out, _ = run(["stats", "--store", url], capsys)
    assert code == 0 and "3 with 2 votes" in out and "u1 / u2" in out
    code, out, _ = run(["export", "--store", url, "--out", str(tmp_path / "pairs.jsonl"), "--min-votes", "2"],
                       capsys)
    assert code == 0 and "dropped:" in out
    rows = (tmp_path / "pairs.jsonl").read_text().splitlines()
    report = json.loads((tmp_path / "pairs.report.json").read_text())
    assert report["pairs"] == len(rows) and report["dropped"].get("tie") == 1
    assert "export" in [a["action"] for a in store.audit_log()]
