"""Fixtures of the preference tests (helpers live in pref_helpers.py)."""

from pref_helpers import pairs_file, sft_parent, tokenizer  # noqa: F401  (pytest fixtures)
