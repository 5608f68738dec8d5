"""RLHF step: alignkit's RLOO stage vs a plain TRL RLOO script, same model, prompts, reward, LoRA and batch shape.

    python bench/rlhf_step.py [--steps 6] [--completion-tokens 32]

Each arm runs in its own subprocess with the same instrumentation patched onto TRL's RLOOTrainer (generation,
reward and whole-step timers, generated-token counts), so the only difference is how the trainer was set up.
The reward is one deterministic Python function for both arms (a learned reward model would add the same
scoring time to each). Prints the share of step time spent generating, generation vs training tokens/s, the
step-time ratio (plain / alignkit: >= 1.0 means alignkit is no slower), and writes bench/results/rlhf_step.md.
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

REWARD = '''
def reward_len(completions, **kwargs):
    """TRL docs' toy reward: completions close to 20 characters score best."""
    return [-abs(20 - len(c[-1]["content"])) / 20 for c in completions]
'''

# Patched onto RLOOTrainer in both arms before anything is built; writes TIMES <json> at exit.
INSTRUMENT = r'''
import atexit, json, time
from trl import RLOOTrainer
_t = {"generate_s": [], "reward_s": [], "step_s": [], "gen_tokens": [], "prompt_tokens": []}
_gen, _rew, _step = RLOOTrainer._generate_single_turn, RLOOTrainer._calculate_rewards, RLOOTrainer.training_step
def _generate_single_turn(self, prompt_ids, *a, **k):
    t = time.perf_counter(); out = _gen(self, prompt_ids, *a, **k)
    _t["generate_s"].append(time.perf_counter() - t)
    _t["gen_tokens"].append(sum(len(c) for c in out)); _t["prompt_tokens"].append(sum(len(p) for p in prompt_ids))
    return out
def _calculate_rewards(self, *a, **k):
    t = time.perf_counter(); out = _rew(self, *a, **k); _t["reward_s"].append(time.perf_counter() - t); return out
def training_step(self, model, inputs, *a, **k):
    t = time.perf_counter(); out = _step(self, model, inputs, *a, **k)
    _t["step_s"].append(time.perf_counter() - t)
    return out
RLOOTrainer._generate_single_turn, RLOOTrainer._calculate_rewards = _generate_single_turn, _calculate_rewards
RLOOTrainer.training_step = training_step
atexit.register(lambda: print("TIMES " + json.dumps(_t), flush=True))
'''

PLAIN = r'''
# A plain TRL RLOO script as TRL's docs show it (RLOOTrainer + reward function + LoRA peft_config); the changes:
# use_cpu=True (TRL's bf16 default refuses to start without a GPU otherwise), our prompts, and the batch shape.
import json, sys
from datasets import Dataset
from peft import LoraConfig
from trl import RLOOConfig, RLOOTrainer
from bench_reward import reward_len
model, prompts_file, out, steps, max_len = sys.argv[1:6]
dataset = Dataset.from_list([json.loads(line) for line in open(prompts_file)])
trainer = RLOOTrainer(
    model=model,
    reward_funcs=reward_len,
    args=RLOOConfig(output_dir=out, use_cpu=True, per_device_train_batch_size=8, num_generations=4,
                    max_completion_length=int(max_len), max_steps=int(steps), learning_rate=5e-5, beta=0.05,
                    logging_steps=1, report_to="none", save_strategy="no", seed=42),
    train_dataset=dataset,
    peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
)
trainer.train()
'''

OURS = r'''
import sys
from alignkit.recipe import load_recipe
from reward.config import RLHFRecipe
from reward.rlhf import run
recipe_path, prompts_file, out, steps, max_len, base = sys.argv[1:7]
recipe = load_recipe(recipe_path, RLHFRecipe, [
    f"model.base={base}", "model.adapter=null", f"data.train={prompts_file}", "data.val_fraction=0", "data.test_fraction=0",
    "data.dedup=false", "data.near_dedup=false", "reward.model=null", "reward.function=bench_reward:reward_len",
    "rlhf.eval_prompts=0", f"train.max_steps={steps}", f"train.max_completion_length={max_len}",
    "train.learning_rate=5e-5", "train.save_strategy=\'no\'", "tracking.backend=none", f"output.dir={out}",
    "output.resume=never"])
run(recipe)
'''


def run_arm(code: str, args: list[str], work: Path) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(work), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", INSTRUMENT + code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    line = [l for l in proc.stdout.splitlines() if l.startswith("TIMES ")]
    if proc.returncode or not line:
        sys.exit(f"arm failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    times = json.loads(line[-1][6:])
    times["wall_s"] = time.time() - t
    return times


def summarize(t: dict) -> dict:
    """Per-step means over steps 2..N (step 1 pays one-off warm-up), generation share and tokens/s."""
    step = t["step_s"][1:] or t["step_s"]
    gen = t["generate_s"][1:] or t["generate_s"]
    rew = t["reward_s"][1:] or t["reward_s"]
    gen_tokens = t["gen_tokens"][1:] or t["gen_tokens"]
    # one generation batch per step (steps_per_generation = 1): the step trains on exactly what it generated
    all_tokens = [p + g for p, g in zip(t["prompt_tokens"], t["gen_tokens"])]
    train_tokens = all_tokens[1:] or all_tokens
    train_s = [s - g - r for s, g, r in zip(step, gen, rew)]  # logps of policy/reference, loss, backward, optimizer
    return {"step_s": statistics.fmean(step), "generate_s": statistics.fmean(gen), "reward_s": statistics.fmean(rew),
            "gen_share": sum(gen) / sum(step), "gen_tok_s": sum(gen_tokens) / sum(gen),
            "train_tok_s": sum(train_tokens) / sum(train_s), "steps": len(t["step_s"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="embedded alias or a local chat-model folder (same for both arms)")
    args = parser.parse_args()

    from alignkit.models import load_tokenizer, resolve
    from alignkit.recipe import DataConfig
    from reward.prompts import load_prompts

    model_dir = resolve(args.model)
    tok, _ = load_tokenizer(args.model)
    prompts = load_prompts(DataConfig(train=str(ROOT / "recipes/data/dpo_demo.jsonl"), val_fraction=0.0,
                                      near_dedup=False), tok).splits["train"][:args.prompts]
    work = Path(tempfile.mkdtemp(prefix="bench-rlhf-"))
    (work / "bench_reward.py").write_text(REWARD)
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    common = [str(prompts_file), "", str(args.steps), str(args.completion_tokens)]

    plain = summarize(run_arm(PLAIN, [model_dir, common[0], str(work / "plain"), *common[2:]], work))
    ours = summarize(run_arm(OURS, [str(ROOT / "recipes/smollm2/rlhf.yaml"), common[0], str(work / "ours"),
                                    *common[2:], args.model], work))
    ratio = plain["step_s"] / ours["step_s"]
    rows = ["| arm | step (s) | generation (s) | reward (s) | generation share | generation tok/s | training tok/s |",
            "|---|---|---|---|---|---|---|"]
    for name, a in (("plain TRL", plain), ("alignkit", ours)):
        rows.append(f"| {name} | {a['step_s']:.2f} | {a['generate_s']:.2f} | {a['reward_s']:.3f} | "
                    f"{a['gen_share']:.0%} | {a['gen_tok_s']:.0f} | {a['train_tok_s']:.0f} |")
    text = "\n".join([
        "## RLHF step (bench/rlhf_step.py)", "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (1-min load average at the end "
        f"{os.getloadavg()[0]:.1f}, the bench included); model {args.model}, "
        f"LoRA r=16 all-linear, RLOO, 8 completions per step (2 prompts x 4), up to {args.completion_tokens} new "
        f"tokens, beta 0.05, same rule reward; mean of steps 2..{args.steps}; {time.strftime('%Y-%m-%d %H:%M')}", "",
        *rows, "",
        f"step-time ratio plain/alignkit {ratio:.2f}x (target >= 1.0). Generation tok/s counts generated tokens "
        "per second of generate(); training tok/s counts prompt+completion tokens per second of the rest of the step "
        "(policy and reference log-probs, loss, backward, optimizer).", ""])
    print(text)
    out = ROOT / "bench" / "results" / "rlhf_step.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:  # one section per run: keep earlier runs (other models, settings) for comparison
        f.write(text + "\n")


if __name__ == "__main__":
    main()
