"""`python -m serve --config recipes/smollm2/serve.yaml --runs runs/demo` is `alignkit serve …`."""

import sys

from alignkit.cli import main

main(["serve", *sys.argv[1:]])
