"""Fixtures of the collect tests live in collect_support.py so that tests/e2e can import them too."""

from collect_support import pg_server, store_url  # noqa: F401
