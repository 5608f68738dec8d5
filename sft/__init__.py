"""alignkit stage: sft."""
