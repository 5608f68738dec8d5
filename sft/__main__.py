"""python -m sft --config recipes/smollm2/sft.yaml [key.sub=value …] — the same as `alignkit sft`."""

import sys

from alignkit.entry import stage_main
from sft.config import SFTRecipe
from sft.train import run

if __name__ == "__main__":
    sys.exit(stage_main("python -m sft", SFTRecipe, run))
