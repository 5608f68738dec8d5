"""Old name of the atomic file writes, which now live in `alignkit.runs` (with the run directories they serve).

Kept only while serve/ (edited in another session) still imports it; delete it with serve/keys.py's
`from alignkit.atomic import`.
"""

from alignkit.runs import read_json, write_json, write_text  # noqa: F401
