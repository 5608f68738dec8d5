"""tests/ is on sys.path (pytest's rootdir-based imports), so its eval/ folder would shadow the `eval` stage as a
namespace package; put the repository first so `import eval` is the stage."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
if "eval" in sys.modules and getattr(sys.modules["eval"], "__file__", None) is None:
    del sys.modules["eval"]
