"""A stage is a value; `run(stage, recipe)` is the one lifecycle every training stage goes through.

A stage package exports a `Stage`: its name, recipe class, TRL config class, what it consumes and produces,
and three functions of its own — `load_data` (files → TRL datasets), `build_trainer` (model + TRL trainer)
and, where the default is not enough, `finish` (after training: checks, save, summary). Everything else is
here, in this order:

    tokenizer → adapter base and chat-template lineage → data → the fully resolved TRL config → fingerprint
    → new run (or resume) → trainer → resolved config into the manifest and W&B → train → finite check
    → finish (evaluate, save) → close

Nothing here trains; TRL does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from alignkit import distributed, runs, tracking
from alignkit.errors import TrainingFailed, UserError
from alignkit.recipe import to_dict

# What a stage can consume, and the recipe key the pipeline sets to hand it over.
INPUTS = {"adapter": "model.adapter", "pairs": "data.train", "conversations": "data.train",
          "prompts": "data.train", "reward_model": "reward.model"}
# Libraries whose version changes what a run computes: part of every fingerprint.
FINGERPRINT_LIBRARIES = ("torch", "transformers", "trl", "peft")
# TRL config fields that say where a run's files go or how it is tracked, not what it computes.
RUN_LOCAL = ("output_dir", "run_name", "report_to", "logging_dir")
# transformers 5 renamed these; TRL still accepts the old names.
ALIASES = {"gradient_checkpointing": "activation_checkpointing"}


@dataclass
class Data:
    """What a stage's `load_data` hands the lifecycle: TRL datasets and what to record about them."""

    inputs: dict[str, str]                 # fingerprinted inputs: file → sha256 (and e.g. the reward source)
    fields: dict[str, Any]                 # manifest entries, e.g. {"data": {"sha256": …, "curation": report}}
    train: Any = None                      # the TRL train dataset
    eval: Any = None                       # the TRL eval dataset, or None
    trl: dict[str, Any] = field(default_factory=dict)   # TRL settings the data forces (no val split → no eval)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the stage's trainer needs


@dataclass
class Context:
    """One stage run in progress, as the stage's own functions see it."""

    stage: "Stage"
    recipe: Any
    tokenizer: Any
    data: Data
    args: Any                              # the TRL config (trainer.args once the trainer exists)
    opened: "OpenRun"
    parent: runs.Run | None = None
    trainer: Any = None                    # the TRL trainer, once built
    summary: dict[str, Any] = field(default_factory=dict)   # → manifest "metrics" and the W&B summary
    fields: dict[str, Any] = field(default_factory=dict)    # → other manifest entries at close

    @property
    def run(self) -> runs.Run:
        return self.opened.run

    @property
    def callbacks(self) -> list:
        """The callbacks every trainer gets: metrics.jsonl and the NaN stop."""
        return [self.opened.metrics]


@dataclass(frozen=True)
class Stage:
    """A training stage: what `run` needs to know about it."""

    name: str
    recipe: type
    trl_config: str | Callable[[Any], str]  # a TRL config class (name or "module:Class"), or recipe → one
    defaults: dict[str, Any]                 # our defaults under the recipe's `train:`
    consumes: tuple[str, ...]                # keys of INPUTS
    produces: str                            # "adapter" (a policy) or "reward_model"
    load_data: Callable[[Any, Any], Data]    # (recipe, tokenizer) → Data
    build_trainer: Callable[[Context], Any]  # → a TRL trainer on ctx.args
    finish: Callable[[Context, Any, Any], None] | None = None  # (ctx, trainer, train result); default: finish()
    eval_keys: dict[str, str] = field(default_factory=dict)  # summary name → TRL metric of the final eval

    def config_class(self, recipe) -> type:
        """The TRL config class: a name in `trl` ("DPOConfig") or "module:Class" ("trl.experimental.orpo:ORPOConfig")."""
        import importlib

        name = self.trl_config(recipe) if callable(self.trl_config) else self.trl_config
        module, _, attr = name.rpartition(":")
        return getattr(importlib.import_module(module or "trl"), attr)


def one_process() -> bool:
    """True when no launcher started this process (torchrun, accelerate and Ray Train set WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR): nothing to join and no rank to agree with, so the run is opened without alignkit.distributed.
    Wider than `distributed.launched()` (the CLI's "am I a launched child?"): any hint of a group, MASTER_ADDR
    too, takes the distributed path, which is also right for one process."""
    return not {"WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"} & os.environ.keys()


def run(stage: Stage, recipe: Any) -> runs.Run:
    """Run `stage` on `recipe` from tokenizer to closed manifest; returns the completed run.

    Under a launcher every rank runs this function: rank 0 curates the data and opens the run (the others
    receive both), every rank builds the trainer and trains, rank 0 writes what is written once."""
    if not one_process():
        distributed.init()
        distributed.check_shared(recipe.output.dir)  # a rank that cannot see the run folder: exit 2, nothing trained
    tokenizer, template_sha, parent = start(recipe.model, stage.name)
    data = load_data(stage, recipe, tokenizer)
    args = resolve_config(stage, recipe, data.trl)
    opened = open_shared(recipe, stage.name, inputs=data.inputs, parent=parent, config=args,
                         extra={**model_manifest(recipe.model, template_sha), **data.fields})
    args.output_dir, args.run_name = str(opened.run.path / "checkpoints"), opened.run.id
    with guard(opened):
        ctx = Context(stage, recipe, tokenizer, data, args, opened, parent)
        # The new LoRA's random init is drawn in build_trainer, before the Trainer seeds: seed here, so it is
        # args.seed's on every rank and in a 1-process run alike, whatever else each process drew before
        from transformers import set_seed

        set_seed(args.seed)
        # every rank builds its trainer; if one cannot, all stop here rather than wait in the first all-reduce
        trainer = distributed.every_rank(lambda: distributed.prepare_trainer(stage.build_trainer(ctx)))
        ctx.trainer, ctx.args = trainer, trainer.args
        record_config(opened, trainer.args)
        result = trainer.train(resume_from_checkpoint=opened.resume_from)
        check_finite(opened)  # the logged loss is gathered over ranks: every rank takes the same decision
        ctx.summary.update(train_loss=result.training_loss, train_steps=result.global_step,
                           train_runtime_s=round(result.metrics.get("train_runtime", 0.0), 1))
        (stage.finish or finish)(ctx, trainer, result)
        check_finite(opened)
        closed = distributed.on_main(lambda: close_run(opened, ctx.summary, **ctx.fields).path)
        distributed.record_result(closed)
        return opened.run


def load_data(stage: Stage, recipe, tokenizer) -> Data:
    """`stage.load_data`, curated once: under a launcher rank 0 curates and sends the datasets to the others."""
    if one_process():
        return stage.load_data(recipe, tokenizer)
    return distributed.share(lambda: stage.load_data(recipe, tokenizer))


def open_shared(recipe: Any, stage: str, **kwargs: Any) -> "OpenRun":
    """`open_run` on rank 0; the other ranks get its run directory and checkpoint, with writes switched off."""
    if one_process():
        return open_run(recipe, stage, **kwargs)
    mine: dict[str, OpenRun] = {}

    def choose() -> tuple[str, str | None]:
        mine["run"] = open_run(recipe, stage, **kwargs)
        return str(mine["run"].run.path), mine["run"].resume_from

    path, resume_from = distributed.on_main(choose)
    if distributed.is_main():
        return mine["run"]
    return OpenRun(runs.Run(Path(path), writes=False), resume_from,
                   tracking.MetricsCallback(tracking.NullLogger()), None)


def finish(ctx: Context, trainer, result) -> None:
    """The default end of a stage: the final held-out evaluation (sharded over ranks and gathered by the
    trainer), then the adapter saved (once)."""
    evaluate(ctx, trainer)
    save_adapter(ctx, trainer.model)


def evaluate(ctx: Context, trainer) -> None:
    """Put the final held-out metrics named by the stage's eval_keys into the summary."""
    keys = ctx.stage.eval_keys
    if trainer.eval_dataset is None or not keys:
        return
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if evals and evals[-1].get("step") == trainer.state.global_step:
        final = evals[-1]  # the last step was just evaluated; a second pass would give the same numbers
    else:
        final = trainer.evaluate()
        check_finite(ctx.opened)
    ctx.summary.update({name: final[key] for name, key in keys.items() if key in final})


def save_adapter(ctx: Context, model) -> None:
    """The trained adapter (and the tokenizer) into the run's adapter/, written once, by rank 0."""
    from alignkit import models

    def save(model) -> None:
        models.save_adapter(model, ctx.tokenizer, ctx.run.adapter_dir)

    if distributed.save_sharded(ctx.trainer, model, save):  # FSDP: gathered over the ranks first
        return
    if ctx.trainer is not None:
        model = ctx.trainer.accelerator.unwrap_model(model)
    distributed.on_main(lambda: save(model))


def start(model_cfg, stage_name: str = "this"):
    """The tokenizer (with its template sha256) and, when the recipe continues an adapter, the run that made
    it, after checking the adapter was trained on this base with this chat template."""
    from alignkit import models

    tokenizer, template_sha = models.load_tokenizer(model_cfg.base, model_cfg.revision, model_cfg.trust_remote_code)
    parent = None
    if model_cfg.adapter:
        models.check_adapter_base(model_cfg.adapter, model_cfg.base)
        parent = runs.parent_of_adapter(model_cfg.adapter)
        check_template(parent, template_sha, stage_name)
    return tokenizer, template_sha, parent


def check_template(parent: runs.Run | None, template_sha: str, stage_name: str) -> None:
    """The chat template must be the one the parent run trained with, else the adapter learned other tokens."""
    theirs = parent.manifest.get("chat_template_sha256") if parent is not None else None
    if theirs and theirs != template_sha:
        raise UserError(
            f"chat template mismatch: the parent {parent.manifest.get('stage', 'run')} run {parent.id} trained with "
            f"template sha256 {theirs[:16]}…, this {stage_name} run's tokenizer has {template_sha[:16]}…; "
            "use the parent's base model/tokenizer (the adapter learned its template's tokens)")


def model_manifest(model_cfg, template_sha: str) -> dict[str, Any]:
    """The manifest's base-model and chat-template entries, the same for every stage."""
    from alignkit import models

    return {"base_model": {"spec": model_cfg.base, "id": models.canonical_id(model_cfg.base)},
            "chat_template_sha256": template_sha}


def trl_kwargs(defaults: dict[str, Any], train: dict, edits: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TRL config's arguments: precision for this machine, our defaults, the recipe's `train:` verbatim,
    then what the data forces."""
    kwargs = {**precision_defaults(), **defaults}
    for old, new in ALIASES.items():  # a recipe's deprecated name must beat our default under the new one
        if old in train:
            kwargs.pop(new, None)
    return {**kwargs, **train, **(edits or {})}


def resolve_config(stage: Stage, recipe, edits: dict[str, Any] | None = None):
    """The TRL config a run of `stage` trains with (output_dir and run_name are set when the run opens)."""
    config_cls = stage.config_class(recipe)
    kwargs = trl_kwargs(stage.defaults, recipe.train, edits)
    kwargs.update(output_dir="checkpoints", report_to=["wandb"] if recipe.tracking.backend == "wandb" else "none")
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"train: {config_cls.__name__} rejected the recipe: {e}") from None


def config_dict(args) -> dict[str, Any]:
    """A TRL config as JSON data: every field, as `trainer.args.to_dict()` has it."""
    return json.loads(json.dumps(args.to_dict(), default=str))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what a run computes."""
    versions = runs.library_versions()
    return {name: versions.get(name, "not installed") for name in FINGERPRINT_LIBRARIES}


def fingerprint(stage_name: str, recipe, inputs: dict, parent_id: str | None, settings: dict, *extra: Any) -> str:
    """Same work, same fingerprint: the recipe (less where results go and how they are tracked), the inputs,
    the parent, the resolved TRL settings (less run-local paths) and the library versions."""
    work = {k: v for k, v in to_dict(recipe).items() if k not in ("output", "tracking")}
    settings = {k: v for k, v in settings.items() if k not in RUN_LOCAL}
    return runs.fingerprint(stage_name, work, inputs, parent_id, settings, library_versions(), *extra)


@dataclass
class OpenRun:
    """A started (or resumed) run with its trackers."""

    run: runs.Run
    resume_from: str | None
    metrics: tracking.MetricsCallback
    wandb: Any


def open_run(recipe: Any, stage: str, *, inputs: dict[str, str], parent: runs.Run | None, config,
             extra: dict[str, Any]) -> OpenRun:
    """Start a run for `recipe`, or reopen an interrupted one with the same fingerprint (resume: auto).

    More processes are other work (another effective batch): their world size is in the fingerprint."""
    size = 1 if one_process() else distributed.world_size()
    fp = fingerprint(stage, recipe, inputs, parent.id if parent else None, config_dict(config),
                     *([{"world_size": size}] if size > 1 else []))
    run, resume_from = None, None
    if recipe.output.resume == "auto":
        run = runs.resumable(recipe.output.dir, stage, fp)
        if run is not None:
            resume_from = runs.last_checkpoint(run)
            print(f"alignkit: resuming {run.id} from {Path(resume_from).name}")
            run.update(status="running", pid=os.getpid(), host=socket.gethostname(), resumed_from=resume_from)
    if run is None:
        run = runs.start_run(recipe.output.dir, stage, to_dict(recipe), parent=parent.id if parent else None,
                             fingerprint_=fp, inputs=inputs, **extra)
    wb = tracking.start_wandb(recipe.tracking, run, job_type=stage, config=run.manifest)
    if wb is not None:
        run.update(wandb={"id": wb.id, "project": recipe.tracking.project, "group": recipe.tracking.group,
                          "mode": tracking.wandb_mode(recipe.tracking.mode), "dir": str(run.path / "wandb")})
    return OpenRun(run, resume_from, tracking.MetricsCallback(tracking.JsonlLogger(run.metrics_path)), wb)


def record_config(opened: OpenRun, args) -> None:
    """The TRL config the trainer holds (after its own edits) into the manifest and the W&B config."""
    resolved, topology = config_dict(args), distributed.topology(args)
    opened.run.update(trl_config_class=type(args).__name__, trl_config=resolved, distributed=topology)
    if opened.wandb is not None:
        tracking.WandbLogger(opened.wandb).log_config({"trl_config": resolved, "distributed": topology})


def with_inputs(stage: Stage, recipe, **paths: str | Path | None):
    """`recipe` with the files another stage produced handed over, e.g. adapter=…, pairs=…, reward_model=…."""
    for kind, path in paths.items():
        if path is None or kind not in stage.consumes:
            continue
        section, _, key = INPUTS[kind].partition(".")
        try:
            inner = dataclasses.replace(getattr(recipe, section), **{key: str(path)})
        except (ValueError, TypeError) as e:
            raise UserError(f"{stage.name}: cannot set {INPUTS[kind]}={path}: {e}") from None
        recipe = dataclasses.replace(recipe, **{section: inner})
    return recipe


def build_trainer(trainer_cls: type, *, lora: dict | None = None, **kwargs: Any):
    """Construct a TRL trainer; a configuration TRL rejects is the recipe's problem, reported as such.
    `lora`: the recipe's section, for `loraplus_lr_ratio` (the optimizer below)."""
    ratio = (lora or {}).get("loraplus_lr_ratio")
    if ratio is not None:
        from alignkit import models

        kwargs["optimizers"] = (models.loraplus_optimizer(kwargs["model"], kwargs["args"], ratio), None)
    try:
        trainer = trainer_cls(**kwargs)
    except ValueError as e:
        raise UserError(f"train: {trainer_cls.__name__} rejected the recipe: {e}") from None
    _compact_lm_heads(trainer)
    return trainer


def _compact_lm_heads(trainer) -> None:
    """On CPU, the SFT/DPO/KTO trainers' fused LM head scores only labelled positions (alignkit/lm_head.py;
    SFT 1.21x the tokens/s, bench/sft_throughput.py). GRPO/RLOO divide their logits by a sampling
    temperature, which the compact head does not: theirs stays TRL's."""
    import trl

    from alignkit.lm_head import use_compact_lm_head

    if not isinstance(trainer, (trl.SFTTrainer, trl.DPOTrainer, trl.KTOTrainer)):
        return
    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is not None:
            use_compact_lm_head(model.get_base_model() if hasattr(model, "get_base_model") else model)


def precision_defaults() -> dict[str, Any]:
    """bf16 mixed precision where the hardware has it: a bf16 GPU, or a CPU with native bf16 (AVX512-BF16/AMX),
    where autocast measured 1.2x faster than float32 on SmolLM2-135M; float32 elsewhere."""
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": False}
    return {"bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "fp16": False, "use_cpu": True}


@contextlib.contextmanager
def guard(opened: OpenRun) -> Iterator[None]:
    """Mark the run failed or interrupted if the body does not finish; SIGTERM counts as an interrupt."""
    import threading

    # A Ray Train worker runs the stage in a thread, where no signal handler can be set (Ray handles SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if main_thread:
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        opened.run.finish("interrupted")
        tracking.finish_wandb(opened.wandb)
        raise
    except BaseException as e:
        opened.run.finish("failed", error=f"{type(e).__name__}: {e}"[:500])
        tracking.finish_wandb(opened.wandb, {"status": "failed"})
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def check_finite(opened: OpenRun) -> None:
    """Raise TrainingFailed if training stopped on a NaN/inf loss."""
    if opened.metrics.bad_loss is not None:
        step, value = opened.metrics.bad_loss
        raise TrainingFailed(f"loss became {value} at step {step}; the run is marked failed "
                             "(lower train.learning_rate or check the data)")


def close_run(opened: OpenRun, summary: dict[str, Any], **fields: Any) -> runs.Run:
    """Mark the run completed with its summary metrics, in the manifest and in W&B."""
    opened.run.finish("completed", metrics=summary, **fields)
    tracking.finish_wandb(opened.wandb, summary)
    return opened.run
