"""Reading everything back (mixed into `collect.store.Store`): the dump that statistics and export work from,
and the audit log.
"""

from __future__ import annotations

from sqlalchemy import select

from collect.models import Assignment, Audit, Candidate, Item, Prompt, User, Vote


class ReportsMixin:
    """Whole-store reads (needs Store's `read()`)."""

    def dump(self) -> dict:
        """Every item, candidate, prompt, user and active vote, for statistics and export.

        Each vote carries its reservation's `left` (which stored answer was shown as A) and `suggested` (the
        judge's label shown with the item as a suggestion, None when none was visible).
        """
        with self.read() as s:
            users = {u.id: u.name for u in s.scalars(select(User))}
            roles = {u.name: u.role for u in s.scalars(select(User))}
            prompts = {p.id: {"messages": p.messages, "category": p.category} for p in s.scalars(select(Prompt))}
            cands = {c.id: {"text": c.text, "generator": c.generator, "sampling": c.sampling}
                     for c in s.scalars(select(Candidate))}
            items = {i.id: {"prompt_id": i.prompt_id, "first": i.first_id, "second": i.second_id, "kind": i.kind,
                            "repeat_of": i.repeat_of, "gold": i.gold, "status": i.status,
                            "judge_unsure": i.judge_unsure}
                     for i in s.scalars(select(Item))}
            shown = {a.id: (a.left, a.suggested) for a in s.scalars(select(Assignment))}
            votes = [{"id": v.id, "item": v.item_id, "user": users[v.user_id], "choice": v.choice, "label": v.label,
                      "strength": v.strength, "rationale": v.rationale, "ideal": v.ideal, "seconds": v.seconds,
                      "left": shown[v.assignment_id][0], "suggested": shown[v.assignment_id][1], "at": v.created_at}
                     for v in s.scalars(select(Vote).where(Vote.active.is_(True)).order_by(Vote.id))]
        return {"users": users, "roles": roles, "prompts": prompts, "candidates": cands, "items": items,
                "votes": votes}

    def audit_log(self, limit: int = 100) -> list[dict]:
        with self.read() as s:
            rows = s.scalars(select(Audit).order_by(Audit.id.desc()).limit(limit))
            return [{"at": r.at, "user": r.user, "action": r.action, "detail": r.detail} for r in rows]
