"""Model-facing scorers: log-likelihood multiple choice (as lm-evaluation-harness), perplexity, KL from base.

All three run left-padded batches through one forward and read log-probabilities only at the positions
that predict the continuation (`logits_to_keep`), so the 49k-word output layer is not applied to the
whole context.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

CHOICE_DELIMITER = " "  # lm-eval's target_delimiter: continuation = " " + choice


def arm_context(model, arm: str):
    """The model as an arm sees it: base and prompted arms run with the adapter disabled (one copy of the weights)."""
    if arm != "adapter" and hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()


@contextlib.contextmanager
def generation_context(model, arm: str):
    """arm_context for generation. The adapter arm generates with the LoRA weights folded into the base layers
    (peft's merge_adapter, undone on exit): as fast as the bare base, where an unmerged LoRA adds ~35% per
    token on CPU. Skipped for quantized bases, where folding into 4/8-bit weights would round them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else None
    quantized = getattr(base, "hf_quantizer", None) is not None or getattr(base, "is_loaded_in_4bit", False)
    if arm != "adapter" or base is None or quantized:
        with arm_context(model, arm):
            yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def resolve_precision(precision: str) -> str:
    """'auto' → 'bfloat16' where bf16 is native (the same test as the training stages' bf16 default), else 'float32'."""
    if precision != "auto":
        return precision
    from alignkit.lifecycle import precision_defaults

    return "bfloat16" if precision_defaults()["bf16"] else "float32"


def precision_context(model, precision: str):
    """bf16 autocast on the model's device for teacher-forced scoring, or nothing for float32."""
    import torch

    if resolve_precision(precision) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def chat_context(tokenizer, question: str | list[dict], system_prompt: str | None = None) -> str:
    """The chat-formatted prompt (with the generation prompt) a continuation is scored after."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else list(question)
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m["role"] != "system"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's _encode_pair: trailing context whitespace moves to the continuation; the continuation's
    tokens are those of (context + continuation) after the context's tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def _batches(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def continuation_logprobs(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], full: bool = False):
    """For each (context ids, continuation ids): log-softmax at the positions predicting the continuation.

    Rows are left-padded so every continuation ends at the last column. Returns a list of tensors,
    [len(cont)] token log-probs (or [len(cont), vocab] full distributions when `full`).
    """
    import torch

    rows = [(ctx + cont)[:-1] for ctx, cont in pairs]
    width = max(len(r) for r in rows)
    keep = max(len(cont) for _, cont in pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=keep).logits.float()
    logp = torch.log_softmax(logits, dim=-1).cpu()
    out = []
    for i, (_, cont) in enumerate(pairs):
        row = logp[i, keep - len(cont):]
        out.append(row if full else row.gather(-1, torch.tensor(cont).unsqueeze(-1)).squeeze(-1))
    return out


def _packed_forward(model, rows: list[tuple[list[int], list[list[int]]]], prefix=None):
    """One forward over items packed as rows: context, then every choice's continuation after it.

    Each choice's tokens attend to the shared context and to their own earlier tokens only (a 4D mask)
    and take positions as if they followed the context directly, so a row scores every choice exactly
    as a separate context+choice sequence would, while the context is computed once. `prefix` =
    (n tokens, KV cache of those tokens for one row): a context start every row shares (the chat
    template's default system turn), computed once per suite instead of once per item. Returns, per
    row, the token log-probs of each continuation.
    """
    import copy

    import torch

    n_pre = prefix[0] if prefix else 0
    rows = [(ctx[n_pre:], conts) for ctx, conts in rows]

    layout = []  # per row: (token ids, position ids, segment starts)
    for ctx, conts in rows:
        ids, pos, starts = list(ctx), list(range(n_pre, n_pre + len(ctx))), []
        for cont in conts:
            starts.append(len(ids))
            ids += cont[:-1]  # the last token of a choice predicts nothing we need
            pos += range(n_pre + len(ctx), n_pre + len(ctx) + len(cont) - 1)
        layout.append((ids, pos, starts))
    width = max(len(ids) for ids, _, _ in layout)
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, ((ctx, conts), (ids, pos, starts)) in enumerate(zip(rows, layout)):
        n_ctx = len(ctx)
        input_ids[r, :len(ids)] = torch.tensor(ids)
        positions[r, :len(pos)] = torch.tensor(pos)
        allowed[r, :n_ctx, :n_ctx] = causal[:n_ctx, :n_ctx]
        for start, cont in zip(starts, conts):
            end = start + len(cont) - 1
            allowed[r, start:end, :n_ctx] = True
            allowed[r, start:end, start:end] = causal[:end - start, :end - start]
        for q in range(len(ids), width):  # padding attends to itself only (no fully masked row)
            allowed[r, q, q] = True
    cache = None
    if n_pre:  # every row also sees the shared prefix
        allowed = torch.cat([torch.ones((len(rows), width, n_pre), dtype=torch.bool), allowed], dim=-1)
        cache = copy.deepcopy(prefix[1])
        cache.batch_repeat_interleave(len(rows))
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    # token 0 of every choice is predicted at the context's last position, token j at the choice's j-1
    wheres = [[[len(ctx) - 1] + list(range(start, start + len(cont) - 1)) for start, cont in zip(starts, conts)]
              for (ctx, conts), (_, _, starts) in zip(rows, layout)]
    device = next(model.parameters()).device
    row_of = torch.tensor([r for r, ws in enumerate(wheres) for w in ws for _ in w], device=device)
    col_of = torch.tensor([q for ws in wheres for w in ws for q in w], device=device)
    inputs = dict(input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                  past_key_values=cache, use_cache=cache is not None)
    with torch.inference_mode():
        parts = _decoder_and_head(model)
        if parts:  # the output layer only where a choice token is predicted (~1/3 of the positions)
            hidden = parts[0](**inputs).last_hidden_state
            logits = parts[1](hidden[row_of, col_of])
        else:
            logits = model(**inputs).logits[row_of, col_of]
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    out, k = [], 0
    for ws, (_, conts) in zip(wheres, rows):
        scores = []
        for w, cont in zip(ws, conts):
            scores.append(logp[torch.arange(k, k + len(w)), cont])
            k += len(w)
        out.append(scores)
    return out


# Families whose logits are exactly lm_head(decoder(...).last_hidden_state): no soft-capping or logit scale.
PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2"}


def _decoder_and_head(model):
    """(decoder, output layer) of a plain causal LM (through a PEFT wrapper), or None: then full logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD:
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


def _shared_prefix(model, contexts: list[list[int]]):
    """(n, KV cache) of the token prefix all contexts share (at least 8 tokens), or None."""
    import torch

    if len(contexts) < 2:
        return None
    n = min(len(c) for c in contexts) - 1  # each row keeps ≥ 1 context token: it predicts the first choice token
    first = contexts[0]
    for c in contexts[1:]:
        k = 0
        while k < n and c[k] == first[k]:
            k += 1
        n = k
    if n < 8:
        return None
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([first[:n]], device=device), use_cache=True)
    return n, out.past_key_values


def score_mc(model, tokenizer, items: Sequence[dict], system_prompt: str | None = None, batch_items: int = 8,
             progress=None) -> list[dict]:
    """Per item: log-likelihood of each choice, acc (argmax ll) and acc_norm (argmax ll / byte length).

    As lm-evaluation-harness: context = chat-formatted question, continuation = " " + choice (tokens of
    context+continuation after the context's), acc_norm divides by the continuation's length in UTF-8
    bytes. One forward per item with its choices batched; the context is shared by the choices of a
    row (see _packed_forward), and `batch_items` items are rows of the same forward.
    """
    encoded = []
    for item in items:
        context = chat_context(tokenizer, item["question"], system_prompt)
        pairs = [encode_pair(tokenizer, context, CHOICE_DELIMITER + c) for c in item["choices"]]
        encoded.append((pairs[0][0], [cont for _, cont in pairs]))
    prefix = _shared_prefix(model, [ctx for ctx, _ in encoded])
    # Rows of similar length share a forward (padding measured 21% of the MC suite's batches unsorted, 3% sorted).
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]) + sum(len(c) for c in encoded[i][1]))
    results: list[dict | None] = [None] * len(items)
    for start in range(0, len(items), batch_items):
        batch = order[start:start + batch_items]
        for i, scores in zip(batch, _packed_forward(model, [encoded[i] for i in batch], prefix)):
            item = items[i]
            ll = [float(lp.sum()) for lp in scores]
            lengths = [len((CHOICE_DELIMITER + c).encode("utf-8")) for c in item["choices"]]
            norm = [x / n for x, n in zip(ll, lengths)]
            pred, pred_norm = max(range(len(ll)), key=ll.__getitem__), max(range(len(norm)), key=norm.__getitem__)
            results[i] = {"id": item["id"], "ll": ll, "pred": pred, "pred_norm": pred_norm,
                          "acc": int(pred == item["answer"]), "acc_norm": int(pred_norm == item["answer"])}
        if progress is not None:
            progress(len(batch))
    return results


def score_perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 512,
                     token_budget: int = 2048) -> list[tuple[float, int]]:
    """Per text: (summed negative log-likelihood, number of predicted tokens); the first token is given."""
    # the tokenizer's own convention: a BOS where it adds one (then every word is predicted), else the
    # first token is given (SmolLM2 adds none; its <|im_start|> "BOS" opens a chat turn, not a text)
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    out: list[tuple[float, int] | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    i = 0
    while i < len(order):
        size = 1
        while i + size < len(order) and (size + 1) * len(encoded[order[i + size]]) <= token_budget:
            size += 1
        chunk = order[i:i + size]
        # scoring the whole text after its first token, as a context/continuation pair
        pairs = [(encoded[j][:1], encoded[j][1:]) for j in chunk]
        for j, lp in zip(chunk, continuation_logprobs(model, tokenizer, pairs)):
            out[j] = (float(-lp.sum()), int(lp.numel()))
        i += size
    return out  # type: ignore[return-value]


def score_kl(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 4) -> list[tuple[float, int]]:
    """Per prompt: (summed KL(adapter ‖ base) over the reply's tokens, number of tokens).

    The same model object scores both: once as is, once under peft's disable_adapter().
    """
    if not hasattr(model, "disable_adapter"):
        raise ValueError("KL from base needs a model with an adapter")
    out = []
    for batch in _batches(list(zip(prompts, replies)), batch_size):
        pairs = []
        for prompt, reply in batch:
            ctx, cont = encode_pair(tokenizer, chat_context(tokenizer, prompt), reply or tokenizer.eos_token)
            pairs.append((ctx, cont or [tokenizer.eos_token_id]))
        adapted = continuation_logprobs(model, tokenizer, pairs, full=True)
        with model.disable_adapter():
            base = continuation_logprobs(model, tokenizer, pairs, full=True)
        for p, q in zip(adapted, base):
            kl = (p.exp() * (p - q)).sum(-1)
            out.append((float(kl.sum()), int(kl.numel())))
    return out
