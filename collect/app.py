"""The Gradio annotation UI: one item at a time, A/B side by side, shortcuts, undo; an admin tab for admins.

Every handler reads the user from the session (`gr.Request.username`, set by the server's auth dependency)
and goes through the same Store calls as the JSON API (`collect.server`), so the browser and the API obey
one set of queue rules. Model text reaches the page only through `collect.render` (escaped markdown).

With `queue.show_judge` an item a judge voted on shows the judge's choice above the form as plain text; the
choice itself always starts empty (a suggestion to accept or override, never a preselected answer).
"""

from __future__ import annotations

import html
import json

import gradio as gr

from collect import render
from collect.agreement import summarize
from collect.store import Conflict, Shown, Store

CHOICES = [("A better  [1]", "a"), ("B better  [2]", "b"), ("Tie  [t]", "tie"), ("Both bad  [b]", "both_bad"),
           ("Skip  [s]", "skip")]
STRENGTHS = [("slight", "slight"), ("clear", "clear"), ("decisive", "decisive")]

# Shortcuts: 1 2 t b s pick a choice, Enter submits; typing in a text box is left alone (Ctrl+Enter submits).
HEAD = """
<script>
(() => {
  const keys = {"1": "a", "2": "b", "t": "tie", "b": "both_bad", "s": "skip"};
  document.addEventListener("keydown", (ev) => {
    const el = ev.target;
    const typing = el && (el.tagName === "TEXTAREA" || (el.tagName === "INPUT" && el.type !== "radio"));
    if (ev.key === "Enter" && (!typing || ev.ctrlKey || ev.metaKey) && !ev.shiftKey) {
      const btn = document.querySelector("#ak-submit");
      if (btn) { ev.preventDefault(); btn.click(); }
      return;
    }
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const value = keys[ev.key];
    if (!value) return;
    const input = document.querySelector(`#ak-choice input[type=radio][value="${value}"]`);
    if (input) { ev.preventDefault(); input.click(); }
  });
})();
</script>
"""

CSS = """
.ak-turn { margin-bottom: .6em; }
.ak-role { font-size: .75em; text-transform: uppercase; opacity: .6; }
.ak-answer { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: .6em .9em;
             min-height: 6em; overflow-wrap: anywhere; }
.ak-code { background: #f6f8fa; padding: .5em; border-radius: 6px; overflow-x: auto; }
.ak-suggestion { border-left: 3px solid var(--border-color-accent); padding: .3em .8em; opacity: .85; }
"""


def _answer(text: str, side: str) -> str:
    return f'<div class="ak-answer" data-side="{side}">{render.markdown(text)}</div>'


def _progress(store: Store, user: str) -> str:
    p = store.progress(user)
    return (f"**{html.escape(user)}** · {p['votes']} votes · {p['skipped']} skipped · "
            f"{p['items']} items, {store.overlap} votes each")


def _suggestion(shown: Shown | None) -> str:
    if shown is None or not shown.suggestion:
        return ""
    return (f'<p class="ak-suggestion" data-choice="{shown.suggestion["choice"]}">Suggestion: '
            f'{html.escape(shown.suggestion["text"])} (your choice decides)</p>')


def _show(store: Store, user: str, shown: Shown | None, status: str = ""):
    """Outputs for one item: state, prompt, A, B, the judge's suggestion, cleared form (no choice), progress, status."""
    if shown is None:
        return (None, "<p><em>Nothing left to label right now: thank you! New items may appear later.</em></p>",
                "", "", "", None, "clear", "", "", _progress(store, user), status)
    state = {"assignment_id": shown.assignment_id, "item_id": shown.item_id, "key": shown.idempotency_key}
    return (state, render.conversation(shown.prompt), _answer(shown.left, "a"), _answer(shown.right, "b"),
            _suggestion(shown), None, "clear", "", "", _progress(store, user), status)


def _admin_only(store: Store, request: gr.Request) -> str:
    user = request.username if request else None
    if store.role(user) != "admin":
        raise gr.Error("admins only")
    return user


def admin_tables(store: Store, request: gr.Request):
    """Summary markdown, per-annotator rows and annotator-pair rows; refuses anyone but an admin."""
    _admin_only(store, request)
    s = summarize(store.dump(), store.overlap)
    fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    md = (f"**Items** {s['items']} ready · {s['complete']} complete ({store.overlap} votes) · {s['flagged']} flagged "
          f"near-identical · **votes** {s['votes']}\n\n"
          f"**Agreement** Krippendorff's α {fmt(s['krippendorff_alpha'])} · Fleiss' κ {fmt(s['fleiss']['kappa'])} "
          f"(items with {store.overlap} votes: {s['fleiss']['items']}) · labels {json.dumps(s['label_counts'])}")
    people = [[u, a.get("votes", 0), a.get("skips", 0), round(a.get("median_s", 0), 1),
               fmt(a.get("left_rate")), fmt(a.get("accuracy")), fmt(a.get("consistency"))]
              for u, a in s["annotators"].items()]
    pairs = [[f"{p['pair'][0]} / {p['pair'][1]}", p["items"], round(p["agreement"], 3), fmt(p["kappa"])]
             for p in s["pairs"]]
    return md, people, pairs


def build(store: Store, guidelines: str, generator: str = "") -> gr.Blocks:
    """The Blocks app; mount it with collect.server.create_app (which supplies login and the JSON API)."""
    with gr.Blocks(title="alignkit collect") as demo:
        state = gr.State(None)
        with gr.Row():
            progress = gr.Markdown(elem_id="ak-progress")
            gr.HTML('<form method="post" action="/logout"><button type="submit" id="ak-logout">log out</button>'
                    '</form>', js_on_load=None)
        with gr.Tabs():
            with gr.Tab("Label", id="label"):
                with gr.Accordion("Guidelines", open=False):
                    gr.Markdown(guidelines, sanitize_html=True)
                prompt = gr.HTML(elem_id="ak-prompt", js_on_load=None)
                with gr.Row(equal_height=True):
                    with gr.Column():
                        gr.Markdown("### A")
                        left = gr.HTML(elem_id="ak-a", js_on_load=None)
                    with gr.Column():
                        gr.Markdown("### B")
                        right = gr.HTML(elem_id="ak-b", js_on_load=None)
                suggested = gr.HTML(elem_id="ak-suggestion", js_on_load=None)
                choice = gr.Radio(CHOICES, value=None, label="Which answer is better?", elem_id="ak-choice")
                strength = gr.Radio(STRENGTHS, value="clear", label="How much better?", elem_id="ak-strength")
                with gr.Accordion("Rationale and ideal answer (optional)", open=False):
                    rationale = gr.Textbox(label="Rationale", lines=2, elem_id="ak-rationale")
                    ideal = gr.Textbox(label="Edited ideal answer", lines=4, elem_id="ak-ideal")
                with gr.Row():
                    submit = gr.Button("Submit  [Enter]", variant="primary", elem_id="ak-submit")
                    undo = gr.Button("Undo last", elem_id="ak-undo")
                status = gr.Markdown(elem_id="ak-status")
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                summary = gr.Markdown(elem_id="ak-admin-summary")
                people = gr.Dataframe(headers=["annotator", "votes", "skips", "median s", "left rate",
                                               "gold acc.", "self-consist."], interactive=False)
                pairs = gr.Dataframe(headers=["pair", "items", "agreement", "Cohen κ"], interactive=False)
                refresh = gr.Button("Refresh")
                gr.HTML('<p>Export (TRL preference JSONL): <a id="ak-export" href="/api/v1/admin/export" '
                        'download="pairs.jsonl">download pairs.jsonl</a> · generator: '
                        f'{html.escape(generator)}</p>', js_on_load=None)

        shown_outputs = [state, prompt, left, right, suggested, choice, strength, rationale, ideal, progress, status]

        def on_load(request: gr.Request):
            user = request.username
            is_admin = store.role(user) == "admin"
            return (*_show(store, user, store.next_item(user)), gr.Tab(visible=is_admin))

        def on_submit(st, ch, stg, rat, ide, request: gr.Request):
            user = request.username
            if st is None:
                return _show(store, user, store.next_item(user))
            if not ch:
                gr.Warning("Pick a choice first (1, 2, t, b or s).")
                return (gr.skip(),) * (len(shown_outputs) - 1) + ("Pick a choice first.",)
            try:
                receipt = store.submit(user, st["assignment_id"], ch, st["key"], stg, rat or "", ide or "")
            except Conflict as e:
                return _show(store, user, store.next_item(user), f"Not recorded: {html.escape(str(e))}")
            note = "already recorded" if receipt.replay else "recorded"
            return _show(store, user, receipt.next, f"Vote {receipt.vote_id} {note} (item {st['item_id']}).")

        def on_undo(request: gr.Request):
            user = request.username
            try:
                shown = store.undo(user)
            except Conflict as e:
                return _show(store, user, store.next_item(user), f"Not undone: {html.escape(str(e))}")
            if shown is None:
                return _show(store, user, store.next_item(user), "Nothing to undo.")
            return _show(store, user, shown, f"Undone: item {shown.item_id} is back, label it again.")

        def on_admin(request: gr.Request):
            return admin_tables(store, request)

        demo.load(on_load, None, shown_outputs + [admin_tab], api_visibility="private")
        submit.click(on_submit, [state, choice, strength, rationale, ideal], shown_outputs,
                     concurrency_limit=None, api_visibility="private")
        undo.click(on_undo, None, shown_outputs, concurrency_limit=None, api_visibility="private")
        refresh.click(on_admin, None, [summary, people, pairs], api_visibility="private")
        admin_tab.select(on_admin, None, [summary, people, pairs], api_visibility="private")
    return demo
