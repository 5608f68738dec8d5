"""Old name of the shared recipe sections, which now live in `alignkit.recipe`.

Kept only while serve/ and tests/serve/ (edited in another session) still import it; delete it with their
last `from alignkit.sections import`.
"""

from alignkit.recipe import (  # noqa: F401
    LORA_ALIASES,
    LORA_DEFAULTS,
    DataConfig,
    ModelConfig,
    OutputConfig,
    TrackingConfig,
    lora_keys,
    trl_keys,
)
