"""Production feedback: thumbs and side-by-side preferences stored in the collect store, replay-safe, and
exported as KTO rows and DPO pairs that the preference stages' loader accepts; the keys and stats CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HELLO = [{"role": "user", "content": "Name a colour."}]


def _feedback(live, body, key=None):
    headers = {"Authorization": f"Bearer {live.key}", **({"Idempotency-Key": key} if key else {})}
    return httpx.post(f"{live.url}/v1/feedback", json=body, headers=headers, timeout=30)


def test_thumbs_and_preferences_become_kto_and_dpo_data(live, tmp_path):
    from alignkit import data, feedback, pairs

    client = live.client()
    a = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=6)
    b = client.chat.completions.create(model=live.ids["dpo"], messages=HELLO, max_tokens=6)
    assert _feedback(live, {"response_id": a.id, "rating": "up", "comment": "nice"}, key="k1").json() == {
        "stored": True, "replay": False, "kind": "rating", "run": live.ids["sft"], "variant": None}
    assert _feedback(live, {"response_id": a.id, "rating": "up", "comment": "nice"}, key="k1").json()["replay"]
    assert _feedback(live, {"response_id": a.id, "rating": "down"}, key="k1").status_code == 409  # key reused
    assert _feedback(live, {"response_id": b.id, "rating": "down"}).status_code == 200
    assert _feedback(live, {"response_ids": [a.id, b.id], "preferred": b.id}).status_code == 200

    eng = feedback.engine(f"sqlite:///{tmp_path / 'collect.db'}")
    report = feedback.export(eng, tmp_path / "production")
    assert (report["kto_rows"], report["dpo_pairs"], report["prompts"]) == (2, 1, 1)
    kto = [pairs.parse_record(r) for r in data.read_records(report["files"]["kto"])]
    dpo = [pairs.parse_record(r) for r in data.read_records(report["files"]["dpo"])]
    assert sorted(t.label for t in kto) == [False, True]
    assert dpo[0].chosen[0]["content"] == b.choices[0].message.content
    assert dpo[0].rejected[0]["content"] == a.choices[0].message.content and dpo[0].prompt == HELLO
    metrics = httpx.get(f"{live.url}/metrics").text  # the replay is not counted twice
    assert f'alignkit_feedback_total{{rating="up",run="{live.ids["sft"]}",variant=""}} 1.0' in metrics
    prompt_row = json.loads(Path(report["files"]["prompts"]).read_text())
    assert prompt_row == {"prompt": HELLO, "category": "production"}  # the format `collect init --prompts` reads

    rows = {(r["run"]): r for r in feedback.stats(eng)}
    assert rows[live.ids["sft"]]["answers"] == 1 and rows[live.ids["sft"]]["thumbs_up_rate"] == 1.0
    assert rows[live.ids["dpo"]]["thumbs_up_rate"] == 0.0 and rows[live.ids["dpo"]]["sampled"] == 1


def test_bad_feedback_gets_a_clear_4xx_and_stores_nothing(live, tmp_path):
    from alignkit import feedback

    answer = live.client().chat.completions.create(model="demo", messages=HELLO, max_tokens=4)
    other = live.client().chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=4)
    cases = [({"response_id": "chatcmpl-nope", "rating": "up"}, 404, "no response with id 'chatcmpl-nope'"),
             ({"response_id": answer.id, "rating": "meh"}, 400, "'rating' must be 'up' or 'down'"),
             ({"response_ids": [answer.id], "preferred": answer.id}, 400, "two different response ids"),
             ({"response_ids": [answer.id, other.id], "preferred": "x"}, 400, "'preferred' must be one of"),
             ({"response_ids": [answer.id, other.id], "preferred": other.id}, 400, "same conversation"),
             ({"response_id": answer.id, "rating": "up", "comment": "x" * 5000}, 400, "over 4000 characters")]
    for body, status, says in cases:
        r = _feedback(live, body)
        assert r.status_code == status and says in r.json()["error"]["message"], (body, r.text)
    report = feedback.export(feedback.engine(f"sqlite:///{tmp_path / 'collect.db'}"), tmp_path / "out")
    assert (report["kto_rows"], report["dpo_pairs"]) == (0, 0)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "alignkit.cli", "serve", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, **kw)


def test_keys_cli_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    (tmp_path / "registry.json").write_text('{"runs": {}, "promoted": null, "history": []}')
    done = _cli("keys", "add", "alice", "--runs", str(tmp_path))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("ak-") and len(key) > 40 and key not in (tmp_path / "serve_keys.json").read_text()
    from serve.keys import KeyRing

    assert KeyRing(tmp_path).name_of(key) == "alice" and KeyRing(tmp_path).name_of(key + "x") is None
    listed = _cli("keys", "list", "--runs", str(tmp_path))
    assert "alice" in listed.stdout and key not in listed.stdout
    for args, says in ((("keys", "add", "bad name!", "--runs", str(tmp_path)), "expected 1-64 letters"),
                       (("keys", "add", "bob"), "--runs DIR is required"),
                       (("keys", "remove", "nobody", "--runs", str(tmp_path)), "no such key"),
                       (("--runs", str(tmp_path / "missing")), "no registry.json"),
                       (("--port", "70000", "--runs", str(tmp_path)), "--port"),
                       (("stats", "--store", "mysql://x"), "expected sqlite:///path or postgresql://")):
        bad = _cli(*args)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)


def test_stats_cli_reports_each_run(live, tmp_path):
    live.client().chat.completions.create(model="demo", messages=HELLO, max_tokens=4)
    done = _cli("stats", "--store", f"sqlite:///{tmp_path / 'collect.db'}")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith(live.ids["sft"]))
    assert line.split()[1] == "1"  # one answer (no variant column without A/B)


def test_collect_export_source_production_cli(live, tmp_path):
    answer = live.client().chat.completions.create(model="demo", messages=HELLO, max_tokens=4)
    assert _feedback(live, {"response_id": answer.id, "rating": "down"}).status_code == 200
    store = f"sqlite:///{tmp_path / 'collect.db'}"
    cmd = [sys.executable, "-m", "alignkit.cli", "collect", "export", "--source", "production", "--store", store]
    done = subprocess.run([*cmd, "--out", str(tmp_path / "prod")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "kto rows (thumbs): 1" in done.stdout and "dpo pairs (A/B preferences): 0" in done.stdout
    row = json.loads((tmp_path / "prod" / "kto.jsonl").read_text())
    assert row["label"] is False and row["metadata"]["run"] == live.ids["sft"]
    (tmp_path / "afile").write_text("x")
    for out, store_url, says in ((tmp_path / "afile", store, "--out is a folder"),
                                 (tmp_path / "p2", f"sqlite:///{tmp_path / 'none.db'}", "no such database")):
        bad = subprocess.run([*cmd[:-1], store_url, "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert not (tmp_path / "none.db").exists()
