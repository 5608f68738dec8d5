"""Continuous (iteration-level) batching over a Hugging Face causal LM and its `DynamicCache`.

A `Batch` is the running rows of one (adapter, sampling) group and their KV cache, left-padded to one length T:
`mask` (B × T, 1 where a cached position holds a real token) marks the padding, and each row carries the
position of its next token, counting only its own tokens, so RoPE never sees the padding. `add` prefills new
requests (left-padded among themselves) and merges their cache into the batch's, padding whichever is shorter
on the left; `step` runs one decode forward over all rows. A row that finished (EOS, its own max_tokens, its
client gone) leaves the cache at once (`Cache.batch_select_indices`), and leading columns that are padding in
every remaining row are cut off, so T never exceeds the longest row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FINISH = object()  # marks the end of a job's stream; the job's `result` then holds finish_reason and counts


@dataclass
class Job:
    """One chat request: its conversation, adapter, sampling, and a callback that receives text pieces."""

    conversation: list[dict]
    adapter: str | None
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    emit: Callable[[Any], None] = lambda piece: None  # called from the worker thread: str pieces, then FINISH
    cancelled: bool = False
    result: dict = field(default_factory=dict)

    @property
    def sampling(self) -> tuple:
        return (self.temperature > 0, round(self.temperature, 4), round(self.top_p, 4))

    @property
    def group(self) -> tuple:
        """Requests share a batch only when adapter and sampling settings are the same."""
        return (self.adapter, self.sampling)


class Row:
    """One request's generated tokens: emits only new text (holding back a trailing "\ufffd", a character still
    waiting for its next byte), and finishes at EOS, at the job's max_tokens, or once its client went away.
    `on_done(job)` runs once when the row ends, however it ends."""

    def __init__(self, job: Job, tokenizer, eos_ids: set[int], on_done: Callable[[Job], None] | None = None):
        self.job, self.tokenizer, self.eos, self.on_done = job, tokenizer, eos_ids, on_done
        self.tokens: list[int] = []
        self.text = ""
        self.done = False

    def push(self, token: int) -> bool:
        """Take the row's next token; True once the row is finished."""
        if self.done:
            return True
        if token in self.eos:
            self.finish("stop")
            return True
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(self.text):
            self.job.emit(text[len(self.text):])
            self.text = text
        if len(self.tokens) >= self.job.max_tokens or self.job.cancelled:
            self.finish("cancelled" if self.job.cancelled else "length")
        return self.done

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if len(text) > len(self.text):
            self.job.emit(text[len(self.text):])
        self.job.result.update(finish_reason=reason, completion_tokens=len(self.tokens), text=text,
                               token_ids=list(self.tokens))
        self._end()

    def fail(self, error: str) -> None:
        if self.done:
            return
        self.done = True
        self.job.result.update(error=error)
        self._end()

    def _end(self) -> None:
        self.job.emit(FINISH)
        if self.on_done is not None:
            self.on_done(self.job)


class StaticRows:
    """`generate()`'s streamer and per-row stopping criterion for one static batch (the fallback for models
    whose cache `Batch` cannot merge): each row streams through its `Row` and stops on its own."""

    def __init__(self, rows: list[Row]):
        import torch

        self.rows = rows
        self.done = torch.zeros(len(rows), dtype=torch.bool)
        self.calls = 0
        self.steps = self.row_steps = 0  # decode forwards after the prefill, and the unfinished rows they carried

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 1:  # the first call carries the prompt ids
            return
        if self.calls > 2:  # the second carries the prefill's token
            self.steps += 1
            self.row_steps += int((~self.done).sum())
        for i, token in enumerate(value.view(-1).tolist()):
            if not self.done[i]:
                self.done[i] = self.rows[i].push(token)

    def end(self) -> None:
        for row in self.rows:
            row.finish("length")

    def __call__(self, input_ids, scores, **kwargs):  # StoppingCriteria: True where a row is finished
        return self.done.clone().to(input_ids.device)


def sampler(temperature: float, top_p: float, top_k: int | None) -> Callable:
    """logits (B × V) → next tokens (B): argmax when greedy, else what `generate(do_sample=True)` does with the
    same settings (temperature, top_k, top_p warpers, then one multinomial draw per row)."""
    import torch

    if temperature <= 0:
        return lambda logits: logits.float().argmax(-1)
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))

    def sample(logits):
        scores = logits.float()
        for warp in warpers:
            scores = warp(None, scores)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    return sample


def supports_merging(model) -> bool:
    """Whether `Batch` can hold this model's cache: every layer a plain (full-attention) `DynamicLayer`."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # an architecture whose cache this transformers cannot build from its config
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class PrefixCache:
    """The KV of the latest prompt prefilled per adapter, so a prompt that starts with the same tokens (the chat
    template's system block and turn header, in practice) prefills only the rest: a join costs less."""

    def __init__(self, min_tokens: int = 8):
        self.min_tokens = min_tokens
        self.entries: dict = {}  # adapter → (prompt ids, [(keys, values) per layer], each 1 × heads × len × dim)
        self.reused_tokens = 0

    def match(self, adapter, prompts: list[list[int]]):
        """(n, per-layer KV of the first n tokens) shared by every prompt (n < each prompt's length), or (0, None)."""
        entry = self.entries.get(adapter)
        if entry is None:
            return 0, None
        ids, kv = entry
        n = len(ids)
        for prompt in prompts:
            common = 0
            for a, b in zip(ids, prompt[:len(prompt) - 1]):  # at least the last token goes through the model
                if a != b:
                    break
                common += 1
            n = min(n, common)
        if n < self.min_tokens:
            return 0, None
        return n, [(k[..., :n, :], v[..., :n, :]) for k, v in kv]

    def store(self, adapter, prompt: list[int], cache, mask_row) -> None:
        import torch

        cols = torch.nonzero(mask_row).squeeze(1)  # that row's real positions
        self.entries[adapter] = (list(prompt), [(layer.keys[:1, :, cols, :], layer.values[:1, :, cols, :])  # copies
                                                for layer in cache.layers])

    def clear(self) -> None:
        self.entries.clear()


def _left_pad(x, width: int, dim: int):
    import torch.nn.functional as F

    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [missing, 0]  # F.pad counts dimensions from the last
    return F.pad(x, pad)


class Batch:
    """The running rows of one (adapter, sampling) group and their left-padded KV cache."""

    def __init__(self, group: tuple, sample: Callable, cache_kw: str = "cache", logits_to_keep: bool = True):
        self.group, self.adapter = group, group[0]
        self.sample, self.cache_kw, self.logits_to_keep = sample, cache_kw, logits_to_keep
        self.rows: list[Row] = []
        self.cache = None  # DynamicCache over B rows × T positions
        self.mask = None   # B × T long: 1 where the cached position is a real token of that row
        self.next = None   # B: the token each row feeds at the next step (sampled, not yet in the cache)
        self.pos = None    # B: its position (the row's own length so far)

    def __len__(self) -> int:
        return len(self.rows)

    def _forward(self, model, ids, mask, pos, cache):
        kwargs = {self.cache_kw: cache, "use_cache": True}
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)
        return out.logits[:, -1, :]

    def add(self, model, tokenizer, rows: list[Row], prefix: PrefixCache | None = None) -> None:
        """Prefill `rows` (one forward; with `prefix`, only what follows the tokens they share with the latest
        prompt), stream each one's first token, and merge the unfinished ones in."""
        import torch
        from transformers import DynamicCache

        texts = [tokenizer.apply_chat_template(r.job.conversation, tokenize=False, add_generation_prompt=True)
                 for r in rows]
        prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
        shared, kv = prefix.match(self.adapter, prompts) if prefix is not None else (0, None)
        rest = [p[shared:] for p in prompts]
        width, device, pad = max(len(r) for r in rest), model.device, tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)  # left padding
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) + shared  # what generate() gives left-padded rows
        if kv is None:
            cache = DynamicCache(config=model.config)
        else:  # every row starts with the shared tokens' KV, then its own (left-padded) rest
            n = len(rows)
            cache = DynamicCache([(k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous())
                                  for k, v in kv], config=model.config)
            mask = torch.cat([mask.new_ones(n, shared), mask], dim=1)
            prefix.reused_tokens += shared * n
        first = self.sample(self._forward(model, ids, mask, pos, cache))
        if prefix is not None:
            prefix.store(self.adapter, prompts[0], cache, mask[0])
        keep = [i for i, (row, token) in enumerate(zip(rows, first.tolist())) if not row.push(token)]
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask, first = mask[index], first[index]
        self._merge(cache, mask, first, mask.sum(-1), [rows[i] for i in keep])

    def _merge(self, cache, mask, next_tokens, pos, rows: list[Row]) -> None:
        import torch

        if self.cache is None:
            self.cache, self.mask, self.next, self.pos, self.rows = cache, mask, next_tokens, pos, rows
            self._trim()
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.next = torch.cat([self.next, next_tokens])
        self.pos = torch.cat([self.pos, pos])
        self.rows = self.rows + rows
        self._trim()

    def step(self, model) -> int:
        """One decode forward over every row; finished rows leave. Returns the rows the step carried."""
        import torch

        n = len(self.rows)
        mask = torch.cat([self.mask, self.mask.new_ones(n, 1)], dim=1)
        tokens = self.sample(self._forward(model, self.next[:, None], mask, self.pos[:, None], self.cache))
        self.mask, self.next, self.pos = mask, tokens, self.pos + 1
        self.keep([i for i, (row, token) in enumerate(zip(self.rows, tokens.tolist())) if not row.push(token)])
        return n

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices` (in the cache too)."""
        import torch

        if len(indices) == len(self.rows):
            return
        if not indices:
            self.rows, self.cache, self.mask, self.next, self.pos = [], None, None, None, None
            return
        index = torch.tensor(indices, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.next, self.pos = self.mask[index], self.next[index], self.pos[index]
        self.rows = [self.rows[i] for i in indices]
        self._trim()

    def _trim(self) -> None:
        import torch

        first = int(torch.nonzero(self.mask.any(0))[0])  # the first column some row really uses
        if first:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self.mask = self.mask[:, first:]

    def fail(self, error: str) -> None:
        for row in self.rows:
            row.fail(error)
        self.keep([])
