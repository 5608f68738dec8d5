"""On CPU, score only the labelled positions through the LM head, in one plain projection.

TRL's SFT, DPO and KTO trainers patch the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`)
that never builds the `(tokens, vocab)` logits. On CUDA it projects only the positions with a label, with
Triton kernels. Without Triton it projects *every* position (so Neuron does not recompile per batch) and
folds each 32k-vocabulary tile through ~10 elementwise torch passes, forward and again in the backward,
which recomputes the projection. On a 2-core CPU that is the slow path twice over: in the demo's SFT 40% of
the positions are prompt or system tokens whose scores are thrown away.

`use_compact_lm_head` replaces that head, on a model on CPU, with the plain computation on the labelled
positions only: one `lm_head` projection, `cross_entropy`, and the per-token statistics the trainers log
(entropy, top-1, mean logit, log Σp²) from the same logits without gradient. It returns TRL's own
`FusedCausalLMOutput`, so the trainers' loss and metrics code is untouched. Measured on SmolLM2-135M + LoRA
on the 2-core CPU (avx512_bf16): forward+backward of padding-free micro-batches of 4 demo conversations 0.74x
TRL's time under bf16 autocast, same loss to 4 decimals (bench/lm_head.py); the SFT stage 1.21x the tokens/s
at 0.90x the peak RSS, same val loss (bench/sft_throughput.py).

It materializes the labelled positions' logits, so it only takes a batch whose logits stay under
`MAX_LOGITS` elements (512 MB in float32; SmolLM2's 49,152-token vocabulary: 2,730 labelled tokens; a demo
micro-batch has ~650); a bigger batch goes through TRL's chunked head, whose memory does not grow with it.
`ALIGNKIT_LM_HEAD=trl` keeps TRL's head everywhere (for A/B runs).
"""

from __future__ import annotations

import os
import types

MAX_LOGITS = 2**27
# What TRL's head scales or caps the logits by (trl.trainer.utils.add_fused_lm_head); a model that sets any
# of them keeps TRL's head rather than this one reproducing each family's arithmetic.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def use_compact_lm_head(model) -> bool:
    """Swap TRL's fused head on `model` (the TRL-patched base model, not a PEFT wrapper) for the compact
    one when it runs on CPU; returns whether it did. A model TRL did not patch is left alone."""
    trl_forward = vars(model).get("forward")
    if os.environ.get("ALIGNKIT_LM_HEAD", "compact") == "trl" or trl_forward is None:
        return False
    if getattr(trl_forward, "__wrapped__", None) is not type(model).forward:
        return False  # not TRL's patch (or already ours)
    config = model.config.get_text_config()
    if any(getattr(config, k, None) is not None for k in _LOGIT_TRANSFORMS) or getattr(
            config, "output_router_logits", False):
        return False
    if model.get_output_embeddings().weight.device.type != "cpu":
        return False

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        # Everything that is not the plain next-token case goes to TRL's head (which forwards the
        # unfused call to the model's own forward).
        if not fused_lm_head or shift_labels is not None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        next_tokens = labels[:, 1:]
        mask = next_tokens != -100
        lm_head = self.get_output_embeddings()
        if int(mask.sum()) * lm_head.weight.shape[0] > MAX_LOGITS:
            return trl_forward(*args, fused_lm_head=True, labels=labels, num_items_in_batch=num_items_in_batch,
                               **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        return _score(lm_head, hidden[mask], next_tokens[mask], mask, num_items_in_batch)

    model.forward = types.MethodType(forward, model)
    return True


def _score(lm_head, hidden, targets, mask, num_items_in_batch):
    """TRL's FusedCausalLMOutput for the labelled positions' hidden states and next-token targets."""
    import torch
    import torch.nn.functional as F
    from trl.trainer.utils import FusedCausalLMOutput

    logits = lm_head(hidden).float()  # (labelled tokens, vocab); float32 like TRL's accumulators
    token_log_probs = -F.cross_entropy(logits, targets, reduction="none")
    with torch.no_grad():
        z = logits.detach()
        log_z = z.logsumexp(-1)
        probs = (z - log_z.unsqueeze(-1)).exp_()
        stats = {
            "entropy": log_z - torch.linalg.vecdot(probs, z),
            "log_sum_sq_probs": 2 * torch.linalg.vector_norm(probs, dim=-1).log(),
            "mean_logits": z.mean(-1),
            # argmax is the first maximum, so a tie with an earlier token is not top-1 (as in TRL's kernel)
            "is_top1": z.argmax(-1) == targets,
        }

    def per_position(values):  # zero where the label is -100; masked_scatter keeps the graph (TRL does the same)
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    log_probs = per_position(token_log_probs)
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, label_mask=mask,
                               **{name: per_position(v) for name, v in stats.items()})
