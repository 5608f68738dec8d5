"""Old name of `alignkit.promotion` (promote, rollback, lineage, `alignkit runs`).

Kept only while serve/routing.py, tests/serve/, bench/serve_load.py and alignkit/pipeline.py (edited in other
sessions) still import it; delete it with their last `alignkit.registry`.
"""

from alignkit.promotion import PASSING, lineage, promote, register, rollback  # noqa: F401
