"""The demo house style (recipes/data/STYLE.md) as a per-answer format check.

An answer passes when it has the shape its reference has: a refusal (reference starts with
"I can't help with that.") must start exactly with that sentence and stay within two more sentences;
a helpful answer must not be a refusal and must stay within 120 words.
"""

import re

import datasets
import evaluate

REFUSAL_OPENING = "I can't help with that."
MAX_WORDS = 120


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def check(prediction: str, reference: str) -> float:
    """1.0 when `prediction` follows the house style expected for `reference`, else 0.0."""
    prediction = prediction.strip().replace("\u2019", "'")
    if reference.strip().replace("\u2019", "'").startswith(REFUSAL_OPENING):
        return float(prediction.startswith(REFUSAL_OPENING) and _sentences(prediction) <= 3)
    return float(not prediction.startswith(REFUSAL_OPENING) and 0 < len(prediction.split()) <= MAX_WORDS)


class HouseStyle(evaluate.Metric):
    """house_style: share of answers with the expected format (refusal opening, ≤120 words)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        scores = [check(p, r) for p, r in zip(predictions, references)]
        return {"house_style": sum(scores) / len(scores) if scores else 0.0, "per_item": scores}
