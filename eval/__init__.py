"""alignkit stage: eval — suites, refusal detector, gates and reports.

Python API (what the pipeline calls):
    eval.run_eval(recipe, adapter, out_dir, parent=None) -> report dict
    eval.gate.decide(candidate_report, references, gate_recipe) -> verdict dict
"""

from __future__ import annotations


def run_eval(recipe, adapter: str | None, out_dir, parent: str | None = None) -> dict:
    """Evaluate an EvalRecipe's suites on base, prompted base and adapter; write the report into out_dir.
    `parent` (an adapter) is the reference of the reward-model win rate when the recipe names a reward model."""
    from eval.runner import run_eval as _run

    return _run(recipe, adapter, out_dir, parent=parent)
