"""python -m reward --config recipes/smollm2/reward.yaml [key.sub=value …] — the same as `alignkit reward`."""

import sys

from alignkit.cli import main

if __name__ == "__main__":
    main(["reward", *sys.argv[1:]])
