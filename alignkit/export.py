"""`alignkit export merge --run ID --out DIR`: an adapter merged into full-precision base weights, checked.

A QLoRA adapter was trained against the 4-bit base, so it is merged into that base de-quantized (what the
adapter actually saw), not into the original weights. Fidelity: KL(adapter-on-base ‖ merged) per token on
fixed prompts, max and mean, must stay under a bound.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from alignkit import models, runs
from alignkit.errors import TrainingFailed, UserError
from alignkit.recipe import ModelConfig

PROMPTS = ["Explain what a hash table is in two sentences.", "How do I kill a stuck process on Linux?",
           "Write a haiku about autumn rain.", "What is 17 times 23?"]


def kl_per_token(reference, candidate, tokenizer, prompts=PROMPTS) -> tuple[float, float]:
    """(max, mean) over prompt tokens of KL(reference ‖ candidate) between next-token distributions."""
    import torch

    values = []
    with torch.inference_mode():
        for prompt in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            p = torch.log_softmax(reference(input_ids=ids.to(reference.device)).logits.float(), -1)
            q = torch.log_softmax(candidate(input_ids=ids.to(candidate.device)).logits.float(), -1)
            values.append((p.exp() * (p - q)).sum(-1).flatten())
    allv = torch.cat(values)
    return float(allv.max()), float(allv.mean())


def merge(run_ref: str, out: str | Path, root: str | Path = "runs/demo", bound: float = 1e-3) -> dict:
    """Merge a run's adapter into its base, save safetensors + tokenizer, and check merge fidelity."""
    import torch

    run = runs.find_run(run_ref, root)
    if run.status != "completed" or not (run.adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{run.id}: not a completed run with an adapter ({run.status})")
    cfg = run.manifest.get("recipe", {}).get("model", {})
    base = cfg.get("base") or (run.manifest.get("base_model") or {}).get("spec")
    quantization = cfg.get("quantization", "none")
    tokenizer, _ = models.load_tokenizer(base)
    # The reference: exactly what training saw (quantized base + adapter).
    trained = models.load_adapter(models.load_model(ModelConfig(base=base, quantization=quantization)),
                                  run.adapter_dir, trainable=False).eval()
    full = models.load_model(ModelConfig(base=base, quantization=quantization, dtype="float32"))
    if quantization != "none":
        full = full.dequantize()  # the 4/8-bit weights the adapter was trained against, in float32
    merged = models.load_adapter(full, run.adapter_dir, trainable=False).merge_and_unload().eval()
    merged = merged.to(torch.float32)
    kl_max, kl_mean = kl_per_token(trained, merged, tokenizer)
    print(f"merge fidelity: KL per token max {kl_max:.2e}, mean {kl_mean:.2e} (bound {bound:g})")
    if kl_max > bound:
        raise TrainingFailed(f"merged model differs from adapter-on-base: max KL {kl_max:.2e} > {bound:g}; "
                             "nothing was written")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.config._name_or_path = models.canonical_id(base)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"run": run.id, "out": str(out), "kl_max": kl_max, "kl_mean": kl_mean, "bound": bound}


def register(sub) -> None:
    """Add `alignkit export merge` to the CLI."""
    p = sub.add_parser("export", help="export adapters for serving").add_subparsers(dest="export_command",
                                                                                      required=True)
    m = p.add_parser("merge", help="merge a run's adapter into full-precision base weights (safetensors)")
    m.add_argument("--run", required=True, help="run id (in --dir) or run directory")
    m.add_argument("--out", required=True, help="output folder for the merged model")
    m.add_argument("--dir", default="runs/demo", help="the run folder")
    m.add_argument("--max-kl", type=float, default=1e-3, help="fidelity bound on the max per-token KL")
    m.add_argument("--debug", action="store_true")
    m.set_defaults(handler=_merge_command)


def _merge_command(args: argparse.Namespace) -> int:
    result = merge(args.run, args.out, args.dir, args.max_kl)
    print(f"merged: {result['out']}")
    return 0
