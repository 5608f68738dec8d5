"""Exact match after light normalization (case, surrounding whitespace and punctuation), per item and mean."""

import re
import string

import datasets
import evaluate

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def _norm(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


class ExactMatch(evaluate.Metric):
    """exact_match: share of predictions equal to their reference after normalization."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Exact match after lower-casing and removing punctuation and extra whitespace.",
            citation="", inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        scores = [float(_norm(p) == _norm(r)) for p, r in zip(predictions, references)]
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0, "per_item": scores}
