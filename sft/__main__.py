"""python -m sft --config recipes/smollm2/sft.yaml [key.sub=value …] — the same as `alignkit sft`."""

import sys

from alignkit.entry import stage_main
from sft.train import STAGE

if __name__ == "__main__":
    sys.exit(stage_main("python -m sft", STAGE))
