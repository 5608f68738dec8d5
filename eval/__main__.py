"""python -m eval --config recipes/smollm2/eval.yaml --adapter DIR … — the same as `alignkit eval`."""

import argparse
import sys

from alignkit.cli import guarded
from eval.cli import register

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m eval")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *sys.argv[1:]])
    sys.exit(guarded(lambda: args.handler(args), args.debug))
