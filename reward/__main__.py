"""python -m reward --config recipes/smollm2/reward.yaml [key.sub=value …] — the same as `alignkit reward`."""

import sys

from alignkit.entry import stage_main
from reward.train import STAGE

if __name__ == "__main__":
    sys.exit(stage_main("python -m reward", STAGE))
