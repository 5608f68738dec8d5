"""SFT throughput: alignkit's SFT stage vs a plain TRL script, same records, model, LoRA, batch size, epochs.

    python bench/sft_throughput.py [--records 160] [--epochs 1] [--batch-size 8] [--micro-batch 4]

The optimizer batch is the same in every arm (8 sequences); alignkit's sft.yaml reaches it with micro-batches
of 4 accumulated twice (its peak RSS is one micro-batch's activations), and a third arm runs all 8 at once.
A fourth arm is sft.yaml again with TRL's fused LM head kept (ALIGNKIT_LM_HEAD=trl), which on CPU scores every
position: the ratio to it is what alignkit/lm_head.py buys.

Each arm runs in its own subprocess (so peak RSS is its own). Both train on the same prompt/completion
records; afterwards one evaluator computes both adapters' completion-only validation loss the same way.
Prints non-padding tokens/s, peak RSS and the ratios, and writes bench/results/sft_throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN = r'''
# A plain TRL SFT script as TRL's docs show it; the only change is use_cpu=True, which TRL asks for on
# a machine without a GPU (its bf16=True default otherwise refuses to start).
import json, resource, sys, time
from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer
model, train_file, out, epochs, bs, lr = sys.argv[1:7]
dataset = load_dataset("json", data_files=train_file, split="train")
trainer = SFTTrainer(
    model=model,
    train_dataset=dataset,
    args=SFTConfig(output_dir=out, num_train_epochs=float(epochs), per_device_train_batch_size=int(bs),
                   learning_rate=float(lr), use_cpu=True, report_to="none", save_strategy="no", seed=42),
    peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
)
t = time.time()
trainer.train()
seconds = time.time() - t
trainer.model.save_pretrained(out + "/adapter")
print("RESULT " + json.dumps({"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

OURS = r'''
import json, resource, sys, time
from alignkit.recipe import load_recipe
from sft.config import SFTRecipe
from sft.train import run
recipe_path, train_file, out, epochs, bs, lr = sys.argv[1:7]
recipe = load_recipe(recipe_path, SFTRecipe, [f"data.train={train_file}", "data.val_fraction=0", "data.test_fraction=0",
    "data.dedup=false", "data.near_dedup=false", f"output.dir={out}", "tracking.backend=none",
    # max_steps=-1: the epochs decide, as in the plain script (sft.yaml caps the demo at 36 steps)
    f"train.num_train_epochs={epochs}", "train.max_steps=-1", f"train.per_device_train_batch_size={bs}", f"train.learning_rate={lr}",
    "train.save_strategy=no", "output.resume=never", *sys.argv[7:]])
t = time.time()
result = run(recipe)
seconds = result.manifest["metrics"]["train_runtime_s"]
print("RESULT " + json.dumps({"seconds": seconds, "adapter": str(result.adapter_dir),
                              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def records(n: int) -> tuple[list[dict], list[dict]]:
    """n train and n/4 val prompt/completion rows from the bundled demo data (hash split, so stable)."""
    from alignkit.curation import split_of
    from alignkit.data import load_conversations, prompt_key, to_prompt_completion

    conversations, _ = load_conversations([str(ROOT / "recipes/data/sft_demo.jsonl")])
    train, val = [], []
    for c in conversations:
        rows = to_prompt_completion(c)
        (val if split_of(prompt_key(c), 0.2, 0.0, "bench") == "val" else train).extend(rows)
    return train[:n], val[: max(8, n // 4)]


def run_arm(code: str, args: list[str], **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", **env})
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"arm failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def val_loss(model_dir: str, adapter: str, rows: list[dict]) -> float:
    """Completion-only mean token NLL on the val rows, the same code for both adapters."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            targets = ids[0, 1:]
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[len(p_ids) - 1:]
            total, count = total + nll.sum().item(), count + nll.numel()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=160)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--micro-batch", type=int, default=4, help="alignkit's sequences per forward (sft.yaml: 4)")
    args = parser.parse_args()

    from alignkit.models import load_tokenizer, resolve
    from bench.run_all import cpu_kind

    model_dir = resolve("smollm2-135m-instruct")
    tok, _ = load_tokenizer("smollm2-135m-instruct")
    train, val = records(args.records)
    tokens = sum(len(tok(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False),
                         add_special_tokens=False)["input_ids"]) for r in train)
    tokens = int(tokens * args.epochs)
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train))
    common = [str(train_file), "", str(args.epochs), str(args.batch_size), str(args.lr)]

    plain = run_arm(PLAIN, [model_dir, common[0], str(work / "plain"), *common[2:]])
    plain["adapter"] = str(work / "plain" / "adapter")
    # sft.yaml's batch: micro-batches of `--micro-batch` sequences, accumulated to the same optimizer batch.
    accumulate = max(1, args.batch_size // args.micro_batch)
    ours_args = [str(ROOT / "recipes/smollm2/sft.yaml"), common[0], str(work / "ours"), *common[2:],
                 f"train.per_device_train_batch_size={args.batch_size // accumulate}",
                 f"train.gradient_accumulation_steps={accumulate}"]
    ours = run_arm(OURS, ours_args)
    # The whole batch in one forward: faster, but its activations are the peak.
    whole_args = [*ours_args[:2], str(work / "whole"), *ours_args[3:6], "train.gradient_accumulation_steps=1"]
    whole = run_arm(OURS, whole_args)
    # The same as `ours` with TRL's fused LM head kept (alignkit/lm_head.py is what differs)
    trl_head = run_arm(OURS, [*ours_args[:2], str(work / "trl-head"), *ours_args[3:]], ALIGNKIT_LM_HEAD="trl")
    arms = [("plain TRL", plain), (f"alignkit (sft.yaml: {args.batch_size // accumulate} × {accumulate} accumulated)", ours),
            (f"alignkit, {args.batch_size} sequences in one forward", whole),
            ("alignkit (sft.yaml) with TRL's LM head (ALIGNKIT_LM_HEAD=trl)", trl_head)]
    for _, arm in arms:
        arm["tokens_per_s"] = tokens / arm["seconds"]
        arm["val_loss"] = val_loss(model_dir, arm["adapter"], val)

    speed = ours["tokens_per_s"] / plain["tokens_per_s"]
    rss = ours["max_rss_mb"] / plain["max_rss_mb"]
    dloss = ours["val_loss"] / plain["val_loss"] - 1
    rows = ["| arm | tokens/s | vs plain | peak RSS (MB) | vs plain | val loss |", "|---|---|---|---|---|---|"]
    rows += [f"| {name} | {a['tokens_per_s']:.0f} | {a['tokens_per_s'] / plain['tokens_per_s']:.2f}x | "
             f"{a['max_rss_mb']:.0f} | {a['max_rss_mb'] / plain['max_rss_mb']:.2f} | {a['val_loss']:.4f} |"
             for name, a in arms]
    summary = (f"sft.yaml: speed ratio {speed:.2f}x (target >= 1.5x), RSS ratio {rss:.2f} (target <= 1.0), "
               f"val loss difference {dloss * 100:+.2f}% (target within 2%). The whole batch in one forward: "
               f"{whole['tokens_per_s'] / plain['tokens_per_s']:.2f}x at RSS {whole['max_rss_mb'] / plain['max_rss_mb']:.2f}. "
               f"The compact CPU LM head: {ours['tokens_per_s'] / trl_head['tokens_per_s']:.2f}x the speed of "
               f"TRL's fused head, RSS {ours['max_rss_mb'] / trl_head['max_rss_mb']:.2f}x.")
    text = "\n".join([
        "## SFT throughput (bench/sft_throughput.py)", "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {cpu_kind()}"
        f"{' (ONEDNN_MAX_CPU_ISA=' + os.environ['ONEDNN_MAX_CPU_ISA'] + ')' if 'ONEDNN_MAX_CPU_ISA' in os.environ else ''}; SmolLM2-135M-Instruct, LoRA r=16 "
        f"all-linear, {len(train)} prompt/completion records ({tokens} non-padding tokens), batch "
        f"{args.batch_size}, {args.epochs:g} epoch; {time.strftime('%Y-%m-%d')}", "", *rows, "", summary, ""])
    print(text)
    out = ROOT / "bench" / "results" / "sft_throughput.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
