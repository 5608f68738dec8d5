"""python -m preference --config recipes/smollm2/dpo.yaml [key.sub=value …] — the same as `alignkit dpo`.

A recipe with a KTO `train:` section (recipes/smollm2/kto.yaml) runs KTO: `python -m preference --kto --config …`
(the same as `alignkit kto`).
"""

import sys

from alignkit.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    main(["kto", *[a for a in args if a != "--kto"]] if "--kto" in args else ["dpo", *args])
