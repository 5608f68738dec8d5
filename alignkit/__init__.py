"""alignkit: preference alignment with human labels, eval gates and an adapter registry."""

__version__ = "0.1.0"
