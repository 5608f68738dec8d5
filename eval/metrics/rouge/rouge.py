"""ROUGE-1/2/L F-measures with Google's rouge_score (the same scorer as the Hub's `rouge`), shipped locally."""

import datasets
import evaluate
from rouge_score import rouge_scorer

TYPES = ("rouge1", "rouge2", "rougeL")


class Rouge(evaluate.Metric):
    """rouge1, rouge2, rougeL: mean F-measure; per_item holds rougeL per answer."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)
        rows = [scorer.score(r, p) for p, r in zip(predictions, references)]
        out = {t: (sum(row[t].fmeasure for row in rows) / len(rows) if rows else 0.0) for t in TYPES}
        out["per_item"] = [row["rougeL"].fmeasure for row in rows]
        return out
