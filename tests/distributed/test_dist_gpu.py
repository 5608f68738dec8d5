"""The CUDA paths, for a lent GPU machine (bench/gpu_check.sh runs these): DDP and FSDP on 2 GPUs (NCCL) leave
one run with world size 2, and QLoRA (4-bit NF4 base) trains on 1 GPU. Skipped without enough GPUs."""

from __future__ import annotations

import json

import pytest

from tests.distributed.conftest import SFT, cli, runs_in

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
QUICK = [*SFT, "data.train=sft16.jsonl", "train.per_device_train_batch_size=2", "tracking.backend=none"]


def _gpus() -> int:
    torch = pytest.importorskip("torch")
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _needs(n: int) -> None:
    if _gpus() < n:
        pytest.skip(f"needs {n} CUDA GPU(s), found {_gpus()}")


def _one_run(root, world_size: int) -> dict:
    (run,), reg = runs_in(root)
    assert list(reg["runs"]) == [run.name] and reg["runs"][run.name]["status"] == "completed"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    m = json.loads((run / "manifest.json").read_text())
    assert m["distributed"]["world_size"] == world_size
    return m


def test_ddp_two_gpus(small_data):
    _needs(2)
    proc = cli("sft", *QUICK, "model.dtype=bfloat16", "output.dir=gpu-ddp", "--launcher", "torchrun",
               "--processes", "2", cwd=small_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _one_run(small_data / "gpu-ddp", 2)
    assert m["distributed"]["backend"] == "nccl" and m["distributed"]["effective_batch"] == 4


def test_fsdp_two_gpus(small_data):
    """FSDP2 full sharding (recipes/accelerate/fsdp.yaml): the adapter is gathered from the shards and saved once."""
    _needs(2)
    proc = cli("sft", *QUICK, "model.dtype=bfloat16", "train.bf16=true", "output.dir=gpu-fsdp", "--launcher",
               "accelerate", "--launch-config", "recipes/accelerate/fsdp.yaml", cwd=small_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _one_run(small_data / "gpu-fsdp", 2)
    from peft import PeftConfig

    (run,), _ = runs_in(small_data / "gpu-fsdp")
    assert PeftConfig.from_pretrained(str(run / "adapter")).r == 16  # a loadable PEFT adapter, not shards


def test_qlora_one_gpu(small_data):
    _needs(1)
    proc = cli("sft", "--config", "recipes/smollm2/sft-qlora-gpu.yaml", *QUICK[2:], "output.dir=gpu-qlora",
               cwd=small_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _one_run(small_data / "gpu-qlora", 1)
    assert m["recipe"]["model"]["quantization"] == "nf4"
