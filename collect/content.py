"""What the queue hands out (mixed into `collect.store.Store`): prompts, gold items, generated candidate pairs
and their blind repeats, and the store's remembered settings.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from collect.auth import sha
from collect.models import Assignment, Candidate, Item, Meta, Prompt
from collect.queue import used


def prompt_key(messages: list) -> str:
    return sha(json.dumps(messages, sort_keys=True, ensure_ascii=False))


def put_meta(s: Session, values: dict[str, Any]) -> None:
    """Insert or replace settings (JSON values) inside an open write transaction."""
    for k, v in values.items():
        row = s.get(Meta, k)
        if row is None:
            s.add(Meta(key=k, value=json.dumps(v)))
        else:
            row.value = json.dumps(v)


class ContentMixin:
    """Prompts, items and settings (needs Store's `read()`, `write()`, `audit()`, `overlap`, `repeat_every`)."""

    def set_meta(self, **values: Any) -> None:
        with self.write() as s:
            put_meta(s, values)

    def meta(self, key: str, default: Any = None) -> Any:
        with self.read() as s:
            row = s.get(Meta, key)
            return json.loads(row.value) if row else default

    def add_prompts(self, records: list[dict]) -> int:
        """Insert prompts ({'prompt': [messages], 'category': …}); ones already stored are skipped."""
        return self.load(records)["prompts"]

    def load(self, prompts: list[dict] = (), gold: list[dict] = (), settings: dict | None = None) -> dict:
        """`collect init` in one transaction: queue settings, new prompts, new gold items; all or nothing.

        Gold records are {'prompt': [messages], 'category', 'chosen': str, 'rejected': str}; one with the same
        prompt, chosen and rejected text as a stored gold item is skipped, so re-running a file adds nothing.
        """
        with self.write() as s:
            put_meta(s, settings or {})
            ids = {key: pid for pid, key in s.execute(select(Prompt.id, Prompt.key))}
            added = {"prompts": 0, "gold": 0}
            for n, rec in enumerate([*prompts, *gold]):
                key = prompt_key(rec["prompt"])
                if key not in ids:
                    p = Prompt(key=key, messages=rec["prompt"], category=rec.get("category"))
                    s.add(p)
                    s.flush()
                    ids[key] = p.id
                    added["prompts"] += n < len(prompts)  # a gold item's own prompt is not counted as one
            if gold:
                added["gold"] = self._add_gold(s, gold, ids)
            self.audit(s, "cli", "prompts_add", added=added["prompts"], gold=added["gold"])
        return added

    def _add_gold(self, s: Session, gold: list[dict], ids: dict[str, int]) -> int:
        first, second = aliased(Candidate), aliased(Candidate)
        known = set(s.execute(select(Item.prompt_id, first.text, second.text)
                              .join(first, first.id == Item.first_id).join(second, second.id == Item.second_id)
                              .where(Item.kind == "gold")).all())
        now, added = time.time(), 0
        for rec in gold:
            pid = ids[prompt_key(rec["prompt"])]
            if (pid, rec["chosen"], rec["rejected"]) in known:
                continue
            known.add((pid, rec["chosen"], rec["rejected"]))
            c1, c2 = self._candidates(s, pid, [(rec["chosen"], "gold", {}), (rec["rejected"], "gold", {})], now)
            s.add(Item(prompt_id=pid, first_id=c1.id, second_id=c2.id, kind="gold", gold="first",
                       status="ready", similarity=0.0, created_at=now))
            added += 1
        return added

    @staticmethod
    def _candidates(s: Session, prompt_id: int, sides, now: float) -> list[Candidate]:
        """Two stored candidates, (text, generator, sampling) each, with their ids."""
        rows = [Candidate(prompt_id=prompt_id, text=t, generator=g, sampling=smp, created_at=now)
                for t, g, smp in sides]
        s.add_all(rows)
        s.flush()
        return rows

    def prompts(self) -> list[tuple[int, list]]:
        with self.read() as s:
            return [(p.id, p.messages) for p in s.scalars(select(Prompt).order_by(Prompt.id))]

    def add_item(self, prompt_id: int, first: tuple[str, str, dict], second: tuple[str, str, dict],
                 similarity: float = 0.0, flagged: bool = False, kind: str = "pair", gold: str | None = None) -> int:
        """Store two candidates (text, generator, sampling) and the item pairing them; maybe a blind repeat."""
        now = time.time()
        with self.write() as s:
            c1, c2 = self._candidates(s, prompt_id, [first, second], now)
            item = Item(prompt_id=prompt_id, first_id=c1.id, second_id=c2.id, kind=kind, gold=gold,
                        status="flagged" if flagged else "ready", similarity=similarity, created_at=now)
            s.add(item)
            s.flush()
            if not flagged and kind == "pair" and self.repeat_every and item.id % self.repeat_every == 0:
                s.add(Item(prompt_id=prompt_id, first_id=c1.id, second_id=c2.id, kind="repeat", repeat_of=item.id,
                           status="ready", similarity=similarity, created_at=now))
            if flagged:
                self.audit(s, "worker", "pair_flagged", item=item.id, similarity=round(similarity, 4))
            return item.id

    def ready_counts(self) -> dict[int, int]:
        """prompt id → number of shown-able generated items."""
        with self.read() as s:
            rows = s.execute(select(Item.prompt_id, func.count()).where(Item.status == "ready", Item.kind == "pair")
                             .group_by(Item.prompt_id))
            return {p: n for p, n in rows}

    def item_tally(self) -> dict[str, int]:
        """Items by what they are: ready pairs (`pair`), blind repeats (`repeat`), near-duplicates (`flagged`)."""
        tally = {"pair": 0, "repeat": 0, "flagged": 0}
        with self.read() as s:
            rows = s.execute(select(Item.kind, Item.status, func.count()).group_by(Item.kind, Item.status))
            for kind, status, n in rows:
                key = "flagged" if status == "flagged" else kind
                if key in tally:
                    tally[key] += n
        return tally

    def item_count(self) -> int:
        with self.read() as s:
            return s.scalar(select(func.count()).select_from(Item)) or 0

    def open_items(self) -> int:
        """Items that still need votes: what the worker keeps ahead of the annotators."""
        now = time.time()
        with self.read() as s:
            places = used(now).where(Assignment.item_id == Item.id).scalar_subquery()
            return s.scalar(select(func.count()).select_from(Item)
                            .where(Item.status == "ready", Item.kind != "repeat", places < self.overlap)) or 0

    def item_category(self, item_id: int) -> str | None:
        """The category of an item's prompt (the rules judge reads it)."""
        with self.read() as s:
            return s.scalar(select(Prompt.category).join(Item, Item.prompt_id == Prompt.id).where(Item.id == item_id))
