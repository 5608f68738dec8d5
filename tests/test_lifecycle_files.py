"""How many project files a newcomer follows from `alignkit sft` to the run's manifest (issue 15).

A profile hook records every repository file (not tests/, not the virtualenv) whose functions are *called*
from the CLI entry until the run's manifest.json is first written; module and class bodies run at import and
are not calls. Lazy imports count as soon as one of their functions runs.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import pytest

from alignkit import cli, curation, runs

ROOT = Path(__file__).resolve().parent.parent
# The target. The path it listed (cli → entry → recipe → sections → sft.config → sft.train ⇄ stage ⇄ models
# → prepare → data → curation → runs → atomic → tracking; 22 files before the merges) is now cli, recipe, sft/train,
# lifecycle, models, data, curation, runs. A process no launcher started does not enter alignkit/distributed.py
# or alignkit/launch.py before its manifest; the eval suites' texts (for the contamination count) are read raw.
LIMIT = 8
COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")


def files_until_manifest(argv: list[str], monkeypatch) -> list[str]:
    """The repository files whose functions run from `cli.main(argv)` until a manifest.json is first written,
    in the order they were first entered."""
    root, skip = str(ROOT) + os.sep, (str(ROOT / "tests") + os.sep, str(ROOT / ".venv") + os.sep)
    verdict: dict[str, str | None] = {}  # co_filename → path relative to the root, or None (not ours)
    seen: dict[str, None] = {}

    def mine(filename: str) -> str | None:
        if filename not in verdict:
            real = os.path.realpath(filename) if os.path.isabs(filename) else ""  # not "<frozen os>", "<string>"
            ours = real.startswith(root) and not real.startswith(skip)
            verdict[filename] = os.path.relpath(real, ROOT) if ours else None
        return verdict[filename]

    def body(code) -> bool:
        return not code.co_flags & inspect.CO_OPTIMIZED  # a module or class body: it runs at import

    def hook(frame, event, arg):
        code = frame.f_code
        if event != "call" or body(code):
            return
        if code.co_name in COMPREHENSIONS and frame.f_back is not None and body(frame.f_back.f_code):
            return  # a comprehension at module level (a function in Python 3.11, inlined in 3.12): import too
        rel = mine(code.co_filename)
        if rel is not None:
            seen.setdefault(rel)

    write_json = runs.write_json

    def watching(path, data):
        write_json(path, data)  # under the hook: the writer's own file counts
        if Path(path).name == "manifest.json":
            sys.setprofile(None)

    monkeypatch.setattr(runs, "write_json", watching)
    monkeypatch.setattr(curation, "_references", curation._references)  # main registers the eval texts
    cli.eval_texts.cache_clear()  # a fresh `alignkit sft` reads the eval suites: so must this one
    sys.setprofile(hook)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
    finally:
        sys.setprofile(None)
    assert exit_.value.code == 0
    return list(seen)


def test_alignkit_sft_reaches_its_manifest_through_few_project_files(tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"How do I water plant number {i} in a small flat?"},
        {"role": "assistant", "content": f"Give plant {i} a cup of water once a week, and let the soil dry."}]}) + "\n"
        for i in range(16)))
    files = files_until_manifest([
        "sft", "--config", str(ROOT / "recipes/smollm2/sft.yaml"), f"model.base={tiny_model_dir}",
        f"data.train={data}", f"output.dir={tmp_path / 'runs'}", "tracking.backend=none", "train.max_steps=2",
        "train.per_device_train_batch_size=2", "train.save_strategy=no"], monkeypatch)
    print(f"\n`alignkit sft` → manifest.json: {len(files)} project files\n  " + "\n  ".join(files))
    assert "alignkit/cli.py" in files and "sft/train.py" in files  # the hook saw the run
    assert len(files) <= LIMIT, f"{len(files)} project files before the manifest: {files}"
