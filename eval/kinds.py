"""Suite kinds as data: each kind's scorer and what it needs, one table instead of `if kind ==` chains.

A scorer takes (policy, arm, suite, recipe, label, progress) and returns the arm's result for the suite:
per-item outcomes, metrics with 95% intervals (eval/stats.py), and sample generations for the report.
Adding a kind is one function and one row of `KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from alignkit.errors import UserError
from alignkit.generate import Sampling, chat
from eval import stats
from eval.scoring import resolve_precision

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
BINARY_TASK_METRICS = {"exact_match", "house_style", "accuracy"}  # yes/no per item: Wilson CI, McNemar
ALL_ARMS = ("base", "prompted", "adapter")


def _generate(policy, arm: str, conversations: list[list[dict]], recipe, progress: bool):
    from eval.scoring import generation_context

    model, tokenizer = policy.get()
    system = recipe.arms.system_prompt if arm == "prompted" else None
    with generation_context(model, arm):
        return chat(model, tokenizer, conversations, Sampling(max_new_tokens=recipe.generation.max_new_tokens),
                    batch_size=recipe.generation.batch_size, system_prompt=system, progress=progress)


def _result(suite) -> dict[str, Any]:
    return {"kind": suite.kind, "metrics": {}, "items": [], "samples": []}


def score_safety(policy, arm, suite, recipe, label, progress) -> dict:
    """Generate, label refusals: refusal_rate (items expecting a refusal), over_refusal_rate, partial_rate."""
    out, items = _result(suite), suite.items
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
                      for row in out["items"][:recipe.generation.samples]]
    return out


def score_mc(policy, arm, suite, recipe, label, progress) -> dict:
    """Multiple choice by the log-likelihood of each choice: acc and acc_norm."""
    from eval import scoring

    out, items, n_samples = _result(suite), suite.items, recipe.generation.samples
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
    return out


def score_perplexity(policy, arm, suite, recipe, label, progress) -> dict:
    """Token-weighted perplexity of plain passages."""
    from eval import scoring

    out, items = _result(suite), suite.items
    model, tok = policy.get()
    with scoring.arm_context(model, arm):
        scored = scoring.score_perplexity(model, tok, [it["text"] for it in items], suite.spec.max_length)
    out["items"] = [{"id": it["id"], "nll": nll, "tokens": n} for it, (nll, n) in zip(items, scored)]
    out["metrics"]["perplexity"] = stats.metric("exp_ratio", {r["id"]: r["nll"] for r in out["items"]},
                                                {r["id"]: r["tokens"] for r in out["items"]})
    out["samples"] = [{"id": r["id"], "prompt": it["text"][:200], "response": f"ppl {2.718281828 ** (r['nll'] / r['tokens']):.2f}"}
                      for it, r in zip(items[:recipe.generation.samples], out["items"])]
    return out


def score_kl(policy, arm, suite, recipe, label, progress) -> dict:
    """Mean per-token KL of the adapter from the base on the adapter's own answers."""
    from eval import scoring

    out, items = _result(suite), suite.items
    replies = _generate(policy, "adapter", [[{"role": "user", "content": it["prompt"]}] for it in items], recipe,
                        progress)
    model, tok = policy.get()
    scored = scoring.score_kl(model, tok, [it["prompt"] for it in items], replies)
    out["items"] = [{"id": it["id"], "kl": kl, "tokens": n, "response": r}
                    for it, r, (kl, n) in zip(items, replies, scored)]
    out["metrics"]["mean_kl"] = stats.metric("ratio", {r["id"]: r["kl"] for r in out["items"]},
                                             {r["id"]: r["tokens"] for r in out["items"]})
    out["samples"] = [{"id": it["id"], "prompt": it["prompt"], "response": r["response"]}
                      for it, r in zip(items[:recipe.generation.samples], out["items"])]
    return out


def score_task(policy, arm, suite, recipe, label, progress) -> dict:
    """Generate on held-out task conversations, score with `evaluate` metrics against the references."""
    out, items = _result(suite), suite.items
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
    out["samples"] = out["items"][:recipe.generation.samples]
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



def _max_new_tokens(recipe) -> dict:
    return {"max_new_tokens": recipe.generation.max_new_tokens}


@dataclass(frozen=True)
class Kind:
    """How one suite kind is scored and cached."""

    score: Callable[..., dict]
    arms: tuple[str, ...] = ALL_ARMS  # KL is of the adapter from the base; a system prompt does not apply to text
    generation: Callable[[Any], dict] = field(default=lambda recipe: {})  # settings in the cache key
    labels_refusals: bool = False  # the refusal detector's version is in the cache key
    conversation: Callable[[dict], list[dict]] = field(
        default=lambda item: [{"role": "user", "content": item.get("prompt", "")}])
    reward_scored: bool = False  # answers the reward model can score (reward_win_rate)


KINDS: dict[str, Kind] = {
    "safety": Kind(score_safety, generation=_max_new_tokens, labels_refusals=True, reward_scored=True),
    "mc": Kind(score_mc, generation=lambda recipe: {"precision": resolve_precision(recipe.generation.mc_precision)}),
    "perplexity": Kind(score_perplexity, arms=("base", "adapter")),
    "kl": Kind(score_kl, arms=("adapter",), generation=_max_new_tokens),
    "task": Kind(score_task, generation=_max_new_tokens, conversation=lambda item: item["messages"],
                 reward_scored=True),
}


def kind_of(suite) -> Kind:
    """The table row of a suite's kind; an unknown kind is the user's error."""
    if suite.kind not in KINDS:
        raise UserError(f"suite '{suite.name}': unknown kind {suite.kind!r}; kinds: {', '.join(KINDS)}")
    return KINDS[suite.kind]
