"""The LM head on CPU: TRL's fused head (every position, chunked) vs alignkit's compact head (labelled positions,
one projection), forward + backward on the same padding-free micro-batches of demo conversations.

    python bench/lm_head.py [--batches 8] [--reps 3]

SmolLM2-135M-Instruct + LoRA r=16 all-linear, micro-batches of 4 conversations packed in one row (sft.yaml's
shape), bf16 autocast where the CPU has native bf16 (as the SFT stage runs), float32 otherwise. The two arms
alternate, each timed `--reps` times over the same batches (the best is reported: the first pays warm-up).
Writes bench/results/lm_head.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def micro_batches(tokenizer, count: int):
    """`count` padding-free rows of 4 demo conversations; prompt (and system) tokens labelled -100."""
    import torch

    from alignkit.data import load_conversations, to_prompt_completion

    conversations, _ = load_conversations([str(ROOT / "recipes/data/sft_demo.jsonl")])
    rows = [r for c in conversations for r in to_prompt_completion(c)][: 4 * count]
    batches = []
    for start in range(0, len(rows), 4):
        ids, labels, positions = [], [], []
        for row in rows[start:start + 4]:
            prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            ids += f_ids
            labels += [-100] * len(p_ids) + f_ids[len(p_ids):]
            positions += list(range(len(f_ids)))
        batches.append({"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                        "position_ids": torch.tensor([positions])})
    return batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from alignkit import lm_head, models
    from alignkit.lifecycle import precision_defaults
    from alignkit.recipe import ModelConfig
    from bench.run_all import cpu_kind

    tokenizer, _ = models.load_tokenizer("smollm2-135m-instruct")
    arms = {}
    for name in ("TRL fused head", "alignkit compact head"):
        model = models.load_model(ModelConfig(base="smollm2-135m-instruct"))
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer asks for
        if name.startswith("alignkit"):
            assert lm_head.use_compact_lm_head(model)
        torch.manual_seed(0)
        arms[name] = models.attach_lora(model, {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"})
    batches = micro_batches(tokenizer, args.batches)
    tokens = sum(b["input_ids"].numel() for b in batches)
    labelled = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    bf16 = precision_defaults()["bf16"]

    seconds = {name: [] for name in arms}
    losses = {}
    for _ in range(args.reps):
        for name, model in arms.items():
            start, total = time.perf_counter(), 0.0
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(**batch, fused_lm_head=True).loss
                loss.backward()
                total += loss.item()
            model.zero_grad(set_to_none=True)
            seconds[name].append(time.perf_counter() - start)
            losses[name] = total / len(batches)
            print(f"{name}: {seconds[name][-1]:.2f} s, mean loss {losses[name]:.4f}", flush=True)

    trl_best = min(seconds["TRL fused head"])
    rows = ["| arm | best s (fwd+bwd) | all runs s | vs TRL | mean loss |", "|---|---:|---|---:|---:|"]
    rows += [f"| {name} | {min(s):.2f} | {' / '.join(f'{x:.1f}' for x in s)} | {min(s) / trl_best:.2f}x | "
             f"{losses[name]:.4f} |" for name, s in seconds.items()]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    text = "\n".join([
        "## LM head on CPU (bench/lm_head.py)", "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {cpu_kind()}"
        f"{f' (ONEDNN_MAX_CPU_ISA={isa})' if isa else ''}, {'bf16 autocast' if bf16 else 'float32'}; "
        f"SmolLM2-135M-Instruct + LoRA r=16; {len(batches)} padding-free micro-batches of 4 demo conversations, "
        f"{tokens} tokens of which {labelled} labelled ({labelled / tokens:.0%}); {time.strftime('%Y-%m-%d %H:%M')}",
        "", *rows, ""])
    print(text)
    out = ROOT / "bench" / "results" / "lm_head.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
