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


# A text shorter than this many words is contaminated only by an identical one: shorter phrases recur by chance.
MIN_CONTAINED = 5


def _segments(text: str | Sequence[str]) -> list[list[str]]:
    """The normalized words of a text, or of each part of one given as parts (no n-gram spans two parts)."""
    parts = [text] if isinstance(text, str) else list(text)
    return [words for words in (normalize(t).split() for t in parts) if words]


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """Word n-grams of normalized text; a text shorter than n words (but at least MIN_CONTAINED) yields itself
    as one gram. Comparing gram sets alone misses a short text inside a longer one: use Overlap for that."""
    words = normalize(text).split()
    if len(words) < n:
        return {tuple(words)} if len(words) >= MIN_CONTAINED else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class Overlap:
    """Set index of reference texts for decontamination. A text overlaps them when
    - its normalized form (lower case, words only) equals a reference (or one part of one), at any length;
    - it shares a word n-gram (n = 13) with a reference;
    - it is shorter than n words (at least MIN_CONTAINED) and occurs whole, as consecutive words, in a
      reference: every n-gram with n = min(13, its length) is a reference's; or
    - a reference that short occurs whole in it.
    So two texts are contaminated when they share a 13-gram or the shorter one lies inside the other.
    A text or reference may be given as parts (e.g. the turns of a conversation): each part is matched alone."""

    def __init__(self, references: Iterable[str | Sequence[str]], n: int = 13):
        self.n = n
        self.exact: set[tuple[str, ...]] = set()
        self.grams: set[tuple[str, ...]] = set()
        self.short: dict[int, set[tuple[str, ...]]] = {}  # whole short references, by length
        self._refs: list[list[str]] = []
        self._of_length: dict[int, set[tuple[str, ...]]] = {}  # every L-gram of the references, built on demand
        for ref in references:
            for words in _segments(ref):
                self.exact.add(tuple(words))
                if len(words) >= n:
                    self.grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
                elif len(words) >= MIN_CONTAINED:
                    self.short.setdefault(len(words), set()).add(tuple(words))
                self._refs.append(words)

    def _grams_of_length(self, length: int) -> set[tuple[str, ...]]:
        if length not in self._of_length:
            self._of_length[length] = {tuple(w[i:i + length]) for w in self._refs for i in range(len(w) - length + 1)}
        return self._of_length[length]

    def hits(self, text: str | Sequence[str]) -> bool:
        """Whether the text (or any of its parts) overlaps a reference."""
        n = self.n
        for words in _segments(text):
            if tuple(words) in self.exact:
                return True
            if len(words) >= n and not self.grams.isdisjoint(tuple(words[i:i + n]) for i in range(len(words) - n + 1)):
                return True
            for length, whole in self.short.items():
                if length < len(words) and not whole.isdisjoint(
                        tuple(words[i:i + length]) for i in range(len(words) - length + 1)):
                    return True
            if MIN_CONTAINED <= len(words) < n and tuple(words) in self._grams_of_length(len(words)):
                return True
        return False


def contaminated(items: Sequence[T], key: Callable[[T], str | Sequence[str]], references: Iterable[str | Sequence[str]],
                 n: int = 13) -> list[int]:
    """Indices of records that overlap any reference text (eval prompts, answers): a shared n-gram, an identical
    normalized text, or the shorter of the two (≥ MIN_CONTAINED words) contained in the other (see Overlap)."""
    index = Overlap(references, n)
    return [i for i, item in enumerate(items) if index.hits(key(item))]


# Texts training data must not share a 13-gram with: the top floor (cli, pipeline) registers the eval suites'
# texts here; the spine never reads eval/ itself.
_references: Callable[[], list[str]] | None = None


def use_references(provider: Callable[[], list[str]] | None) -> None:
    """Register where decontamination references come from (a function returning texts), or None for none."""
    global _references
    _references = provider


def reference_texts() -> list[str]:
    """The registered decontamination references (empty when nothing registered them)."""
    return list(_references()) if _references is not None else []


def curate(items: list[T], cfg, report: dict, *, text: Callable[[T], str],
           fit: Callable[[list[T], dict], list[T]], references: Sequence[str] | None = None) -> list[T]:
    """The curation steps of a recipe's `data:` section, each counted in `report`: exact dedup → near dedup →
    `fit` (the caller's length filter, which counts its own drops) → decontamination against the references
    (Overlap: a shared 13-gram, an identical or a contained short text; counted always, dropped with
    data.decontaminate). `references` default to the registered ones."""
    if cfg.dedup:
        items, report["exact_duplicates"] = exact_dedup(items, text)
    if cfg.near_dedup:
        items, report["near_duplicates"] = near_dedup(items, text, threshold=cfg.near_dedup_threshold)
    items = fit(items, report)
    refs = reference_texts() if references is None else references
    if cfg.decontaminate and not refs:
        from alignkit.errors import UserError

        raise UserError("data.decontaminate is set but no eval texts are known to compare with; run the stage "
                        "through `alignkit <stage>` (which registers the eval suites) or set data.decontaminate=false")
    hits = set(contaminated(items, text, refs)) if refs else set()
    report["contaminated_13gram"] = len(hits)
    if cfg.decontaminate and hits:
        items = [it for i, it in enumerate(items) if i not in hits]
        report["dropped_contaminated"] = len(hits)
    return items


def split(items: Sequence[T], key: Callable[[T], str], cfg) -> dict[str, list[T]]:
    """hash_split with a `data:` section's fractions and salt."""
    return hash_split(items, key, cfg.val_fraction, cfg.test_fraction, cfg.split_salt)


def input_sha256s(files: Iterable[str]) -> dict[str, str]:
    """sha256 of every local input file (a Hub dataset id has none)."""
    from alignkit.runs import sha256_file

    return {f: sha256_file(f) for f in files if Path(f).is_file()}


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
