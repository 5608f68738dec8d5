"""Serving throughput and latency on the embedded model, side by side with a plain transformers loop, in one run.

    python bench/serve_load.py [--tokens 32]     # writes bench/results/serve_load.md
    python bench/serve_load.py --quick --out /tmp/serve_load.md   # half the requests, 4 swaps: a quick look

Baseline: one `model.generate` call per request, one request after another (what a hand-written Flask
wrapper does). alignkit: `alignkit serve`'s app (uvicorn on 127.0.0.1, dynamic batching) with 1, 8 and 32
concurrent clients using the official openai client. Then 8 clients while the registry is flipped 10 times
(promote / rollback): failed requests, and the p99 of the requests that were running across a swap against
the p99 at 8 clients without swaps. Greedy decoding, the same prompts everywhere; tokens are generated tokens.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run_all import cpu_kind  # noqa: E402  (bench/ is on the path: the script's own folder)

PROMPTS = ["Give me three tips for a good night's sleep.", "What is the capital of Australia?",
           "Explain what a binary search does.", "Write a haiku about autumn.", "How do I boil an egg?",
           "Name two uses of baking soda.", "What causes rain?", "Suggest a name for a grey cat."]


def _cpu() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu_kind()}"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def make_runs(root: Path) -> tuple[str, str]:
    """A run folder with two promoted-able LoRA adapters on the embedded model (random B: answers differ)."""
    import torch

    from alignkit import models, promotion, runs
    from alignkit.recipe import ModelConfig

    tokenizer, _ = models.load_tokenizer("smollm2-135m-instruct")
    ids = []
    for seed in (1, 2):
        model = models.attach_lora(models.load_model(ModelConfig()), {"r": 8, "lora_alpha": 16,
                                                                     "target_modules": ["q_proj", "v_proj"]})
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.002)
        run = runs.start_run(root, "sft", {})
        models.save_adapter(model, tokenizer, run.adapter_dir)
        run.finish("completed", gate="pass")
        ids.append(run.id)
        time.sleep(1.1)
    promotion.promote(root, ids[0])
    return ids[0], ids[1]


def plain_loop(adapter: Path, n: int, tokens: int) -> dict:
    """The baseline: transformers generate, one request at a time."""
    import torch

    from alignkit import models
    from alignkit.recipe import ModelConfig

    tokenizer, _ = models.load_tokenizer("smollm2-135m-instruct")
    model = models.load_adapter(models.load_model(ModelConfig()), adapter, trainable=False).eval()
    latencies, generated = [], 0
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                             tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        generated += out.shape[1] - enc["input_ids"].shape[1]
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    return {"requests": n, "tokens": generated, "wall": wall, "tok_s": generated / wall,
            "p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99), "failed": 0}


def load(client, clients: int, per_client: int, tokens: int, swaps: list[float] | None = None,
         until: threading.Event | None = None) -> dict:
    """`clients` threads, each sending `per_client` requests back to back (with `until`: until it is set, at
    most `per_client` each)."""
    spans, failed, generated = [], [], [0]
    lock = threading.Lock()

    def worker(c: int) -> None:
        for i in range(per_client):
            if until is not None and until.is_set():
                break
            t = time.perf_counter()
            try:
                done = client.chat.completions.create(
                    model="bench", max_tokens=tokens, user=f"client-{c}",
                    messages=[{"role": "user", "content": PROMPTS[(c + i) % len(PROMPTS)]}])
                with lock:
                    generated[0] += done.usage.completion_tokens
                    spans.append((t, time.perf_counter()))
            except Exception as e:  # what this bench counts
                failed.append(repr(e))

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - start
    lat = [b - a for a, b in spans]
    row = {"requests": len(spans), "tokens": generated[0], "wall": wall, "tok_s": generated[0] / wall,
           "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99), "failed": len(failed)}
    if swaps is not None:
        across = [b - a for a, b in spans if any(a <= s <= b for s in swaps)]
        row["across"] = len(across)
        row["p99_across"] = _pct(across, 0.99)
    return row


def main() -> None:
    import uvicorn

    from alignkit import promotion
    from alignkit.recipe import ModelConfig
    from serve import keys
    from serve.cli import build
    from serve.config import EngineConfig, FeedbackConfig, ServerConfig, ServeRecipe

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=None, help="engine.max_wait_ms (default: serve.yaml's)")
    ap.add_argument("--no-pack", action="store_true", help="engine.pack_weights false (the unpacked engine)")
    ap.add_argument("--quick", action="store_true", help="half the requests and 4 swaps (not for the results)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.md")
    args = ap.parse_args()
    half = 2 if args.quick else 1
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    runs_dir = work / "bench"
    a, b = make_runs(runs_dir)
    results = {"plain transformers loop (1 request at a time)": plain_loop(runs_dir / a / "adapter", 12 // half,
                                                                         args.tokens)}

    wait = args.max_wait_ms if args.max_wait_ms is not None else EngineConfig().max_wait_ms
    engine_cfg = EngineConfig(max_batch=16, max_wait_ms=wait, pack_weights=not args.no_pack)
    recipe = ServeRecipe(model=ModelConfig(), runs=str(runs_dir), engine=engine_cfg,
                         server=ServerConfig(port=8765, max_tokens=256, watch_interval_s=0.2,
                                             rate_limit_per_minute=100_000),
                         feedback=FeedbackConfig(store=f"sqlite:///{work / 'collect.db'}"))
    key = keys.add(runs_dir, "bench")
    asgi, app, engine = build(recipe, str(runs_dir))
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=8765, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    from openai import OpenAI

    client = OpenAI(base_url="http://127.0.0.1:8765/v1", api_key=key, max_retries=0, timeout=600)
    load(client, 2, 1, args.tokens)  # warm-up

    def measured(run) -> dict:
        batches, carried = engine.batches, engine.batched_requests
        row = run()
        row["batch"] = (engine.batched_requests - carried) / max(engine.batches - batches, 1)
        return row

    for clients, per in ((1, 8 // half), (8, 4 // half), (32, 2 // half)):
        results[f"alignkit serve, {clients} client{'s' if clients > 1 else ''}"] = measured(
            lambda c=clients, p=per: load(client, c, p, args.tokens))

    swap_times: list[float] = []
    stop = threading.Event()

    flips = 4 if args.quick else 10

    def flipper() -> None:
        for n in range(flips):
            if stop.wait(1.0):
                return
            if n % 2 == 0:
                promotion.promote(runs_dir, b)
            else:
                promotion.rollback(runs_dir)
            target = b if n % 2 == 0 else a
            while app.state.router.current != target:
                time.sleep(0.01)
            swap_times.append(time.perf_counter())

    flips_done = threading.Event()
    flip = threading.Thread(target=lambda: (flipper(), flips_done.set()))
    flip.start()
    swapped = measured(lambda: load(client, 8, 200, args.tokens, swaps=swap_times, until=flips_done))  # spans all
    stop.set()
    flip.join()
    results[f"alignkit serve, 8 clients, {flips} swaps"] = swapped
    server.should_exit = True
    app.state.stop.set()
    engine.close()
    again = plain_loop(runs_dir / a / "adapter", 12 // half, args.tokens)  # the baseline's better run of two counts
    if again["tok_s"] > results["plain transformers loop (1 request at a time)"]["tok_s"]:
        results["plain transformers loop (1 request at a time)"] = again

    plain = results["plain transformers loop (1 request at a time)"]
    lines = [f"# serve load — {datetime.now():%Y-%m-%d %H:%M}", "",
             f"Machine: {_cpu()}; embedded SmolLM2-135M-Instruct + a LoRA adapter, float32 on CPU, greedy, "
             f"max_tokens {args.tokens}; engine max_batch 16, max_wait {wait:.0f} ms, pack_weights {not args.no_pack}; "
             f"client and server share the cores.{' --quick.' if args.quick else ''}", "",
             "| setting | requests | generated tokens | tokens/s | × plain loop | p50 ms | p99 ms | failed | mean batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests']} | {r['tokens']} | {r['tok_s']:.1f} | {r['tok_s'] / plain['tok_s']:.2f} | "
                     f"{r['p50']:.0f} | {r['p99']:.0f} | {r['failed']} | {r.get('batch', 1):.1f} |")
    normal = results["alignkit serve, 8 clients"]
    lines += ["", f"Swaps: {len(swap_times)} promote/rollback flips under 8 clients, {swapped['failed']} failed requests; "
              f"{swapped.get('across', 0)} requests ran across a swap, their p99 {swapped.get('p99_across', float('nan')):.0f} ms "
              f"= {swapped.get('p99_across', float('nan')) / normal['p99']:.2f}× the p99 at 8 clients without swaps "
              f"({normal['p99']:.0f} ms).", "",
              f"Goals: ≥ 3× the plain loop's throughput at 8+ clients — "
              f"{'met' if min(results['alignkit serve, 8 clients']['tok_s'], results['alignkit serve, 32 clients']['tok_s']) >= 3 * plain['tok_s'] else 'missed'}; "
              f"swap-spanning p99 ≤ 2× normal — "
              f"{'met' if swapped.get('p99_across', 1e9) <= 2 * normal['p99'] else 'missed'}; "
              f"0 failed during the swaps — {'met' if swapped['failed'] == 0 else 'missed'}."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
