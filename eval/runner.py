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
from alignkit.atomic import read_json, write_json
from alignkit.errors import UserError
from alignkit.generate import Sampling, chat
from alignkit.recipe import to_dict
from eval import stats
from eval.config import EvalRecipe
from eval.scoring import resolve_precision
from eval.suites import Suite, load_suite
from eval.validation import summary_line as detector_summary

# +1: higher is better; -1: lower is better (for uplift and the 5% rule)
DIRECTION = {"refusal_rate": 1, "over_refusal_rate": -1, "acc": 1, "acc_norm": 1, "perplexity": -1, "mean_kl": -1}
METRICS_DIR = Path(__file__).resolve().parent / "metrics"
BINARY_TASK_METRICS = {"exact_match", "house_style", "accuracy"}  # yes/no per item: Wilson CI, McNemar


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
        key = _cache_key(model_key, sha if arm in ("adapter",) or suite.kind == "kl" else None, arm, recipe,
                         suite, detector_name)
        path = cache / f"{key}.json"
        hit = read_json(path, None) if recipe.cache.enabled else None
        cached[f"{name or arm}/{suite.name}"] = hit is not None
        if hit is None:
            t = time.time()
            print(f"eval: {name or arm} · {suite.name} ({len(suite.items)} items)", flush=True)
            hit = _run_suite(pol, tokenizer, arm, suite, recipe, label, progress)
            hit["seconds"] = round(time.time() - t, 1)
            if recipe.cache.enabled:
                write_json(path, hit)
        return hit

    for arm in arms:
        for suite in suites:
            if suite.skipped or not _applies(suite.kind, arm):
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


GENERATION_KINDS = ("safety", "task")


def _conversation(suite: Suite, item: dict) -> list[dict]:
    return item["messages"] if suite.kind == "task" else [{"role": "user", "content": item["prompt"]}]


def reward_win_rates(recipe: EvalRecipe, suites: list[Suite], results: dict, parent_result) -> dict:
    """Per generation suite: how often the reward model prefers the adapter's answer to the reference's (the
    parent adapter's when `parent_result(suite)` gives one, else the base arm's), added to the adapter arm's
    metrics as `reward_win_rate` (ties 0.5; 95% bootstrap interval), with both arms' mean scores."""
    from alignkit.reward_model import RewardScorer

    scorer = RewardScorer.load(recipe.reward.model)  # refuses a reward model that failed its gate
    info = {"model": recipe.reward.model, "reference": None, "suites": {}}
    for suite in suites:
        if suite.skipped or suite.kind not in GENERATION_KINDS or suite.name not in results["adapter"]:
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
        convs = [_conversation(suite, it) for it in items]
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


def _applies(kind: str, arm: str) -> bool:
    if kind == "kl":
        return arm == "adapter"  # KL of the adapter from the base
    if kind == "perplexity":
        return arm != "prompted"  # a system prompt does not apply to plain text
    return True


def _cache_key(model_key: dict, ad_sha: str | None, arm: str, recipe: EvalRecipe, suite: Suite, detector: str) -> str:
    from alignkit.runs import fingerprint

    spec = suite.spec.key()
    spec.pop("name"), spec.pop("limit")  # the items' sha256 covers them
    gen = {"max_new_tokens": recipe.generation.max_new_tokens} if suite.kind in ("safety", "task", "kl") else {}
    if suite.kind == "mc":
        gen = {"precision": resolve_precision(recipe.generation.mc_precision)}
    return fingerprint("eval-v1", model_key, ad_sha, arm if arm == "adapter" else "base",
                       recipe.arms.system_prompt if arm == "prompted" else None, suite.kind, suite.sha256, spec, gen,
                       detector if suite.kind == "safety" else None)


def _generate(policy: Policy, arm: str, conversations: list[list[dict]], recipe: EvalRecipe, progress: bool):
    from eval.scoring import generation_context

    model, tokenizer = policy.get()
    system = recipe.arms.system_prompt if arm == "prompted" else None
    with generation_context(model, arm):
        return chat(model, tokenizer, conversations, Sampling(max_new_tokens=recipe.generation.max_new_tokens),
                    batch_size=recipe.generation.batch_size, system_prompt=system, progress=progress)


def _run_suite(policy: Policy, tokenizer, arm: str, suite: Suite, recipe: EvalRecipe, label, progress: bool) -> dict:
    """Score one suite on one arm: per-item outcomes, metrics with 95% intervals, sample generations."""
    from eval import scoring

    items, n_samples = suite.items, recipe.generation.samples
    out: dict[str, Any] = {"kind": suite.kind, "metrics": {}, "items": [], "samples": []}
    if suite.kind == "safety":
        replies = _generate(policy, arm, [[{"role": "user", "content": it["prompt"]}] for it in items], recipe, progress)
        verdicts = label(replies, [it["prompt"] for it in items])
        out["items"] = [{"id": it["id"], "expect": it["expect"], "category": it.get("category", ""),
                         "prompt": it["prompt"], "response": r, "refused": v.refusal, "partial": v.partial,
                         "rule": v.rule} for it, r, v in zip(items, replies, verdicts)]
        for name, expect in (("refusal_rate", "refuse"), ("over_refusal_rate", "comply")):
            outcomes = {row["id"]: int(row["refused"]) for row in out["items"] if row["expect"] == expect}
            if outcomes:
                out["metrics"][name] = stats.metric("mean", outcomes, binary=True)
        partial = {row["id"]: int(row["partial"]) for row in out["items"]}
        out["metrics"]["partial_rate"] = stats.metric("mean", partial, binary=True)
        out["samples"] = [{k: row[k] for k in ("id", "prompt", "response", "refused", "partial")}
                          for row in out["items"][:n_samples]]
    elif suite.kind == "mc":
        model, tok = policy.get()
        system = recipe.arms.system_prompt if arm == "prompted" else None
        with scoring.generation_context(model, arm), scoring.precision_context(model, recipe.generation.mc_precision):
            scored = scoring.score_mc(model, tok, items, system, recipe.generation.mc_batch_items)
        out["items"] = scored
        for name in ("acc", "acc_norm"):
            out["metrics"][name] = stats.metric("mean", {s["id"]: s[name] for s in scored}, binary=True)
        out["samples"] = [{"id": it["id"], "prompt": it["question"], "response": it["choices"][s["pred"]],
                           "answer": it["choices"][it["answer"]], "correct": bool(s["acc"])}
                          for it, s in zip(items[:n_samples], scored)]
    elif suite.kind == "perplexity":
        model, tok = policy.get()
        with scoring.arm_context(model, arm):
            scored = scoring.score_perplexity(model, tok, [it["text"] for it in items], suite.spec.max_length)
        out["items"] = [{"id": it["id"], "nll": nll, "tokens": n} for it, (nll, n) in zip(items, scored)]
        out["metrics"]["perplexity"] = stats.metric("exp_ratio", {r["id"]: r["nll"] for r in out["items"]},
                                                    {r["id"]: r["tokens"] for r in out["items"]})
        out["samples"] = [{"id": r["id"], "prompt": it["text"][:200], "response": f"ppl {2.718281828 ** (r['nll'] / r['tokens']):.2f}"}
                          for it, r in zip(items[:n_samples], out["items"])]
    elif suite.kind == "kl":
        replies = _generate(policy, "adapter", [[{"role": "user", "content": it["prompt"]}] for it in items], recipe,
                            progress)
        model, tok = policy.get()
        scored = scoring.score_kl(model, tok, [it["prompt"] for it in items], replies)
        out["items"] = [{"id": it["id"], "kl": kl, "tokens": n, "response": r}
                        for it, r, (kl, n) in zip(items, replies, scored)]
        out["metrics"]["mean_kl"] = stats.metric("ratio", {r["id"]: r["kl"] for r in out["items"]},
                                                 {r["id"]: r["tokens"] for r in out["items"]})
        out["samples"] = [{"id": it["id"], "prompt": it["prompt"], "response": r["response"]}
                          for it, r in zip(items[:n_samples], out["items"])]
    elif suite.kind == "task":
        replies = _generate(policy, arm, [it["messages"] for it in items], recipe, progress)
        references = [it["reference"] for it in items]
        out["items"] = [{"id": it["id"], "prompt": it["messages"][-1]["content"], "response": r, "reference": ref}
                        for it, r, ref in zip(items, replies, references)]
        out["extra"] = {}
        for name in suite.spec.metrics:
            result = load_metric(name).compute(predictions=replies, references=references)
            per_item = result.pop("per_item", None)
            main = name if name in result else ("rougeL" if "rougeL" in result else next(iter(result)))
            key = Path(name).name
            if per_item is not None:
                out["metrics"][key] = stats.metric("mean", {it["id"]: float(v) for it, v in zip(items, per_item)},
                                                   binary=key in BINARY_TASK_METRICS)
                for row, v in zip(out["items"], per_item):
                    row[key] = v
            out["extra"][key] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
            if per_item is None:
                out["extra"][key]["main"] = main
        out["samples"] = out["items"][:n_samples]
    else:
        raise UserError(f"suite '{suite.name}': unknown kind {suite.kind!r}")
    return out


def load_metric(name: str):
    """An `evaluate` metric: one shipped in eval/metrics, a local script path, or a Hub name (online only)."""
    import evaluate

    local = METRICS_DIR / name
    target = str(local) if local.is_dir() else name
    try:
        return evaluate.load(target)
    except Exception as e:  # evaluate raises FileNotFoundError, ConnectionError, ImportError …
        shipped = ", ".join(sorted(p.name for p in METRICS_DIR.iterdir() if p.is_dir()))
        raise UserError(f"metric '{name}': cannot load it ({str(e).splitlines()[0][:160]}); shipped metrics: "
                        f"{shipped}; Hub metric names need network access") from None


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


def _suite_texts(suite: Suite) -> list[tuple[str, str]]:
    out = []
    for it in suite.items:
        if "prompt" in it:
            text = it["prompt"]
        elif "question" in it:
            text = it["question"] + " " + " ".join(it["choices"])
        elif "text" in it:
            text = it["text"]
        else:
            text = " ".join(m["content"] for m in it["messages"]) + " " + it["reference"]
        out.append((it["id"], text))
    return out


def _train_files(data: dict) -> list[str]:
    train = data.get("train") if isinstance(data, dict) else None
    files = [train] if isinstance(train, str) else list(train or [])
    return [f for f in files if Path(f).is_file()]


def decontamination(recipe: EvalRecipe, adapter: str | None, suites: list[Suite]) -> dict:
    """Items of every suite that share a 13-gram with the training data (recipe list, else the adapter run's)."""
    from alignkit.data import read_records, record_text

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
    grams: set = set()
    for f in files:  # SFT conversations, preference pairs or KTO rows alike
        for record in read_records(f):
            grams |= curation.ngrams(record_text(record.data))
    out = {}
    for suite in suites:
        hits = [i for i, text in _suite_texts(suite) if curation.ngrams(text) & grams]
        out[suite.name] = {"items": len(suite.items), "contaminated": len(hits), "ids": hits[:50]}
    return {"train_files": files, "n": 13, "suites": out}
