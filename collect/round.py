"""One collect round without a server: the policy's own answers → votes → pairs.

What the labeling app does over days, in one call: put the round's prompts in the store, let the worker
sample two answers per prompt from the adapter under review (batch mode: `fill`), have an annotator that is
a program vote on them through the same store calls the app uses (`collect.judge`), and export the pairs.
The pipeline runs it between SFT and DPO (`collect: {annotator: rules}` in a pipeline recipe); with
`annotator: humans` it stops after `fill` and people vote in `alignkit collect serve`.

Everything is in the store, so a re-run is cheap: prompts and items already there are not generated again,
items already voted are not voted again, and the export is the same file.
"""

from __future__ import annotations

import random
from pathlib import Path

from alignkit.errors import UserError


def sample_prompts(prompts: list[dict], n: int | None, seed: int) -> list[dict]:
    """`n` prompts drawn evenly across categories (all of them when n is None or ≥ the total), in file order."""
    if n is None or n >= len(prompts):
        return list(prompts)
    by_category: dict[str | None, list[int]] = {}
    for i, rec in enumerate(prompts):
        by_category.setdefault(rec.get("category"), []).append(i)
    rng = random.Random(seed)
    for rows in by_category.values():
        rng.shuffle(rows)
    # each category keeps its share of the file: 120 harmful of 330 → 36% of the sample
    picked = []
    for rows in by_category.values():
        picked += rows[: round(n * len(rows) / len(prompts))]
    return [prompts[i] for i in sorted(picked)]


def fill(store, recipe, adapter: str | None, log=print) -> int:
    """Generate every prompt's candidate pairs now (the worker's generation, no server); returns new items."""
    from collect.worker import Worker, load_generators

    worker = Worker(store, recipe.generation, lambda: load_generators(recipe.model, adapter, recipe.generation))
    before, batches = store.item_count(), 0
    while worker.todo():
        worker.step(force=True)
        batches += 1
        log(f"generate: batch {batches}, {store.item_count() - before} pairs so far")
    return store.item_count() - before


def open_round(url: str, recipe, prompts_file: str, n_prompts: int | None = None, min_prompts: int = 20,
               seed: int = 0, machine: bool = True):
    """The round's store with its prompts loaded (idempotent); too few prompts fail before anything is written.

    `machine`: one vote settles an item (a judge votes once), no blind repeats; otherwise the recipe's queue.
    """
    from collect.cli import read_prompts
    from collect.store import apply_settings, open_store, queue_settings

    prompts = sample_prompts(read_prompts(prompts_file), n_prompts, seed)
    if len(prompts) < min_prompts:
        raise UserError(f"{prompts_file}: {len(prompts)} prompts for the collect round, at least {min_prompts} "
                        "needed (a DPO round on fewer pairs measures nothing)")
    settings = {**queue_settings(recipe), **({"overlap": 1, "repeat_every": 0} if machine else {})}
    store = open_store(url, recipe, create=True)
    store.load(prompts, [], settings)
    apply_settings(store, settings)
    return store


def run_round(url: str, recipe, prompts_file: str, adapter: str | None, judge: str, out: Path,
              n_prompts: int | None = None, min_prompts: int = 20, min_margin: float | None = None,
              seed: int = 0, log=print) -> int:
    """Prompts → the adapter's pairs → the judge's votes → `out` (DPO pairs); returns the pairs written.

    Bad input fails before a model loads: too few prompts, an unknown judge. A judge unsure on every item
    raises UserError (collect.judge) with nothing exported.
    """
    from collect.export import ExportRules, write
    from collect.judge import ANNOTATORS, default_name, judge_kind, run_judge

    judge_kind(judge, "collect.annotator", ANNOTATORS)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    store = open_round(url, recipe, prompts_file, n_prompts, min_prompts, seed)
    made = fill(store, recipe, adapter, log)
    log(f"collect round: {made} new pairs for {len(store.prompts())} prompts in {url}")
    name = default_name(judge)
    counts = {"a": 0, "b": 0, "skip": 0}
    if store.open_items():
        counts = run_judge(store, name, judge, recipe.model.base, min_margin)
    log(f"{name}: {counts['a'] + counts['b']} votes, {counts['skip']} unsure (left for people)")
    return write(store.dump(), out, ExportRules(min_votes=1), 1, dataset=False)["pairs"]
