"""Recipe loading: one YAML file (+ `key.sub=value` overrides) into a stage's frozen dataclasses.

Every problem ends in a UserError that names the file, the line, the key and what was expected;
unknown keys also list the nearest valid names. Sections marked `passthrough` in their field
metadata (e.g. `train:` → TRL's SFTConfig) keep their keys verbatim but are checked against the
names the target class accepts. The sections every stage shares (model, data, tracking, output; the `lora:`
and TRL `train:` passthrough names) are defined here too, at the end.
"""


from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import yaml

from alignkit.errors import UserError


def load_recipe(path: str | Path, recipe_cls: type, overrides: Iterable[str] = ()) -> Any:
    """Load the YAML at `path`, apply dotted overrides, and build `recipe_cls` from it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a recipe must be a mapping of sections (model:, data:, train: …)")
    for item in overrides:
        apply_override(data, item)
    return build(recipe_cls, data, _Where(str(path), lines))


def apply_override(data: dict, item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`1e-4`, `true`, `[a, b]`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override '{item}': expected key.sub=value, e.g. train.num_train_epochs=1")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    # YAML 1.1 reads yes/no/on/off as booleans; on a command line `train.eval_strategy=no` means the string.
    words = {"yes", "no", "on", "off", "y", "n"}
    value = raw.strip() if raw.strip().lower() in words else (yaml.safe_load(raw) if raw.strip() else "")
    node[parts[-1]] = _number(value)


def build(cls: type, data: Any, where: "_Where", prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys and value types."""
    if not isinstance(data, dict):
        raise UserError(f"{where.at(prefix)}: section '{prefix}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UserError(f"{where.at(_join(prefix, key))}: unknown key '{_join(prefix, key)}'{_nearest(key, fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        dotted = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{where.at(prefix)}: missing required key '{dotted}' ({f.metadata.get('help', '')})")
            continue
        value, tp = data[name], hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value if value is not None else {}, where, dotted)
        elif "passthrough" in f.metadata:
            kwargs[name] = check_passthrough(value or {}, f.metadata["passthrough"], where, dotted)
        else:
            kwargs[name] = _coerce(value, tp, where, dotted)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # a section's own __post_init__ validation
        raise UserError(f"{where.at(prefix)}: {e}") from None


def check_passthrough(value: Any, valid: Callable[[], Iterable[str]], where: "_Where", dotted: str) -> dict:
    """Keep a passthrough section verbatim, rejecting keys its target class does not accept."""
    if not isinstance(value, dict):
        raise UserError(f"{where.at(dotted)}: section '{dotted}' must be a mapping")
    names = set(valid())
    for key in value:
        if key not in names:
            raise UserError(f"{where.at(_join(dotted, key))}: unknown key '{_join(dotted, key)}'{_nearest(key, names)}")
    return {k: _number(v) for k, v in value.items()}


def to_dict(recipe: Any) -> dict:
    """The resolved recipe as plain data, for manifests and fingerprints."""
    return dataclasses.asdict(recipe)


def help_text(cls: type, prefix: str = "", instance: Any = None) -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every field of a recipe class, recursively; a nested section's defaults
    are those of the instance its parent builds (e.g. the SFT recipe's own data.train)."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, dotted = hints[f.name], _join(prefix, f.name)
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            try:
                default = f.default_factory()
            except (ValueError, TypeError):  # a section whose defaults alone do not validate
                default = "(required)"
        else:
            default = "(required)"
        if dataclasses.is_dataclass(tp):
            if f.metadata.get("help"):
                rows.append((dotted, f.metadata["help"], "(section)"))
            rows += help_text(tp, dotted, default if dataclasses.is_dataclass(default) else None)
        else:
            rows.append((dotted, f.metadata.get("help", ""), default))
    return rows


class _Where:
    """Maps a dotted key to `file:line` for error messages."""

    def __init__(self, file: str, lines: dict[str, int]):
        self.file, self.lines = file, lines

    def at(self, dotted: str) -> str:
        while dotted and dotted not in self.lines:  # stages[1].recipe → stages[1] → stages → ""
            dotted = dotted[:dotted.rindex("[")] if dotted.endswith("]") else dotted.rpartition(".")[0]
        line = self.lines.get(dotted)
        return f"{self.file}:{line}" if line else self.file


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = _join(prefix, str(key_node.value))
            lines[dotted] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, dotted))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
            lines.update(_key_lines(item, f"{prefix}[{i}]"))
    return lines


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _nearest(key: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(names), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; valid keys: {', '.join(sorted(names))}"


def _number(value: Any) -> Any:
    """YAML 1.1 reads `2e-4` as a string; turn such strings into numbers."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def _coerce(value: Any, tp: Any, where: _Where, dotted: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, dotted)
            except UserError as e:
                errors.append(e)
        raise errors[-1]
    if origin in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else None
        if items is None:
            raise UserError(f"{where.at(dotted)}: '{dotted}' must be a list, got {value!r}")
        if args and dataclasses.is_dataclass(args[0]):  # a list of sections, each checked like one
            coerced = [build(args[0], v, where, f"{dotted}[{i}]") for i, v in enumerate(items)]
        else:
            coerced = [_coerce(v, args[0], where, dotted) for v in items] if args else list(items)
        return tuple(coerced) if origin is tuple else coerced
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where.at(dotted)}: '{dotted}' must be a mapping, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where.at(dotted)}: '{dotted}' must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        value = _number(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        value = _number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise UserError(f"{where.at(dotted)}: '{dotted}' must be {tp.__name__}, got {value!r}")


# ---------------------------------------------------------------- the sections every stage shares


def require(ok: bool, message: str) -> None:
    """A section's own check, in its __post_init__: the recipe loader turns the ValueError into file:line + message."""
    if not ok:
        raise ValueError(message)


def at_least(section: str, **bounds: tuple[float, float]) -> None:
    """Lower bounds of a section's keys, in its __post_init__: `at_least("queue", overlap=(self.overlap, 1))`
    raises "queue.overlap must be at least 1" (the message names the key, as the recipe spells it)."""
    for key, (value, low) in bounds.items():
        require(value >= low, f"{section}.{key} must be at least {low}")


# `lora:` keys are peft's LoraConfig names, plus the short aliases used in our recipes.
LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
LORA_DEFAULTS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
# Not LoraConfig fields but how the adapter is optimised: peft's LoRA+ (B matrices at `ratio` x the lr;
# alignkit/models.py: loraplus_optimizer; README 'SFT specifics').
LORA_OPTIMIZER_KEYS = ("loraplus_lr_ratio",)


def lora_keys() -> list[str]:
    """Names `lora:` accepts: every peft LoraConfig field and our aliases."""
    from peft import LoraConfig

    return [f.name for f in dataclasses.fields(LoraConfig)] + list(LORA_ALIASES) + list(LORA_OPTIMIZER_KEYS)


def trl_keys(config_cls_name: str):
    """A passthrough validator: the field names of a TRL config class (SFTConfig, DPOConfig …)."""

    def names() -> list[str]:
        import trl

        return [f.name for f in dataclasses.fields(getattr(trl, config_cls_name))]

    return names


@dataclass(frozen=True)
class ModelConfig:
    base: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Embedded alias, local directory, or Hugging Face Hub id of the base model."},
    )
    quantization: Literal["none", "nf4", "int8"] = field(
        default="none", metadata={"help": "nf4 (+ double quant, bf16 compute) is QLoRA; int8; or none."}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "An existing PEFT adapter directory to continue (later stages)."}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights dtype; auto = float32 on CPU, bfloat16 on CUDA."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa, eager, flash_attention_2 …; None lets transformers choose."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})


@dataclass(frozen=True)
class DataConfig:
    train: str | list[str] = field(
        default="", metadata={"help": "File(s) (.jsonl .json .csv .parquet) or a Hub dataset id[:split]."}
    )
    val_fraction: float = field(default=0.1, metadata={"help": "Share of records hashed into the val split."})
    test_fraction: float = field(default=0.0, metadata={"help": "Share of records hashed into the test split."})
    split_salt: str = field(
        default="alignkit", metadata={"help": "Salt of the hash split; change it to draw a different split."}
    )
    dedup: bool = field(default=True, metadata={"help": "Drop exact duplicates (normalized text)."})
    near_dedup: bool = field(default=True, metadata={"help": "Drop near-duplicates (MinHash LSH)."})
    near_dedup_threshold: float = field(default=0.85, metadata={"help": "Jaccard similarity counted as near-dup."})
    min_tokens: int = field(default=4, metadata={"help": "Drop records shorter than this (tokens)."})
    max_tokens: int = field(default=1024, metadata={"help": "Drop records longer than this (tokens)."})
    decontaminate: bool = field(
        default=False, metadata={"help": "Drop training records sharing a 13-gram with a bundled eval suite."}
    )

    def __post_init__(self):
        require(bool(self.train), "data.train is required: a file path or a Hub dataset id")
        require(0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1,
                "data.val_fraction and data.test_fraction must be in [0, 1)")
        require(self.val_fraction + self.test_fraction < 1, "data.val_fraction + data.test_fraction must be below 1")

    @property
    def files(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)


@dataclass(frozen=True)
class TrackingConfig:
    backend: Literal["wandb", "none"] = field(
        default="wandb", metadata={"help": "wandb (offline without an API key) or none; metrics.jsonl is always kept."}
    )
    project: str = field(default="alignkit", metadata={"help": "W&B project."})
    group: str | None = field(default=None, metadata={"help": "W&B group (the pipeline sets one per pipeline)."})
    mode: Literal["auto", "online", "offline"] = field(
        default="auto", metadata={"help": "auto = online with WANDB_API_KEY set, else offline."}
    )


@dataclass(frozen=True)
class OutputConfig:
    dir: str = field(default="runs/demo", metadata={"help": "Run folder: stage runs and registry.json go here."})
    resume: Literal["auto", "never"] = field(
        default="auto", metadata={"help": "auto: continue an interrupted run of the same recipe from its checkpoint."}
    )
