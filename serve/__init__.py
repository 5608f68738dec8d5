"""Serving: the promoted adapter behind an OpenAI-compatible API, hot swap on promote/rollback, A/B, and
production feedback into the collect store (docs/serve.md)."""
