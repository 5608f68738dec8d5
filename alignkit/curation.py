"""Data curation, each step reported in counts: dedup, near-dedup, length filter, hash split, decontamination."""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lower-case words only: whitespace, punctuation and case do not make two records different."""
    return " ".join(_WORD.findall(text.lower()))


def exact_dedup(items: Sequence[T], key: Callable[[T], str]) -> tuple[list[T], int]:
    """Keep the first of each group of records whose normalized text is identical; returns (kept, dropped)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        digest = hashlib.sha256(normalize(key(item)).encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(item)
    return kept, len(items) - len(kept)


def near_dedup(items: Sequence[T], key: Callable[[T], str], threshold: float = 0.85,
               num_perm: int = 128) -> tuple[list[T], int]:
    """Drop records whose word-3-gram Jaccard similarity to an earlier kept record is ≥ threshold (MinHash LSH)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept = []
    for i, item in enumerate(items):
        words = normalize(key(item)).split()
        shingles = {" ".join(words[j:j + 3]) for j in range(max(1, len(words) - 2))}
        mh = MinHash(num_perm=num_perm, seed=1)
        mh.update_batch([s.encode() for s in shingles])
        if lsh.query(mh):
            continue
        lsh.insert(str(i), mh)
        kept.append(item)
    return kept, len(items) - len(kept)


def split_of(key: str, val_fraction: float, test_fraction: float, salt: str = "alignkit") -> str:
    """'train' | 'val' | 'test' from a hash of the record's key alone.

    The split of a record depends only on its own key, so adding records never moves an existing
    one between splits (unlike a shuffled percentage split).
    """
    digest = hashlib.sha256(f"{salt}\x00{normalize(key)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def hash_split(items: Sequence[T], key: Callable[[T], str], val_fraction: float, test_fraction: float,
               salt: str = "alignkit") -> dict[str, list[T]]:
    """Group records into train/val/test with split_of."""
    splits: dict[str, list[T]] = {"train": [], "val": [], "test": []}
    for item in items:
        splits[split_of(key(item), val_fraction, test_fraction, salt)].append(item)
    return splits


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """Word n-grams of normalized text; a text shorter than n words yields itself as one gram."""
    words = normalize(text).split()
    if len(words) < n:
        return {tuple(words)} if len(words) >= 8 else set()  # very short texts match too easily
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def contaminated(items: Sequence[T], key: Callable[[T], str], references: Iterable[str],
                 n: int = 13) -> list[int]:
    """Indices of records that share an n-gram with any reference text (eval prompts, answers)."""
    grams: set[tuple[str, ...]] = set()
    for ref in references:
        grams |= ngrams(ref, n)
    return [i for i, item in enumerate(items) if ngrams(key(item), n) & grams]


def bundled_eval_files() -> list[Path]:
    """The eval suites shipped in eval/data, the default decontamination reference."""
    root = Path(__file__).resolve().parent.parent / "eval" / "data"
    return sorted(p for p in root.glob("*.jsonl") if p.name != "refusal_labelled.jsonl")


def eval_texts(files: Iterable[Path]) -> list[str]:
    """Every prompt/question/text field of JSONL eval files."""
    import json

    texts = []
    for f in files:
        for line in Path(f).read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                texts += [str(obj[k]) for k in ("prompt", "question", "text", "goal") if obj.get(k)]
    return texts


def percentiles(values: Sequence[int], qs: Sequence[int] = (5, 50, 95, 99)) -> "OrderedDict[str, float]":
    """Nearest-rank percentiles of a list of lengths."""
    ordered = sorted(values)
    out: OrderedDict[str, float] = OrderedDict()
    for q in qs:
        if not ordered:
            out[f"p{q}"] = 0
            continue
        rank = max(1, -(-q * len(ordered) // 100))  # ceil(q·n/100), nearest-rank method
        out[f"p{q}"] = ordered[rank - 1]
    out["max"] = ordered[-1] if ordered else 0
    return out
