"""DPO step time and memory: alignkit's DPO stage vs a plain TRL DPO script; DPO's peak RSS vs the SFT stage's.

    python bench/dpo_step.py [--pairs 48] [--steps 8] [--batch-size 4]

Three arms, each in its own subprocess (so peak RSS is its own), on SmolLM2-135M-Instruct, LoRA r=16 all-linear:
  sft    alignkit's SFT stage as sft.yaml runs it, `--steps` steps: the memory yardstick, and the SFT adapter
         both DPO arms continue;
  plain  a plain TRL DPO script as TRL's docs show it (PeftModel with the SFT adapter trainable; TRL makes the
         frozen "ref" copy and scores it every step);
  ours   alignkit's DPO stage (reference log-probs precomputed once, step-0 check), same pairs/batch/steps/lr,
         activation recompute on (the stage's default and TRL's, so both arms pay it: like for like);
  ours without recompute: the same with dpo.yaml's own `activation_checkpointing: false` (the demo's
         setting: a faster step for more memory, reported beside the ratios, not in them);
  ours with TRL's LM head: `ours` with ALIGNKIT_LM_HEAD=trl (alignkit/lm_head.py off).
Step time = median gap between consecutive training-step logs after the first two (steady state); both arms
log every step. Writes bench/results/dpo_step.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN = r'''
# A plain TRL DPO script as TRL's docs show it, continuing an SFT adapter; the only change is use_cpu=True,
# which TRL asks for on a machine without a GPU. The timing callback is the benchmark's, not part of the script.
import json, resource, sys, time
from datasets import load_dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
model_path, adapter, train_file, out, steps, bs, lr = sys.argv[1:8]

class StepTimes(TrainerCallback):
    times = []
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.time())

model = AutoModelForCausalLM.from_pretrained(model_path)
model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
tokenizer = AutoTokenizer.from_pretrained(model_path)
train_dataset = load_dataset("json", data_files=train_file, split="train")
training_args = DPOConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(bs),
                          learning_rate=float(lr), max_length=512, logging_steps=1, save_strategy="no",
                          report_to="none", seed=42, use_cpu=True)
trainer = DPOTrainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                     callbacks=[StepTimes()])
t = time.time()
trainer.train()
print("RESULT " + json.dumps({"seconds": time.time() - t, "step_times": StepTimes.times,
                              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

OURS_DPO = r'''
import json, resource, sys, time
from alignkit.recipe import load_recipe
from preference.config import DPORecipe
from preference.train import run
recipe_path, adapter, train_file, out, steps, bs, lr = sys.argv[1:8]
t = time.time()
result = run(load_recipe(recipe_path, DPORecipe, sys.argv[8:] + [
    f"model.adapter={adapter}", f"data.train={train_file}", "data.val_fraction=0", "data.test_fraction=0",
    "data.dedup=false", "data.near_dedup=false", f"output.dir={out}", "tracking.backend=none", "output.resume=never",
    "data.max_tokens=512", "train.max_length=512",  # the plain script's length: dpo.yaml's demo cut to 192 is not measured
    f"train.max_steps={steps}", f"train.per_device_train_batch_size={bs}", f"train.learning_rate={lr}",
    "train.logging_steps=1", "train.save_steps=100000", "train.warmup_steps=0",
    "train.precompute_ref_log_probs=true"]))  # the stage's default (dpo.yaml turns it off for its partial epoch)
rows = [json.loads(l) for l in result.metrics_path.read_text().splitlines()]
print("RESULT " + json.dumps({"seconds": time.time() - t, "step_times": [r["time"] for r in rows if "loss" in r],
                              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

OURS_SFT = r'''
import json, resource, sys, time
from alignkit.recipe import load_recipe
from sft.config import SFTRecipe
from sft.train import run
recipe_path, out, steps = sys.argv[1:4]
result = run(load_recipe(recipe_path, SFTRecipe, [  # sft.yaml's own batch: what the SFT stage peaks at
    "data.val_fraction=0", "data.test_fraction=0", f"output.dir={out}", "tracking.backend=none",
    "output.resume=never", f"train.max_steps={steps}", "train.save_steps=100000"]))
print("RESULT " + json.dumps({"adapter": str(result.adapter_dir),
                              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run_arm(name: str, code: str, args: list[str], **env: str) -> dict:
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
                               "HF_HUB_OFFLINE": "1", **env})
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"arm {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"{name}: done in {time.time() - t:.0f} s", file=sys.stderr)
    return json.loads(line[-1][7:])


def steady_step(times: list[float]) -> float:
    """Median gap between consecutive step ends, skipping the first two steps (allocator and cache warm-up)."""
    gaps = [b - a for a, b in zip(times, times[1:])][2:]
    return statistics.median(gaps) if gaps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (2x sequences)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for alignkit's DPO arm (e.g. train.activation_checkpointing=true)")
    args = parser.parse_args()

    from alignkit.models import resolve
    from bench.run_all import cpu_kind

    model_dir = resolve("smollm2-135m-instruct")
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    rows = [json.loads(l) for l in (ROOT / "recipes/data/dpo_demo.jsonl").read_text().splitlines()][: args.pairs]
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    load_before = os.getloadavg()

    sft = run_arm("sft", OURS_SFT, [str(ROOT / "recipes/smollm2/sft.yaml"), str(work / "sft"), str(args.steps)])
    common = [sft["adapter"], str(pairs), None, str(args.steps), str(args.batch_size), str(args.lr)]
    plain = run_arm("plain", PLAIN, [model_dir, *common[:2], str(work / "plain"), *common[3:]])
    dpo_yaml = str(ROOT / "recipes/smollm2/dpo.yaml")
    # TRL's DPOConfig recomputes activations by default (gradient_checkpointing=True), so the plain arm does;
    # dpo.yaml turns it off for the demo, which made a DPO-without-recompute vs plain-with-it comparison
    # (2026-12-02: "0.38x step, 1.50x RSS"). The ratios compare like with like; the demo setting is its own row.
    recompute = ["train.activation_checkpointing=true"]
    ours = run_arm("ours", OURS_DPO, [dpo_yaml, *common[:2], str(work / "ours"), *common[3:], *recompute, *args.set])
    demo = run_arm("ours, no recompute", OURS_DPO, [dpo_yaml, *common[:2], str(work / "demo"), *common[3:],
                                                    "train.activation_checkpointing=false", *args.set])
    # alignkit's DPO again with TRL's fused LM head kept: the part of the ratio alignkit/lm_head.py makes
    trl_head = run_arm("ours, TRL's LM head", OURS_DPO, [dpo_yaml, *common[:2], str(work / "trl-head"), *common[3:],
                                                         *recompute, *args.set], ALIGNKIT_LM_HEAD="trl")
    load_after = os.getloadavg()

    plain_step, ours_step = steady_step(plain["step_times"]), steady_step(ours["step_times"])
    trl_head_step, demo_step = steady_step(trl_head["step_times"]), steady_step(demo["step_times"])
    step_ratio = ours_step / plain_step
    rss_ratio = ours["max_rss_mb"] / sft["max_rss_mb"]
    table = [
        "| arm | steady step (s) | total (s) | peak RSS (MB) |",
        "|---|---|---|---|",
        f"| SFT stage (alignkit, sft.yaml's batch) | – | – | {sft['max_rss_mb']:.0f} |",
        f"| plain TRL DPO | {plain_step:.2f} | {plain['seconds']:.0f} | {plain['max_rss_mb']:.0f} |",
        f"| alignkit DPO (activation recompute, as TRL's default) | {ours_step:.2f} | {ours['seconds']:.0f} | "
        f"{ours['max_rss_mb']:.0f} |",
        f"| alignkit DPO without recompute (dpo.yaml, the demo) | {demo_step:.2f} | {demo['seconds']:.0f} | "
        f"{demo['max_rss_mb']:.0f} |",
        f"| alignkit DPO with TRL's LM head (ALIGNKIT_LM_HEAD=trl) | {trl_head_step:.2f} | "
        f"{trl_head['seconds']:.0f} | {trl_head['max_rss_mb']:.0f} |",
    ]
    summary = (f"step time alignkit/plain {step_ratio:.2f}x (target <= 0.8x); peak RSS DPO/SFT {rss_ratio:.2f}x "
               f"(target <= 1.15x); plain TRL DPO/SFT RSS {plain['max_rss_mb'] / sft['max_rss_mb']:.2f}x; the compact CPU LM head: "
               f"step {ours_step / trl_head_step:.2f}x TRL's fused head's; without recompute (the demo's dpo.yaml): "
               f"step {demo_step / ours_step:.2f}x, peak RSS {demo['max_rss_mb'] / ours['max_rss_mb']:.2f}x the "
               f"recompute arm's")
    text = "\n".join([
        "## DPO step (bench/dpo_step.py)", "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {cpu_kind()}, load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after (other jobs share the cores); SmolLM2-135M-Instruct, "
        f"LoRA r=16 all-linear continued from an SFT adapter, {len(rows)} demo pairs, {args.batch_size} pairs "
        f"({2 * args.batch_size} sequences) per step, {args.steps} steps, lr {args.lr:g}; {time.strftime('%Y-%m-%d %H:%M')}",
        "", *table, "", summary, "",
        "alignkit's total includes the one-off reference precompute over all pairs, the step-0 reference check and",
        "the adapter save; the steady step does not include them (the plain script pays its reference forward every step).",
        ""])
    print(text)
    out = ROOT / "bench" / "results" / "dpo_step.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
