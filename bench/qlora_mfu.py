"""QLoRA SFT throughput and MFU on one CUDA GPU, on a >= 0.5B model, through alignkit's own SFT stage.

    python bench/qlora_mfu.py [--model DIR] [--steps 30] [--batch-size 8] [--seq-len 512] [--out FILE]

What it measures: non-padding tokens per second of `alignkit sft` (4-bit NF4 base, bf16 compute, LoRA r=16 on
all linear layers, activation checkpointing) over the timed steps (the first 5 are warm-up and not counted), the
peak GPU memory, and MFU = tokens/s x 6 x N / peak dense bf16 FLOP/s of the GPU. 6N per token counts the
forward pass (2N), the backward pass through the frozen weights to the activations (2N; LoRA's own weight
gradients are < 1% of N) and the forward recomputed by activation checkpointing (2N); N counts every parameter
of the base model, the embeddings included (a convention: it overstates MFU by the embedding share, ~8% here).

Without --model it builds a Llama-shaped model of 0.6B parameters (hidden 1024, 28 layers, MLP 5632, SmolLM2's
tokenizer) with random weights: the lent GPU machine has no Hub access, and throughput does not depend on the
weights' values. Runs in well under 5 minutes on an H100/H200 (30 steps of 8 x 512 tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Dense bf16 peak (no sparsity), from the vendors' data sheets: FLOP/s
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def build_model(folder: Path) -> Path:
    """A 0.6B Llama with SmolLM2's tokenizer and chat template, random weights, saved as a local model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignkit.models import load_tokenizer

    tokenizer, _ = load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=5632, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def records(path: Path, n: int, seq_len: int) -> None:
    """n conversations whose reply fills about seq_len tokens (words of the demo data, repeated)."""
    words = " ".join(json.loads(line)["messages"][-1]["content"]
                     for line in (ROOT / "recipes/data/sft_demo.jsonl").read_text().splitlines()[:50]).split()
    with open(path, "w") as f:
        for i in range(n):
            reply = " ".join(words[(i * 7 + j) % len(words)] for j in range(int(seq_len * 0.7)))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Question {i}: explain."},
                                             {"role": "assistant", "content": reply}]}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a local model folder (default: a random 0.6B Llama built here)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--out", default=str(ROOT / "bench/results/qlora_mfu.json"))
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("qlora_mfu: needs a CUDA GPU (bitsandbytes 4-bit training)")
    from alignkit import lifecycle as stage
    from alignkit.recipe import load_recipe
    from sft.train import STAGE

    tmp = Path(tempfile.mkdtemp(prefix="qlora-mfu-"))
    model_dir = Path(args.model) if args.model else build_model(tmp / "model")
    data = tmp / "data.jsonl"
    records(data, args.batch_size * args.steps, args.seq_len)
    recipe = load_recipe(ROOT / "recipes/smollm2/sft-qlora-gpu.yaml", STAGE.recipe, [
        f"model.base={model_dir}", f"data.train={data}", "data.near_dedup=false", "data.dedup=false",
        "data.val_fraction=0", "data.test_fraction=0", f"data.max_tokens={args.seq_len}",
        f"train.max_steps={args.steps}", f"train.per_device_train_batch_size={args.batch_size}",
        "train.logging_steps=1", "train.save_strategy=no", "train.num_train_epochs=1",
        f"output.dir={tmp / 'runs'}", "tracking.backend=none"])
    torch.cuda.reset_peak_memory_stats()
    started = time.time()
    run = stage.run(STAGE, recipe)
    wall = time.time() - started
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    steps = [r for r in rows if "num_tokens" in r and "loss" in r]
    warm = 5
    (t0, n0), (t1, n1) = (steps[warm - 1]["time"], steps[warm - 1]["num_tokens"]), (steps[-1]["time"],
                                                                                       steps[-1]["num_tokens"])
    tokens_per_s = (n1 - n0) / (t1 - t0)
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
                       .parameters())
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    result = {"gpu": name, "model": str(args.model or "random Llama 0.6B"), "params": n_params,
              "batch": args.batch_size, "seq_len": args.seq_len, "timed_steps": len(steps) - warm,
              "tokens_per_s": round(tokens_per_s, 1),
              "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "mfu": round(tokens_per_s * 6 * n_params / peak, 4) if peak else None, "peak_bf16_flops": peak,
              "wall_s": round(wall, 1), "final_loss": steps[-1]["loss"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
