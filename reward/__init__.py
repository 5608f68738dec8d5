"""alignkit stage: reward."""
