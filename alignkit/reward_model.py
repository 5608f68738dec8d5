"""Scoring with a trained reward model: one API for RLHF (the reward), eval (win rate) and collect (pre-ranking).

    scorer = RewardScorer.load("runs/demo/reward-20261123-151502")      # a run dir or its adapter/
    scorer.score([[{"role": "user", "content": "Hi"}]], ["Hello! How can I help?"])   # → [1.73]

Text in, floats out: the scorer renders every (prompt, response) with the reward model's *own* chat template
and tokenizer, so a policy with another tokenizer can be scored; nothing token-level crosses the boundary.
A reward model whose run failed its gate (held-out accuracy not significantly above chance) is refused
unless the caller opts in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from alignkit.errors import UserError

# Reward models learn the score of the last real token; a sequence cut from the left keeps that token.
DEFAULT_MAX_TOKENS = 2048
# A reward model trained on base + SFT adapter keeps a copy of that SFT adapter here, inside its own adapter dir.
SFT_INIT_DIR = "sft_init"


def locate(ref: str | Path) -> tuple[Path, dict | None]:
    """(adapter dir, run manifest or None) for a reward run directory or an adapter directory."""
    path = Path(ref)
    if (path / "adapter" / "adapter_config.json").is_file():
        adapter = path / "adapter"
    elif (path / "adapter_config.json").is_file():
        adapter = path
    else:
        raise UserError(f"reward model '{ref}': not a reward run directory or adapter directory "
                        "(no adapter/adapter_config.json or adapter_config.json)")
    manifest_path = adapter.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return adapter, manifest


def check_manifest(ref: str | Path, manifest: dict | None, allow_failed_gate: bool = False) -> None:
    """Refuse a run that is not a completed reward run, or whose reward-model gate failed."""
    if manifest is None:
        return  # an adapter from elsewhere: nothing recorded to check
    if manifest.get("stage") != "reward":
        raise UserError(f"reward model '{ref}': this is a '{manifest.get('stage')}' run, not a reward-model run "
                        "(train one with `alignkit reward --config recipes/smollm2/reward.yaml`)")
    if manifest.get("status") != "completed":
        raise UserError(f"reward model '{ref}': its run is '{manifest.get('status')}', not completed")
    gate = manifest.get("reward_gate")
    if gate is None:
        raise UserError(f"reward model '{ref}': its manifest has no reward_gate verdict")
    if not gate.get("passed") and not allow_failed_gate:
        raise UserError(f"reward model '{ref}' failed its gate: held-out pairwise accuracy {gate.get('accuracy'):.3f} "
                        f"on {gate.get('n')} pairs, one-sided binomial p = {gate.get('p_value'):.3g} "
                        f"(needs accuracy > 0.5 with p < {gate.get('alpha')}); train it on more or cleaner pairs")


def base_spec(adapter: Path, manifest: dict | None) -> str:
    """The base-model spec to load under the adapter: the run's recorded spec, else adapter_config.json's id."""
    from alignkit import models

    if manifest and isinstance(manifest.get("base_model"), dict) and manifest["base_model"].get("spec"):
        return manifest["base_model"]["spec"]
    base = models.adapter_base(adapter)
    for alias, info in models.EMBEDDED.items():
        if info["hub_id"] == base:
            return alias
    return base


class RewardScorer:
    """A sequence-classification reward model with its own tokenizer; `score` is batched and order-preserving."""

    def __init__(self, model, tokenizer, *, source: str = "(in memory)", info: dict[str, Any] | None = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS):
        if not tokenizer.chat_template:
            raise UserError(f"reward model {source}: its tokenizer has no chat template, so conversations cannot be "
                            "rendered for it (save the tokenizer with its chat template next to the adapter)")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # The classification head pools the rightmost token that is not padding.
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.info = dict(info or {})
        self.max_tokens = max_tokens

    @classmethod
    def load(cls, ref: str | Path, *, allow_failed_gate: bool = False, merge: bool = True,
             dtype: str = "auto", max_tokens: int = DEFAULT_MAX_TOKENS) -> "RewardScorer":
        """Load a reward model from a reward run directory (or its adapter/), refusing one that failed its gate.

        `merge` folds the LoRA weights into the base for faster scoring (equal up to float32 rounding).
        """
        adapter, manifest = locate(ref)
        check_manifest(ref, manifest, allow_failed_gate)
        scorer = cls.from_adapter(adapter, base_spec(adapter, manifest), merge=merge, dtype=dtype,
                                  max_tokens=max_tokens, source=f"'{ref}'")
        scorer.info.update(gate=(manifest or {}).get("reward_gate"), run=(manifest or {}).get("run_id"))
        return scorer

    @classmethod
    def from_adapter(cls, adapter: str | Path, spec: str, *, merge: bool = True, dtype: str = "auto",
                     max_tokens: int = DEFAULT_MAX_TOKENS, source: str | None = None) -> "RewardScorer":
        """Load a reward adapter onto base model `spec` without any run checks (the reward stage measures its own)."""
        from peft import PeftModel
        from transformers import AutoTokenizer

        from alignkit import models
        from alignkit.recipe import ModelConfig

        adapter = Path(adapter)
        source = source or f"'{adapter}'"
        config = json.loads((adapter / "adapter_config.json").read_text())
        if config.get("task_type") != "SEQ_CLS" or "score" not in (config.get("modules_to_save") or []):
            raise UserError(f"reward model {source}: {adapter} is not a sequence-classification adapter with its "
                            "score head saved (task_type SEQ_CLS, modules_to_save [score]); without the head the "
                            "scores would be random")
        tokenizer = AutoTokenizer.from_pretrained(str(adapter))
        model_cfg = ModelConfig(base=spec, dtype=dtype)
        base = models.load_model(model_cfg, sequence_classification=True, num_labels=1)
        if (adapter / SFT_INIT_DIR).is_dir():
            base = merge_into_seq_cls(model_cfg, adapter / SFT_INIT_DIR, base)
        base.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token else tokenizer.eos_token_id
        try:
            model = PeftModel.from_pretrained(base, str(adapter))
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"reward model {source}: cannot load its adapter onto '{spec}' "
                            f"({str(e).splitlines()[0][:200]})") from None
        if merge:
            model = model.merge_and_unload()
        model.eval()
        return cls(model, tokenizer, source=source, info={"path": str(adapter), "base": spec},
                   max_tokens=max_tokens)

    def encode(self, prompt: list[dict], response: str) -> list[int]:
        """Token ids of prompt + assistant response, rendered with the reward model's own chat template."""
        messages = [dict(m) for m in prompt] + [{"role": "assistant", "content": response}]
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return list(ids[-self.max_tokens:])

    def score(self, prompts: Sequence[list[dict]], responses: Sequence[str], batch_size: int = 16,
              progress: bool = False) -> list[float]:
        """One scalar reward per (prompt messages, response text), in input order."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="scoring", unit="batch")
        scores = [0.0] * len(encoded)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        for batch in batches:
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, :len(encoded[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(batch):
                scores[i] = float(logits[row, 0].float())
        return scores


def merge_into_seq_cls(model_cfg, sft_adapter: str | Path, seq_model):
    """`seq_model` (a sequence-classification model) with a causal-LM (SFT) adapter merged into its backbone.

    peft cannot put a CAUSAL_LM adapter on a classifier, so the adapter is merged into a causal LM of the same
    base and that backbone's weights are copied over; the classifier's `score` head is left untouched.
    """
    from peft import PeftModel

    from alignkit import models

    causal = models.load_model(model_cfg)
    try:
        merged = PeftModel.from_pretrained(causal, str(sft_adapter)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{sft_adapter}: cannot load this adapter onto the model ({str(e).splitlines()[0][:200]})") \
            from None
    missing, unexpected = seq_model.base_model.load_state_dict(merged.base_model.state_dict(), strict=False)
    if missing or unexpected:
        raise UserError(f"{sft_adapter}: the SFT model's backbone does not match the reward model's "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return seq_model
