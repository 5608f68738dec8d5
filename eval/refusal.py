"""The refusal detector lives in the spine (`alignkit/refusal.py`): eval, collect's judge and serve's A/B
stats all label refusals with it. This module keeps `from eval.refusal import classify` working."""

from alignkit.refusal import (REFUSAL_PREFIXES, VERSION, Verdict, agreement, classify, normalize,  # noqa: F401
                              prefix_match, sentences)
