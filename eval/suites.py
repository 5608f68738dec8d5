"""Eval suites as data: the bundled suites and loaders for the standard benchmark files.

A suite is a kind and a list of items:
  safety      {"id", "prompt", "expect": "refuse" | "comply"}   → refusal_rate / over_refusal_rate
  mc          {"id", "question", "choices", "answer"}            → acc, acc_norm (log-likelihood)
  perplexity  {"id", "text"}                                      → perplexity
  kl          {"id", "prompt"}                                    → mean per-token KL(adapter ‖ base)
  task        {"id", "messages", "reference"}                     → evaluate metrics
Every problem in a file is a UserError naming `file:line`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import UserError
from eval.config import SuiteSpec

DATA = Path(__file__).resolve().parent / "data"
# bundled name → (file, format, expect)
BUNDLED = {
    "harmful": ("harmful.jsonl", "prompts", "refuse"),
    "benign": ("benign_lookalike.jsonl", "prompts", "comply"),
    "mc": ("mc.jsonl", "mc", None),
    "passages": ("passages.jsonl", "passages", None),
    "kl": ("neutral_prompts.jsonl", "prompts", "comply"),
}
BUNDLED_KIND = {"harmful": "safety", "benign": "safety", "mc": "mc", "passages": "perplexity", "kl": "kl"}
FORMAT_KIND = {"xstest": "safety", "advbench": "safety", "harmbench": "safety", "mmlu": "mc", "arc": "mc",
               "hellaswag": "mc", "mc": "mc", "passages": "perplexity", "prompts": "safety", "task": "task",
               "lm_eval": "mc"}
FORMATS = ("bundled", *FORMAT_KIND, "hub")
LETTERS = "ABCDEFGHIJ"


@dataclass
class Suite:
    """A loaded suite: its spec, kind, items and a hash of the items (part of the cache key)."""

    spec: SuiteSpec
    kind: str
    items: list[dict]
    source: str
    skipped: str | None = None
    sha256: str = field(default="")

    def __post_init__(self):
        self.sha256 = hashlib.sha256(json.dumps(self.items, sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        return self.spec.name


def valid_names() -> list[str]:
    """Names `--suite NAME` accepts without a path."""
    return [*BUNDLED, "task"]


def parse_cli_suite(arg: str) -> SuiteSpec:
    """`--suite name=path` (or a bundled `name`) → SuiteSpec; the format follows the name when it is one."""
    name, sep, source = arg.partition("=")
    name = name.strip()
    if not name:
        raise UserError(f"--suite {arg!r}: expected name=path, e.g. xstest=xstest_prompts.csv")
    if not sep:
        if name not in valid_names():
            raise UserError(f"--suite {name}: unknown suite; valid suites: {', '.join(valid_names())}, or "
                            f"name=path with a file in one of the formats {', '.join(FORMATS)}")
        return SuiteSpec(name=name)
    fmt = name if name in FORMAT_KIND else "auto"
    return SuiteSpec(name=name, source=source.strip(), format=fmt)


def load_suite(spec: SuiteSpec, tokenizer=None) -> Suite:
    """Load the items of one suite (the task suite needs the tokenizer for curation)."""
    if not spec.source and spec.format in ("auto", "bundled"):
        if spec.name == "task":
            return _limit(spec, _task(spec, tokenizer))
        if spec.name not in BUNDLED:
            raise UserError(f"suite '{spec.name}': unknown suite; valid suites: {', '.join(valid_names())}, or give "
                            f"a source file in one of the formats {', '.join(FORMATS)}")
        file, fmt, expect = BUNDLED[spec.name]
        items = _jsonl_items(DATA / file, fmt, spec.expect or expect)
        return _limit(spec, Suite(spec, spec.kind or BUNDLED_KIND[spec.name], items, f"bundled:{file}"))
    source = spec.source
    if source.startswith("lm_eval:") or spec.format == "lm_eval":
        return _limit(spec, _lm_eval(spec, source.split(":", 1)[-1]))
    if spec.format == "task":
        return _limit(spec, _task(spec, tokenizer))
    path = Path(source)
    fmt = spec.format if spec.format != "auto" else _detect(path, source)
    if fmt == "hub":
        items, fmt = _hub_items(source, spec)
    elif fmt == "mmlu":
        items = _mmlu(path)
    elif path.suffix.lower() == ".csv" or (fmt == "advbench" and path.suffix.lower() in (".txt", "")):
        items = _csv_items(path, fmt)
    elif path.is_file():
        items = _jsonl_items(path, fmt, spec.expect)
    else:
        raise UserError(f"{source}: suite '{spec.name}': no such file or folder")
    if not items:
        raise UserError(f"{source}: suite '{spec.name}' has no items")
    return _limit(spec, Suite(spec, spec.kind or FORMAT_KIND[fmt], items, source))


def _limit(spec: SuiteSpec, suite: Suite) -> Suite:
    items = suite.items
    if spec.sample is not None and len(items) > spec.sample:
        # a stride, not the head: the bundled files are grouped by category, so the first N would be a few
        # categories only; every k-th item keeps them all, and the same N always picks the same items
        items = [items[i * len(items) // spec.sample] for i in range(spec.sample)]
    if spec.limit is not None and len(items) > spec.limit:
        items = items[:spec.limit]
    return suite if items is suite.items else Suite(spec, suite.kind, items, suite.source, suite.skipped)


def _detect(path: Path, source: str) -> str:
    """The format of a file from its columns, a folder of CSVs as MMLU, else a Hub id."""
    if path.is_dir():
        return "mmlu"
    if not path.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", source) and not source.endswith((".csv", ".jsonl", ".json")):
            return "hub"
        raise UserError(f"{source}: no such file or folder (nor a Hub dataset id like org/name[:split])")
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        return _format_of_columns(set(header), f"{path}:1")
    from alignkit.data import jsonl_objects

    for n, first in jsonl_objects(path):
        return _format_of_columns(set(first), f"{path}:{n}")
    raise UserError(f"{path}: empty file")


def _format_of_columns(cols: set, where: str) -> str:
    if {"goal", "target"} <= cols:
        return "advbench"
    if "Behavior" in cols:
        return "harmbench"
    if {"prompt", "label"} <= cols and ("type" in cols or "focus" in cols):
        return "xstest"
    if {"ctx", "endings"} <= cols:
        return "hellaswag"
    if {"question", "answerKey"} <= cols:
        return "arc"
    if {"question", "choices", "answer"} <= cols:
        return "mc"
    if "text" in cols:
        return "passages"
    if "prompt" in cols or "goal" in cols:
        return "prompts"
    raise UserError(f"{where}: cannot tell the benchmark format from the columns {sorted(cols)}; expected XSTest "
                    "(prompt,type,label), AdvBench (goal,target), HarmBench (Behavior,…), ARC (question,answerKey), "
                    "HellaSwag (ctx,endings,label), multiple choice (question,choices,answer), passages (text) or "
                    "prompts (prompt)")


def _need(row: dict, key: str, where: str, kind: type = str) -> Any:
    value = row.get(key)
    if value is None or (kind is str and (not isinstance(value, str) or not value.strip())):
        raise UserError(f"{where}: missing or empty field '{key}'")
    return value


def _item(fmt: str, row: dict, where: str, n: int, expect: str | None) -> dict:
    """One item of a record in format `fmt`."""
    rid = str(row.get("id") or row.get("BehaviorID") or row.get("ind") or f"{n}")
    if fmt in ("prompts", "advbench", "harmbench", "xstest"):
        if fmt == "advbench":
            prompt, exp = _need(row, "goal", where), "refuse"
        elif fmt == "harmbench":
            prompt, exp = _need(row, "Behavior", where), "refuse"
            context = row.get("ContextString")
            if isinstance(context, str) and context.strip():
                prompt = f"{context.strip()}\n\n---\n\n{prompt}"
        elif fmt == "xstest":
            prompt = _need(row, "prompt", where)
            label, kind = str(row.get("label", "")).strip().lower(), str(row.get("type", "")).lower()
            if label not in ("safe", "unsafe"):
                raise UserError(f"{where}: field 'label': expected safe or unsafe, got {row.get('label')!r}")
            exp = "refuse" if label == "unsafe" or kind.startswith("contrast") else "comply"
        else:
            prompt = _need(row, "prompt", where)
            exp = row.get("expect") or expect or "refuse"
            if exp not in ("refuse", "comply"):
                raise UserError(f"{where}: field 'expect': expected refuse or comply, got {exp!r}")
        return {"id": rid, "prompt": prompt, "expect": exp, "category": row.get("category") or row.get("type")
                or row.get("SemanticCategory") or ""}
    if fmt == "mc":
        question, choices, answer = _need(row, "question", where), row.get("choices"), row.get("answer")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{where}: field 'choices': expected a list of at least 2 strings")
        if isinstance(answer, str) and answer.strip().upper() in LETTERS[:len(choices)]:
            answer = LETTERS.index(answer.strip().upper())
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise UserError(f"{where}: field 'answer': expected a choice index 0..{len(choices) - 1}, got {answer!r}")
        return {"id": rid, "question": question, "choices": choices, "answer": answer}
    if fmt == "arc":
        q = row.get("question")
        if not isinstance(q, dict) or not isinstance(q.get("choices"), list):
            raise UserError(f"{where}: field 'question': expected {{stem, choices: [{{text, label}}]}}")
        labels = [str(c.get("label")) for c in q["choices"]]
        key = str(row.get("answerKey"))
        if key not in labels:
            raise UserError(f"{where}: field 'answerKey': {key!r} is not one of the choice labels {labels}")
        return {"id": rid, "question": _need(q, "stem", where), "choices": [c.get("text", "") for c in q["choices"]],
                "answer": labels.index(key)}
    if fmt == "hellaswag":
        endings = row.get("endings")
        if not isinstance(endings, list) or len(endings) < 2:
            raise UserError(f"{where}: field 'endings': expected a list of endings")
        try:
            label = int(row.get("label"))
        except (TypeError, ValueError):
            raise UserError(f"{where}: field 'label': expected the index of the right ending") from None
        # lm-evaluation-harness's hellaswag preprocessing
        ctx = f"{row.get('activity_label', '')}: {_need(row, 'ctx', where)}".lstrip(": ")
        return {"id": str(row.get("ind", rid)), "question": _hs(ctx), "choices": [_hs(e) for e in endings],
                "answer": label}
    if fmt == "passages":
        return {"id": rid, "text": _need(row, "text", where)}
    raise UserError(f"{where}: unknown suite format {fmt!r}; formats: {', '.join(FORMATS)}")


def _hs(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _jsonl_items(path: Path, fmt: str, expect: str | None) -> list[dict]:
    from alignkit.data import read_records

    records = read_records(str(path))
    return [_item(fmt, r.data, r.origin, n, expect) for n, r in enumerate(records, 1)]


def _headerless_goals(path: Path) -> list[dict]:
    """AdvBench as users often have it: `harmful_behaviors.csv` without its header, one goal per line (or
    `goal,target` rows whose target is the "Sure, here is …" string)."""
    items = []
    with open(path, encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                cells = next(csv.reader([line], strict=True))
            except csv.Error as e:
                raise UserError(f"{path}:{n}: malformed CSV record ({e})") from None
            if len(cells) == 2 and cells[1].strip().lower().startswith("sure"):
                goal = cells[0]
            else:  # one column: a comma inside an unquoted goal is part of the goal
                goal = cells[0] if len(cells) == 1 else line.rstrip("\r\n")
            if not goal.strip():
                raise UserError(f"{path}:{n}: empty goal")
            items.append({"id": str(len(items) + 1), "prompt": goal.strip(), "expect": "refuse", "category": ""})
    return items


def _csv_items(path: Path, fmt: str) -> list[dict]:
    items = []
    if fmt == "advbench":
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        if "goal" not in header:
            return _headerless_goals(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, strict=True)
        required = {"advbench": ["goal"], "harmbench": ["Behavior"], "xstest": ["prompt", "label"],
                    "prompts": ["prompt"]}.get(fmt, [])
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}:1: missing column '{missing[0]}' for format {fmt} "
                            f"(columns: {', '.join(reader.fieldnames or [])})")
        n = 0
        try:
            for n, row in enumerate(reader, 1):
                if None in row:
                    raise UserError(f"{path}:{reader.line_num}: more cells than header columns")
                if None in row.values():
                    raise UserError(f"{path}:{reader.line_num}: fewer cells than header columns")
                items.append(_item(fmt, row, f"{path}:{reader.line_num}", n, None))
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num + 1}: malformed CSV record ({e})") from None
    return items


def _mmlu(folder: Path) -> list[dict]:
    """MMLU's data folder: headerless CSVs `question,A,B,C,D,answer`, one per subject (test/ preferred)."""
    if not folder.is_dir():
        raise UserError(f"{folder}: MMLU expects a folder of CSV files")
    root = folder / "test" if (folder / "test").is_dir() else folder
    files = sorted(root.rglob("*.csv"))
    if not files:
        raise UserError(f"{folder}: no .csv files (expected MMLU's <subject>_test.csv files)")
    items = []
    for file in files:
        subject = file.stem.removesuffix("_test")
        with open(file, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            for n, row in enumerate(reader, 1):
                where = f"{file}:{reader.line_num}"
                if len(row) != 6:
                    raise UserError(f"{where}: expected 6 cells (question,A,B,C,D,answer), got {len(row)}")
                if row[5].strip().upper() not in "ABCD" or not row[5].strip():
                    raise UserError(f"{where}: answer must be A, B, C or D, got {row[5]!r}")
                # lm-evaluation-harness's MMLU prompt: question, lettered choices, "Answer:"
                question = (f"The following is a multiple choice question about {subject.replace('_', ' ')}.\n\n"
                            f"{row[0].strip()}\n" + "\n".join(f"{L}. {c.strip()}" for L, c in zip("ABCD", row[1:5]))
                            + "\nAnswer:")
                items.append({"id": f"{subject}-{n}", "question": question, "choices": list("ABCD"),
                              "answer": "ABCD".index(row[5].strip().upper())})
    return items


def _hub_items(source: str, spec: SuiteSpec) -> tuple[list[dict], str]:
    from alignkit.data import read_records

    records = read_records(source)
    if not records:
        raise UserError(f"{source}: empty dataset")
    fmt = _format_of_columns(set(records[0].data), records[0].origin)
    return [_item(fmt, r.data, r.origin, n, spec.expect) for n, r in enumerate(records, 1)], fmt


def _task(spec: SuiteSpec, tokenizer) -> Suite:
    """The held-out split of an SFT recipe's data (same curation and hash split as training)."""
    import yaml

    from alignkit.data import prepare_conversations
    from alignkit.recipe import DataConfig

    recipe = Path(spec.recipe or spec.source or "recipes/smollm2/sft.yaml")
    if not recipe.is_file():
        raise UserError(f"suite '{spec.name}': recipe {recipe} not found (set the suite's recipe: to an SFT recipe)")
    data = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("data")
    if not isinstance(data, dict):
        raise UserError(f"{recipe}: no data: section to take the held-out split from")
    try:
        cfg = DataConfig(**data)
    except (TypeError, ValueError) as e:
        raise UserError(f"{recipe}: data: {e}") from None
    split = prepare_conversations(cfg, tokenizer).splits[spec.split]
    if not split:
        raise UserError(f"{recipe}: the {spec.split} split is empty; set data.{spec.split}_fraction above 0")
    items = [{"id": f"{spec.split}-{i + 1}", "messages": c.messages[:-1], "reference": c.messages[-1]["content"]}
             for i, c in enumerate(split)]
    return Suite(spec, "task", items, str(recipe))


def _lm_eval(spec: SuiteSpec, task_name: str) -> Suite:
    """Items of an lm-evaluation-harness multiple-choice task, scored by our log-likelihood scorer."""
    try:
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        return Suite(spec, "mc", [], f"lm_eval:{task_name}",
                     skipped="lm-eval is not installed (pip install lm-eval); suite skipped")
    try:
        task = get_task_dict([task_name], TaskManager())[task_name]
    except Exception as e:  # lm-eval raises several types for unknown tasks and unreachable datasets
        raise UserError(f"lm_eval:{task_name}: cannot load the task ({str(e).splitlines()[0][:160]})") from None
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    items = []
    for n, doc in enumerate(docs, 1):
        choices = task.doc_to_choice(doc)
        target = task.doc_to_target(doc)
        answer = choices.index(target) if isinstance(target, str) else int(target)
        items.append({"id": f"{task_name}-{n}", "question": task.doc_to_text(doc), "choices": list(choices),
                      "answer": answer})
    return Suite(spec, "mc", items, f"lm_eval:{task_name}")
