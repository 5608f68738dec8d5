"""alignkit stage: preference."""
