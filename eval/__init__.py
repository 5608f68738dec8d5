"""alignkit stage: eval."""
