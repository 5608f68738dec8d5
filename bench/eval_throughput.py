"""Eval throughput: alignkit's batched generation vs a plain per-prompt `model.generate` loop, and MC items/s.

    python bench/eval_throughput.py [--prompts 200] [--max-new-tokens 32] [--mc-items 220]

Same embedded model (SmolLM2-135M-Instruct), same 200 chat prompts (the bundled harmful + benign suites),
greedy decoding with the same max_new_tokens, one process, one after the other. Then the bundled
multiple-choice suite scored as `alignkit eval` scores it (lm-eval log-likelihood, choices batched).
Prints the ratio and writes bench/results/eval_throughput.md.
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


LOAD_BEFORE = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "n/a"


def plain_loop(model, tokenizer, prompts, max_new_tokens):
    """What a user writes without alignkit: one prompt at a time through model.generate."""
    import torch

    replies = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        replies.append(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mc-items", type=int, default=220)
    parser.add_argument("--mc-batch-items", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from alignkit.generate import Sampling, chat, load_policy
    from alignkit.recipe import ModelConfig
    from eval.config import SuiteSpec
    from eval.scoring import precision_context, resolve_precision, score_mc
    from eval.suites import load_suite

    model, tokenizer = load_policy(ModelConfig())
    items = load_suite(SuiteSpec(name="harmful")).items + load_suite(SuiteSpec(name="benign")).items
    prompts = [it["prompt"] for it in items][:args.prompts]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)

    t = time.perf_counter()
    batched = chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], sampling,
                   batch_size=args.batch_size)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    plain = plain_loop(model, tokenizer, prompts, args.max_new_tokens)
    t_plain = time.perf_counter() - t
    same = sum(a == b for a, b in zip(batched, plain))

    mc = load_suite(SuiteSpec(name="mc")).items[:args.mc_items]
    mc_rows = {}
    for precision in ("float32", resolve_precision("auto")):  # float32, then what the eval uses (generation.mc_precision: auto)
        if precision in mc_rows:
            continue
        with precision_context(model, precision):
            score_mc(model, tokenizer, mc[:args.mc_batch_items], batch_items=args.mc_batch_items)  # warm-up
            t = time.perf_counter()
            scored = score_mc(model, tokenizer, mc, batch_items=args.mc_batch_items)
            mc_rows[precision] = (time.perf_counter() - t, scored)
    auto = resolve_precision("auto")
    t_mc, scored = mc_rows[auto]
    acc = sum(s["acc"] for s in scored) / len(scored)
    mc_same = sum(a["pred"] == b["pred"] for a, b in zip(mc_rows["float32"][1], scored))

    ratio = t_plain / t_batched
    lines = [
        "# Eval throughput", "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M')}",
        "- model: embedded SmolLM2-135M-Instruct (float32, CPU)",
        f"- generation: {len(prompts)} chat prompts (bundled harmful + benign), greedy, "
        f"max_new_tokens={args.max_new_tokens}", "",
        "| arm | seconds | prompts/s |", "|---|---|---|",
        f"| alignkit `generate.chat` (batch {args.batch_size}, left padding, length-sorted) | {t_batched:.1f} | "
        f"{len(prompts) / t_batched:.2f} |",
        f"| plain per-prompt `model.generate` loop | {t_plain:.1f} | {len(prompts) / t_plain:.2f} |", "",
        f"**Speed-up: {ratio:.1f}×** (target ≥ 4×). Identical greedy answers: {same}/{len(prompts)} "
        "(batched float32 matmuls with padding can flip a near-tie token).", "",
        f"Multiple choice ({auto}, the eval's `generation.mc_precision: auto` on this machine): {len(mc)} "
        f"four-choice items in {t_mc:.1f} s = **{len(mc) / t_mc:.1f} items/s** (target ≥ 20 items/s), "
        f"{args.mc_batch_items} items per forward, acc {acc:.3f}; float32: "
        f"{len(mc) / mc_rows['float32'][0]:.1f} items/s, the same answer on {mc_same}/{len(mc)} items.", "",
        f"Both arms ran back to back in one process; load average before the run: {LOAD_BEFORE}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / "eval_throughput.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
