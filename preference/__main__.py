"""python -m preference --config recipes/smollm2/dpo.yaml [key.sub=value …] — the same as `alignkit dpo`.

A recipe with a KTO `train:` section (recipes/smollm2/kto.yaml) runs KTO: `python -m preference --kto --config …`.
"""

import sys

from alignkit.entry import stage_main
from preference.train import DPO, KTO

if __name__ == "__main__":
    if "--kto" in sys.argv[1:]:
        sys.exit(stage_main("python -m preference --kto", KTO, argv=[a for a in sys.argv[1:] if a != "--kto"]))
    sys.exit(stage_main("python -m preference", DPO))
