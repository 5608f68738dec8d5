"""python -m collect init|users|serve|export|stats … — the same as `alignkit collect …`."""

import sys

from collect.cli import main

if __name__ == "__main__":
    sys.exit(main())
