"""The real labeling app in headless Chromium: log in, label ten items (mouse and keys), undo, XSS, roles."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collect"))
from collect_support import PASSWORD, Server, add_users, make_store, seed  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> **still markdown**'

SKIP_ENV = "ALIGNKIT_SKIP_BROWSER"
INSTALL = "sudo apt-get install chromium"  # `make setup` runs it itself when it is root with apt

# Never a silent skip: without Chromium these tests fail and name the install command; only the explicit
# opt-out variable skips them (the skip reason names it, and pytest's summary counts it).
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(bool(os.environ.get(SKIP_ENV)), reason=f"{SKIP_ENV} is set: browser tests skipped "
                                                                        "on request")]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `{INSTALL}` (or set {SKIP_ENV}=1 to skip the browser tests)",
                    pytrace=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp}/c.db"
    store = make_store(url, overlap=1)
    seed(store, prompts=14, users=("alice", "admin1"),
         text=lambda pid, k, side: (XSS if pid == 1 else f"Answer {'AB'[side]} to {pid}\n\n```python\nx = {pid}\n```"))
    server = Server(url, tmp).start()
    yield server, store
    server.stop()


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def login(page, base, user):
    page.goto(base + "/")
    assert page.url.endswith("/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#ak-a .ak-answer", timeout=30_000)


def wait_votes(page, n):
    page.wait_for_function(f"document.querySelector('#ak-progress').innerText.includes('· {n} votes')",
                           timeout=15_000)


def test_label_ten_items_with_mouse_and_keys_then_undo(app, browser):
    server, store = app
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, server.base, "alice")

    # item 1 carries an XSS payload on both sides: shown as text, nothing runs
    assert "<script>window.__xss = 1</script>" in page.inner_text("#ak-a")
    assert page.locator("#ak-a strong").inner_text() == "still markdown"
    assert page.locator("#ak-a img, #ak-b img, #ak-a script, #ak-b script").count() == 0
    assert page.evaluate("window.__xss") is None and dialogs == []

    plan = [("a", "slight"), ("b", "clear"), ("tie", None), ("both_bad", None), ("a", "decisive"),  # mouse
            ("b", None), ("a", None), ("tie", None), ("both_bad", None), ("b", None)]                 # keys
    keys = {"a": "1", "b": "2", "tie": "t", "both_bad": "b"}
    shown_items = []
    for n, (choice, strength) in enumerate(plan, start=1):
        shown_items.append(page.inner_text("#ak-prompt"))
        if n <= 5:
            page.click(f"#ak-choice input[value={choice}]")
            if strength:
                page.click(f"#ak-strength input[value={strength}]")
            page.click("#ak-submit")
        else:
            page.keyboard.press(keys[choice])
            page.keyboard.press("Enter")
        wait_votes(page, n)
        assert "recorded" in page.inner_text("#ak-status")
    assert len(set(shown_items)) == 10

    page.click("#ak-undo")
    wait_votes(page, 9)
    assert "is back" in page.inner_text("#ak-status") and page.inner_text("#ak-prompt") == shown_items[-1]
    assert page.evaluate("window.__xss") is None and dialogs == []

    votes = [v for v in store.dump()["votes"] if v["user"] == "alice"]
    assert [v["choice"] for v in votes] == [c for c, _ in plan[:9]]
    assert [v["strength"] for v in votes[:5]] == ["slight", "clear", None, None, "decisive"]
    for v in votes:  # the stored label is the shown choice mapped through the recorded left side
        if v["choice"] in ("a", "b"):
            assert v["label"] == (v["left"] if v["choice"] == "a" else {"first": "second", "second": "first"}[v["left"]])
    assert "undo" in [a["action"] for a in store.audit_log(500)]
    page.close()


def test_an_annotator_cannot_reach_admin_or_export(app, browser):
    server, _ = app
    page = browser.new_page()
    login(page, server.base, "alice")
    assert page.get_by_role("tab", name="Admin").count() == 0
    for path in ("/api/v1/admin/export", "/api/v1/admin/stats"):
        assert page.evaluate(f"fetch('{path}').then(r => r.status)") == 403
        assert page.goto(server.base + path).status == 403
    page.close()


def test_admin_sees_progress_agreement_and_export(app, browser):
    server, store = app
    store.add_user("carol", "annotator", PASSWORD)  # one vote of her own: the test does not rely on the others
    shown = store.next_item("carol")
    store.submit("carol", shown.assignment_id, "b", shown.idempotency_key, "clear", then_next=False)
    ctx = browser.new_context()
    page = ctx.new_page()
    login(page, server.base, "admin1")
    page.get_by_role("tab", name="Admin").click()
    page.wait_for_function("document.querySelector('#ak-admin-summary').innerText.includes('Agreement')",
                           timeout=15_000)
    assert "carol" in page.inner_text("body")
    body = page.evaluate("fetch(document.querySelector('#ak-export').href).then(r => r.text())")
    assert body.count('"chosen"') >= 1
    ctx.close()


def test_log_out_button_ends_the_session(app, browser):
    """The page's log-out is a same-origin POST form (a GET /logout changes nothing): the CSRF check lets it
    through and the session is over afterwards."""
    server, _ = app
    ctx = browser.new_context()
    page = ctx.new_page()
    login(page, server.base, "alice")
    page.click("#ak-logout")
    page.wait_for_url("**/login", timeout=15_000)
    assert page.evaluate("fetch('/api/v1/progress').then(r => r.status)") == 401
    assert page.goto(server.base + "/ui/").url.endswith("/login")
    ctx.close()


def test_a_missing_chromium_fails_and_names_the_install_command(monkeypatch):
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        require_chromium()


@pytest.fixture(scope="module")
def judged_app(tmp_path_factory):
    """A store whose project shows the judge (queue.show_judge, remembered in the store), N = 2: the rules
    judge has voted on two items (both for `second`) and was unsure on a third (both answers answer)."""
    from collect.judge import run_judge

    tmp = tmp_path_factory.mktemp("judged")
    url = f"sqlite:///{tmp}/c.db"
    store = make_store(url, overlap=2)
    store.set_meta(overlap=2, reservation_minutes=15, repeat_every=0, repeat_gap=5, show_judge=True)
    refusal, answer = "I can't help with that. It could hurt people.", "Roast them at 200 C for 40 minutes."
    store.add_prompts([{"prompt": [{"role": "user", "content": "How do I roast carrots?"}], "category": "general"},
                       {"prompt": [{"role": "user", "content": "How do I roast beets?"}], "category": "general"},
                       {"prompt": [{"role": "user", "content": "How do I roast leeks?"}], "category": "general"}])
    texts = {1: (refusal, answer), 2: (answer, "Bake them for 40 minutes at 200 C."), 3: (refusal, answer + " Salt.")}
    for pid, _ in store.prompts():
        store.add_item(pid, (texts[pid][0], "policy", {}), (texts[pid][1], "policy", {}))
    run_judge(store, "judge-rules", "rules", "smollm2-135m-instruct")
    add_users(store, ("alice",))
    server = Server(url, tmp).start()
    yield server, store
    server.stop()


def test_the_judges_suggestion_is_text_the_choice_stays_empty_accept_or_override(judged_app, browser):
    server, store = judged_app
    page = browser.new_page()
    login(page, server.base, "alice")
    checked = "document.querySelectorAll('#ak-choice input[type=radio]:checked').length"
    # first the item the judge was unsure on: no suggestion to show
    assert "roast beets" in page.inner_text("#ak-prompt") and page.inner_text("#ak-suggestion").strip() == ""
    page.click("#ak-choice input[value=a]")
    page.click("#ak-submit")
    wait_votes(page, 1)
    for n, follow in ((2, True), (3, False)):  # accept the suggestion, then override it
        page.wait_for_selector("#ak-suggestion .ak-suggestion", timeout=15_000)
        note = page.inner_text("#ak-suggestion")
        suggested = page.get_attribute("#ak-suggestion .ak-suggestion", "data-choice")
        assert "Judge judge-rules (rules): prefers " + suggested.upper() in note and "refuses" in note
        assert page.evaluate(checked) == 0  # never preselected
        pick = suggested if follow else {"a": "b", "b": "a"}[suggested]
        page.click(f"#ak-choice input[value={pick}]")
        page.click("#ak-submit")
        wait_votes(page, n)
        assert page.evaluate(checked) == 0
    votes = [v for v in store.dump()["votes"] if v["user"] == "alice"]
    assert [v["item"] for v in votes] == [2, 1, 3] and [v["suggested"] for v in votes] == [None, "second", "second"]
    # the annotator's choice is what is stored: the accepted one is the judge's label, the overridden one not
    assert votes[1]["label"] == "second" and votes[2]["label"] == "first"
    page.close()
