"""`make bench`: run every bench/*.py (each compares alignkit with a plain TRL script in one run) and
collect their bench/results/*.md into bench/RESULTS.md with the machine's description."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = 0.0
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {gpu}; torch {torch.__version__}"


def cpu_kind() -> str:
    """The CPU kind a timing depends on: native bf16 (avx512_bf16), AVX2 only, or neither."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "avx512_bf16" if "avx512_bf16" in flags else "avx2" if "avx2" in flags else "no avx2"


def main() -> None:
    # decision_probe.py measures where the demo's ceiling is on given adapters, not a ratio to a plain script
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in ("run_all.py", "decision_probe.py"))
    only = set(sys.argv[1:])
    failed = []
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode:
            failed.append(script.name)
    parts = [f"# Benchmark results\n\nMachine: {machine()}\nCollected: {time.strftime('%Y-%m-%d %H:%M')}\n"]
    parts += [p.read_text() for p in sorted((HERE / "results").glob("*.md"))]
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
