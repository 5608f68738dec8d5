"""alignkit stage: collect."""
