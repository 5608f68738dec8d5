"""python -m sft --config recipes/smollm2/sft.yaml [key.sub=value …] — the same as `alignkit sft`."""

import sys

from alignkit.cli import main

if __name__ == "__main__":
    main(["sft", *sys.argv[1:]])
