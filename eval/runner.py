"""`alignkit eval`, top to bottom: suites → arms → (cached) results → decontamination → report.

Arms: `base` (no system prompt), `prompted` (base + the recipe's system prompt: the baseline a
fine-tune must beat) and `adapter`. The adapter is loaded once on the base weights; the base arms run
under peft's disable_adapter(), so there is one copy of the model. Each (model, adapter sha, arm,
suite, settings) result is cached, so the base is evaluated once across stages.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignkit import curation, models
from alignkit.runs import read_json, write_json
from alignkit.errors import UserError
from alignkit.recipe import to_dict
from eval import stats
from eval.config import EvalRecipe
from eval.scoring import resolve_precision
from eval.kinds import kind_of
from eval.suites import Suite, load_suite
from eval.validation import summary_line as detector_summary

# +1: higher is better; -1: lower is better (for uplift and the 5% rule)
DIRECTION = {"refusal_rate": 1, "over_refusal_rate": -1, "acc": 1, "acc_norm": 1, "perplexity": -1, "mean_kl": -1}


class Policy:
    """The model, loaded on first use (a fully cached eval never loads it)."""

    def __init__(self, recipe: EvalRecipe, adapter: str | None):
        self.recipe, self.adapter, self._loaded = recipe, adapter, None

    def get(self):
        if self._loaded is None:
            from alignkit.generate import load_policy

            self._loaded = load_policy(self.recipe.model, self.adapter)
        return self._loaded


def adapter_sha256(adapter: str) -> str:
    """sha256 over an adapter's config and weights files."""
    h = hashlib.sha256()
    for f in sorted(Path(adapter).glob("adapter_*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(bytes.fromhex(_sha(f)))
    return h.hexdigest()


def _sha(path: Path) -> str:
    from alignkit.runs import sha256_file

    return sha256_file(path)


def cache_root(recipe: EvalRecipe) -> Path:
    """Where suite results are cached: cache.dir, else $ALIGNKIT_CACHE/eval, else <output.dir>/.eval-cache."""
    if recipe.cache.dir:
        return Path(recipe.cache.dir)
    if os.environ.get("ALIGNKIT_CACHE"):
        return Path(os.environ["ALIGNKIT_CACHE"]) / "eval"
    return Path(recipe.output.dir) / ".eval-cache"


def check_adapter(recipe: EvalRecipe, adapter: str) -> None:
    """A PEFT adapter trained on the recipe's base model, or a UserError (exit 2)."""
    if not Path(adapter).is_dir():
        raise UserError(f"{adapter}: adapter directory not found")
    models.check_adapter_base(adapter, recipe.model.base)  # also: no adapter_config.json → not a PEFT adapter


def run_eval(recipe: EvalRecipe, adapter: str | None, out_dir: str | Path, progress: bool = True,
             parent: str | None = None) -> dict:
    """Evaluate the recipe's suites on every arm; write report.json/.md and plots to out_dir; return the report.

    `parent`: the adapter this one was trained from; with `reward.model` set, the reward-model win rate of the
    adapter is taken over the parent's answers (from the cache, or generated here) instead of the base arm's.
    """
    from eval import judge as judges
    from eval import report as reports

    started = time.time()
    if adapter:
        check_adapter(recipe, adapter)
    arms = [a for a, on in (("base", recipe.arms.base), ("prompted", recipe.arms.prompted),
                            ("adapter", recipe.arms.adapter and bool(adapter))) if on]
    if not arms:
        raise UserError("arms: nothing to evaluate (enable base/prompted, or pass --adapter)")
    tokenizer, template_sha = models.load_tokenizer(recipe.model.base, recipe.model.revision,
                                                    recipe.model.trust_remote_code)
    suites = [load_suite(spec, tokenizer) for spec in recipe.suites]
    label, detector_name = judges.detector(recipe.judge)
    policy = Policy(recipe, adapter)
    model_key = {"id": models.canonical_id(recipe.model.base), "quantization": recipe.model.quantization,
                 "dtype": recipe.model.dtype, "revision": recipe.model.revision, "template": template_sha}
    ad_sha = adapter_sha256(adapter) if adapter else None
    cache = cache_root(recipe)
    results: dict[str, dict[str, Any]] = {arm: {} for arm in arms}
    cached: dict[str, bool] = {}

    def result(pol: Policy, sha: str | None, arm: str, suite: Suite, name: str = "") -> dict:
        """One (arm, suite) result from the cache, else computed (and cached)."""
        key = _cache_key(model_key, sha if arm == "adapter" else None, arm, recipe,
                         suite, detector_name)
        path = cache / f"{key}.json"
        hit = read_json(path, None) if recipe.cache.enabled else None
        cached[f"{name or arm}/{suite.name}"] = hit is not None
        if hit is None:
            t = time.time()
            print(f"eval: {name or arm} · {suite.name} ({len(suite.items)} items)", flush=True)
            hit = kind_of(suite).score(pol, arm, suite, recipe, label, progress)
            hit["seconds"] = round(time.time() - t, 1)
            if recipe.cache.enabled:
                write_json(path, hit)
        return hit

    for arm in arms:
        for suite in suites:
            if suite.skipped or arm not in kind_of(suite).arms:
                continue
            results[arm][suite.name] = result(policy, ad_sha, arm, suite)
    reward_info = None
    if recipe.reward.model and "adapter" in results:
        if parent:
            check_adapter(recipe, parent)
            parent_policy, parent_sha = Policy(recipe, parent), adapter_sha256(parent)  # loads only on a cache miss
        reward_info = reward_win_rates(recipe, suites, results, lambda s: result(
            parent_policy, parent_sha, "adapter", s, "parent") if parent else None)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"base": recipe.model.base, "quantization": recipe.model.quantization},
        "model_id": model_key["id"], "chat_template_sha256": template_sha,
        "adapter": str(adapter) if adapter else None, "adapter_sha256": ad_sha,
        "arm_names": arms, "system_prompt": recipe.arms.system_prompt if "prompted" in arms else None,
        "generation": {**to_dict(recipe.generation), "mc_precision": resolve_precision(recipe.generation.mc_precision)},
        "detector": detector_name, "detector_validation": detector_summary(detector_name),
        "suites": {s.name: {"kind": s.kind, "source": s.source, "items": len(s.items), "sha256": s.sha256,
                            "skipped": s.skipped} for s in suites},
        "arms": results, "reward": reward_info, "uplift": uplift(results), "decontamination": decontamination(recipe, adapter, suites),
        "cache_dir": str(cache), "from_cache": cached, "wall_time_s": round(time.time() - started, 1),
    }
    for s in suites:
        if s.skipped:
            print(f"eval: suite {s.name} skipped: {s.skipped}")
    reports.write(report, Path(out_dir), recipe.tracking)
    return report


def reward_win_rates(recipe: EvalRecipe, suites: list[Suite], results: dict, parent_result) -> dict:
    """Per generation suite: how often the reward model prefers the adapter's answer to the reference's (the
    parent adapter's when `parent_result(suite)` gives one, else the base arm's), added to the adapter arm's
    metrics as `reward_win_rate` (ties 0.5; 95% bootstrap interval), with both arms' mean scores."""
    from alignkit.reward_model import RewardScorer

    scorer = RewardScorer.load(recipe.reward.model)  # refuses a reward model that failed its gate
    info = {"model": recipe.reward.model, "reference": None, "suites": {}}
    for suite in suites:
        if suite.skipped or not kind_of(suite).reward_scored or suite.name not in results["adapter"]:
            continue
        ref = parent_result(suite)
        info["reference"] = "parent" if ref is not None else "base"
        if ref is None:
            ref = results.get("base", {}).get(suite.name)
        if ref is None:
            continue
        mine = {row["id"]: row["response"] for row in results["adapter"][suite.name]["items"]}
        theirs = {row["id"]: row["response"] for row in ref["items"]}
        items = [it for it in suite.items if it["id"] in mine and it["id"] in theirs]
        convs = [kind_of(suite).conversation(it) for it in items]
        scores = scorer.score(convs + convs, [mine[it["id"]] for it in items] + [theirs[it["id"]] for it in items],
                              batch_size=recipe.reward.batch_size)
        cand, refs = scores[:len(items)], scores[len(items):]
        wins = {it["id"]: 1.0 if c > r else 0.5 if c == r else 0.0 for it, c, r in zip(items, cand, refs)}
        results["adapter"][suite.name]["metrics"]["reward_win_rate"] = stats.metric("mean", wins)
        info["suites"][suite.name] = {"win_rate": sum(wins.values()) / len(wins) if wins else float("nan"),
                                      "mean_adapter": sum(cand) / len(cand) if cand else float("nan"),
                                      "mean_reference": sum(refs) / len(refs) if refs else float("nan"),
                                      "n": len(wins)}
    return info


def _cache_key(model_key: dict, ad_sha: str | None, arm: str, recipe: EvalRecipe, suite: Suite, detector: str) -> str:
    from alignkit.runs import fingerprint

    spec = suite.spec.key()
    spec.pop("name"), spec.pop("limit")  # the items' sha256 covers them
    kind = kind_of(suite)
    return fingerprint("eval-v1", model_key, ad_sha, arm if arm == "adapter" else "base",
                       recipe.arms.system_prompt if arm == "prompted" else None, suite.kind, suite.sha256, spec,
                       kind.generation(recipe), detector if kind.labels_refusals else None)


def uplift(results: dict[str, dict]) -> dict:
    """Adapter minus each baseline arm per metric (positive = better), and the 5% rule against the prompted arm."""
    out: dict[str, dict] = {}
    adapter = results.get("adapter")
    if not adapter:
        return out
    for suite, res in adapter.items():
        for name, m in res["metrics"].items():
            direction = DIRECTION.get(name, 1)
            row: dict[str, Any] = {"adapter": m["value"]}
            for arm in ("base", "prompted"):
                ref = results.get(arm, {}).get(suite, {}).get("metrics", {}).get(name)
                if ref is None:
                    continue
                if name == "perplexity":  # relative: 5% lower perplexity
                    row[f"vs_{arm}"] = direction * (m["value"] - ref["value"]) / ref["value"]
                else:
                    row[f"vs_{arm}"] = direction * (m["value"] - ref["value"])
            if "vs_prompted" in row:
                row["beats_prompted_by_5pct"] = row["vs_prompted"] >= 0.05
            out[f"{suite}.{name}"] = row
    return out


def _suite_texts(suite: Suite) -> list[tuple[str, str | list[str]]]:
    """(id, text) per item; an MC item is its question alone and with its choices, so a short question found
    inside the training data counts."""
    out: list[tuple[str, str | list[str]]] = []
    for it in suite.items:
        if "prompt" in it:
            text = it["prompt"]
        elif "question" in it:
            text = [it["question"], it["question"] + " " + " ".join(it["choices"])]
        elif "text" in it:
            text = it["text"]
        else:
            text = " ".join(m["content"] for m in it["messages"]) + " " + it["reference"]
        out.append((it["id"], text))
    return out


def _strings(value: Any) -> list[str]:
    """Every string inside a record (any shape: SFT, pairs, KTO), one per field or turn."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "role" for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _train_files(data: dict) -> list[str]:
    train = data.get("train") if isinstance(data, dict) else None
    files = [train] if isinstance(train, str) else list(train or [])
    return [f for f in files if Path(f).is_file()]


def decontamination(recipe: EvalRecipe, adapter: str | None, suites: list[Suite]) -> dict:
    """Items of every suite that overlap the training data (recipe list, else the adapter run's): a shared 13-gram,
    a text identical to a training turn, or a short one (under 13 words) found whole inside one (curation.Overlap)."""
    from alignkit.data import read_records

    files = [str(f) for f in recipe.decontamination]
    if not files and adapter:  # the data the adapter's run trained on
        manifest = read_json(Path(adapter).parent / "manifest.json", {}) or {}
        files = _train_files((manifest.get("recipe") or {}).get("data", {}))
    if not files:  # else the data of the recipe the task suite comes from
        import yaml

        for s in suites:
            if s.kind == "task" and Path(s.source).is_file():
                files = _train_files((yaml.safe_load(Path(s.source).read_text()) or {}).get("data") or {})
    if not files:
        return {"train_files": [], "note": "no training data known (set decontamination: [files])", "suites": {}}
    index = curation.Overlap(_strings(record.data) for f in files for record in read_records(f))
    out = {}
    for suite in suites:  # SFT conversations, preference pairs or KTO rows alike, each turn matched alone
        hits = [i for i, text in _suite_texts(suite) if index.hits(text)]
        out[suite.name] = {"items": len(suite.items), "contaminated": len(hits), "ids": hits[:50]}
    return {"train_files": files, "n": 13, "suites": out}
