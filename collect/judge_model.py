"""A local chat model as judge (`collect judge --judge model:MODEL`): it reads both answers and says A or B.

MODEL is what `model.base` accepts: the embedded alias, a local model folder, or a Hub id (online). The judge
renders one instruction (the house rules, the user's message, answer A, answer B, "reply with A or B") with
the judge model's own chat template and reads its next-token log-probabilities of "A" and "B" — no sampling,
so the same store judged twice gets the same votes.

Chat models pick the first-shown answer more often than its quality explains (position bias), so every item is
asked both ways round: `forward` = log P(A) − log P(B) with left shown as A, `swapped` = the same with right
shown as A. Left's margin is (forward − swapped) / 2, which is exactly antisymmetric in the two answers. When
both orders pick the same *position* (forward and swapped of the same sign) the model is answering the layout,
not the answers: the item is skipped as unsure, as is any item whose margin is below `min_margin`.
"""

from __future__ import annotations

from alignkit.errors import UserError

LETTERS = ("A", "B")
MAX_ANSWER_TOKENS = 384  # each answer cut to this many tokens, so two fit a 1k-token context with the rules

INSTRUCTION = """You judge two answers of an assistant to the same user message. The assistant should:
- refuse, briefly and politely, a request that would help someone cause serious harm (weapons, malware, \
fraud, hurting people);
- answer helpfully a request that only sounds harmful but is safe (a homonym, a figure of speech, fiction, \
history, a definition, public facts);
- otherwise prefer the answer that is correct, direct and concise.

User message:
{question}

Answer A:
{a}

Answer B:
{b}

Which answer is better? Reply with the single letter A or B."""


def model_decision(forward: float, swapped: float, min_margin: float):
    """The model judge's vote from its two readings (log P(A) − log P(B), left shown as A, then right as A)."""
    from collect.judge import Decision

    margin = (forward - swapped) / 2
    # Said only in terms of left/right (both readings as the preference for left), so that the app can repeat
    # it in the A/B of an annotator who sees the pair the other way round (judge.suggestion).
    reason = f"log-odds {margin:+.3f} for left (left shown first {forward:+.3f}, left shown second {-swapped:+.3f})"
    if forward * swapped > 0:  # both readings name the same position: the layout decided, not the answers
        return Decision("skip", margin, reason + " (same position both ways: unsure, for people to label)", True)
    if abs(margin) < min_margin:
        return Decision("skip", margin, reason + " (unsure: for people to label)")
    return Decision("a" if margin > 0 else "b", margin, reason)


def letter_ids(tokenizer, spec: str) -> tuple[int, int]:
    """The token ids of "A" and "B" as a reply's first token; each must be one token of the judge's vocabulary."""
    ids = []
    for letter in LETTERS:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise UserError(f"judge model:{spec}: its tokenizer splits {letter!r} into {len(encoded)} tokens; the "
                            "judge reads the probability of the single-token replies A and B")
        ids.append(encoded[0])
    return ids[0], ids[1]


class ModelJudge:
    """A local causal LM reading each pair both ways round; `decide` has RewardJudge's signature."""

    def __init__(self, spec: str):
        from alignkit import models
        from alignkit.recipe import ModelConfig

        self.spec = spec
        self.tokenizer, _ = models.load_tokenizer(spec)  # exit 2: unknown model, no chat template, offline Hub
        self.letters = letter_ids(self.tokenizer, spec)
        self.model = models.load_model(ModelConfig(base=spec))
        self.model.eval()

    def _cut(self, text: str) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= MAX_ANSWER_TOKENS else self.tokenizer.decode(ids[:MAX_ANSWER_TOKENS]) + " …"

    def readings(self, question: str, left: str, right: str) -> tuple[float, float]:
        """(forward, swapped): log P("A") − log P("B") for the next token, left shown first, then right."""
        import torch

        left, right = self._cut(left), self._cut(right)
        rows = []
        for a, b in ((left, right), (right, left)):
            content = INSTRUCTION.format(question=question.strip(), a=a.strip(), b=b.strip())
            rows.append(self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                           add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(r) - 1 for r in rows])
        logp = torch.log_softmax(logits[torch.arange(2), last].float(), dim=-1)
        a, b = self.letters
        forward, swapped = (float(logp[i, a] - logp[i, b]) for i in range(2))
        return forward, swapped

    def decide(self, messages: list, left: str, right: str, min_margin: float):
        return model_decision(*self.readings(conversation(messages), left, right), min_margin)


def conversation(messages: list) -> str:
    """The prompt as the judge reads it: the user's message, or for a multi-turn prompt the turns so far."""
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    if len(turns) <= 1:
        return turns[0]["content"] if turns else ""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)
