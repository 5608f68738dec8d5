"""The pipeline: base eval → SFT → gate → DPO → gate (→ reward → RLHF → gate) → promote.

Top floor of the spine: it iterates over the stage table (`alignkit.cli.STAGES`), hands each stage the
files its predecessors produced (the parent's adapter, the pairs, the reward model: paths set in the
typed recipe, by what the stage consumes), gates it with eval, and stops at the first failed gate.
Re-running skips every stage whose recipe, resolved TRL settings, library versions, inputs and parent
are unchanged (the pipeline fingerprint in its manifest); a stage killed half-way resumes from its
checkpoint through the lifecycle's own `resume: auto`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit import launch, promotion, runs
from alignkit.cli import STAGES
from alignkit.cli import stage as stage_of
from alignkit.errors import TrainingFailed, UserError
from alignkit.recipe import TrackingConfig, load_recipe

WAITING_FOR_LABELS = 3  # exit code: stopped on purpose, re-run after annotators have voted


@dataclass(frozen=True)
class CollectSource:
    store: str = field(default="sqlite:///runs/demo/collect.db",
                       metadata={"help": "The collect store URL; {parent} is replaced by the policy run's id "
                                         "(one store per round: its items are that adapter's own answers), "
                                         "{output} by the pipeline's output folder."})
    min_votes: int = field(default=1, metadata={"help": "Votes an item needs to become a pair."})
    min_pairs: int = field(default=100, metadata={"help": "Pairs needed before the stage may run."})
    annotator: str = field(default="humans", metadata={
        "help": "Who votes: humans (the pipeline fills the store, prints `collect serve` and exits 3), rules "
                "(the refusal detector + prompt category + house style), reward:RUN (a gated reward run) or "
                "model:MODEL (a local chat model answering A or B), which vote at once."})
    recipe: str = field(default="recipes/smollm2/collect.yaml",
                        metadata={"help": "Collect recipe: the prompts and how candidates are sampled."})
    overrides: list[str] = field(default_factory=list, metadata={"help": "Overrides of the collect recipe."})
    prompts: int | None = field(default=None, metadata={
        "help": "Prompts drawn (evenly across categories) for the round; null: every prompt in the file."})
    min_prompts: int = field(default=20, metadata={"help": "A round with fewer prompts is an error (exit 2)."})
    min_margin: float | None = field(default=None, metadata={
        "help": "The judge votes only when its margin reaches this (rules 0.5, reward 0.1, model 0.25 by "
                "default)."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompt draw (the samples use generation.seed)."})

    def __post_init__(self):
        if self.annotator != "humans":
            from collect.judge import ANNOTATORS, judge_kind

            try:
                judge_kind(self.annotator, "collect.annotator", ANNOTATORS)
            except UserError as e:
                raise ValueError(str(e)) from None


@dataclass(frozen=True)
class StageSpec:
    stage: str = field(metadata={"help": "Stage name: " + ", ".join(STAGES) + "."})
    recipe: str = field(metadata={"help": "The stage recipe YAML."})
    gate: str | None = field(default=None, metadata={"help": "Gate YAML checked after the stage (policy stages)."})
    pairs: str | None = field(default=None, metadata={"help": "Pairs file for dpo/kto/reward, or 'collect'."})
    overrides: list[str] = field(default_factory=list, metadata={"help": "key.sub=value overrides of the recipe."})
    launch: launch.LaunchSpec = field(default_factory=launch.LaunchSpec, metadata={
        "help": "Run the stage under a launcher: {processes: N, config: accel.yaml} or {engine: ray, workers: N}."})

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; expected one of {', '.join(STAGES)}")
        for path in (self.recipe, self.gate, None if self.pairs == "collect" else self.pairs):
            if path and not Path(path).is_file():
                raise ValueError(f"file not found: {path}")


@dataclass(frozen=True)
class EvalSpec:
    recipe: str = field(default="recipes/smollm2/eval.yaml", metadata={"help": "Eval recipe for base and stages."})
    overrides: list[str] = field(default_factory=list, metadata={"help": "Overrides (e.g. smaller suites)."})


@dataclass(frozen=True)
class PipelineRecipe:
    name: str = field(default="demo", metadata={"help": "Pipeline name: the W&B group of all its stage runs."})
    output: str = field(default="runs/demo", metadata={"help": "Run folder shared by every stage and the registry."})
    eval: EvalSpec = field(default_factory=EvalSpec)
    collect: CollectSource = field(default_factory=CollectSource)
    stages: list[StageSpec] = field(default_factory=list, metadata={"help": "Stages in order: stage, recipe, "
                                                                             "gate, pairs, overrides."})
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    promote: bool = field(default=True, metadata={"help": "Promote the last stage whose gate passed."})
    seed: int | None = field(default=None, metadata={
        "help": "One seed for the whole run: every stage's train.seed, the collect round's prompt draw and its "
                "samples (generation.seed). null: each recipe's own seeds. `make demo SEED=1`."})


def check_order(specs: list[StageSpec], source: str) -> None:
    """What one stage entry cannot check alone: a stage needing a reward model has one before it."""
    if not specs:
        raise UserError(f"{source}: stages: at least one stage is needed")
    for i, spec in enumerate(specs):
        consumes = stage_of(spec.stage).consumes
        before = [stage_of(s.stage).produces for s in specs[:i]]
        if "reward_model" in consumes and "reward_model" not in before and not any(
                o.startswith("reward.") for o in spec.overrides):
            raise UserError(f"{source}: stages[{i}]: {spec.stage} needs a reward stage before it "
                            "(or a reward.model override)")


class Pipeline:
    """Runs a PipelineRecipe; every decision is printed and recorded in the registry."""

    def __init__(self, recipe: PipelineRecipe, source: str):
        self.recipe, self.source = recipe, source
        self.specs = list(recipe.stages)
        check_order(self.specs, source)
        self.root = Path(recipe.output)
        from eval.config import EvalRecipe, GateRecipe

        self.eval_recipe = load_recipe(recipe.eval.recipe, EvalRecipe, self._common(recipe.eval.overrides))
        # One pipeline seed, where set, is the round's prompt draw and its samples too
        self.draw_seed = recipe.collect.seed if recipe.seed is None else recipe.seed
        self.collect_overrides = [*recipe.collect.overrides,
                                  *([f"generation.seed={recipe.seed}"] if recipe.seed is not None else [])]
        self.collect_recipe = None  # loaded once, below
        for spec in self.specs:  # load every recipe now: a typo fails before any training starts
            launch.preflight(spec.launch)  # a launcher not installed, N > devices: exit 2 now
            self._stage_recipe(spec, parent=None, reward=None, pairs=None)
            if spec.gate:
                load_recipe(spec.gate, GateRecipe)
        if any(spec.pairs == "collect" for spec in self.specs):
            from collect.config import CollectRecipe

            self.collect_recipe = load_recipe(recipe.collect.recipe, CollectRecipe, self.collect_overrides)

    def _common(self, overrides: list[str]) -> list[str]:
        t = self.recipe.tracking
        return [*overrides, f"output.dir={self.recipe.output}", f"tracking.backend={t.backend}",
                f"tracking.project={t.project}", f"tracking.group={self.recipe.name}", f"tracking.mode={t.mode}"]

    def _stage_recipe(self, spec: StageSpec, parent: runs.Run | None, reward: runs.Run | None, pairs: str | None):
        """The stage's recipe with the outputs of earlier stages handed over as paths."""
        st = stage_of(spec.stage)
        seed = [f"train.seed={self.recipe.seed}"] if self.recipe.seed is not None else []
        recipe = load_recipe(spec.recipe, st.recipe, self._common([*spec.overrides, *seed]))
        # the lifecycle imports transformers: not at `alignkit --help`
        from alignkit import lifecycle

        return lifecycle.with_inputs(st, recipe, adapter=parent.adapter_dir if parent else None,
                                 pairs=pairs, conversations=pairs, prompts=pairs,
                                 reward_model=reward.path if reward else None)

    def run(self) -> int:
        """Run every stage; returns the exit code (0 done, 1 a gate failed, 3 waiting for labels).

        The report is written however the run ends (a failed gate, a stage that did not train, a round
        waiting for labels), and the last lines say what is promoted and where the report is.
        """
        from eval import run_eval

        print(f"pipeline {self.recipe.name}: {len(self.specs)} stages → {self.root}")
        base_dir = self.root / "base" / "eval"
        print("== base model: eval (cached across stages)")
        run_eval(self.eval_recipe, None, base_dir)
        summary: list[dict[str, Any]] = []
        try:
            code, why = self._run_stages(summary)
        finally:
            from alignkit import pipeline_report

            path = pipeline_report.write(self.root)
        self._print_summary(summary)
        if why:
            print(f"pipeline stopped: {why}")
        promoted = runs.read_registry(self.root).get("promoted")
        print(f"promoted: {promoted or 'nothing'}" + (f" ({self.root / promoted / 'adapter'})" if promoted else ""))
        print(f"report: {path}")
        return code

    def _run_stages(self, summary: list[dict[str, Any]]) -> tuple[int, str | None]:
        """Train and gate each stage in order; (exit code, why it stopped early or None). Rows go to `summary`."""
        parent: runs.Run | None = None
        reward: runs.Run | None = None
        passed: runs.Run | None = None
        for spec in self.specs:
            pairs = spec.pairs
            if pairs == "collect":
                pairs = self._collected_pairs(parent)
                if pairs is None:
                    self._promote(passed)
                    return WAITING_FOR_LABELS, f"{spec.stage} waits for labels (see above)"
            st = stage_of(spec.stage)
            stage_recipe = self._stage_recipe(spec, parent, reward, pairs)
            fp = self._fingerprint(spec, stage_recipe, parent, reward)
            run = self._completed(fp)
            if run is not None:
                print(f"== {spec.stage}: unchanged, reusing {run.id}")
            else:
                print(f"== {spec.stage}: training ({spec.recipe})")
                try:
                    from alignkit import lifecycle

                    run = (lifecycle.run(st, stage_recipe) if spec.launch.kind is None  # this process
                           else launch.run_launched(st, stage_recipe, spec.launch))  # N, rank 0 reports
                except TrainingFailed as e:
                    self._promote(passed)
                    return 1, f"{spec.stage} failed: {e}"
                run.update(pipeline={"name": self.recipe.name, "fingerprint": fp, "source": self.source})
            row = {"stage": spec.stage, "run": run.id, "gate": None}
            summary.append(row)
            if st.produces == "reward_model":
                reward = run
                row["gate"] = (run.manifest.get("reward_gate") or {}).get("verdict", "n/a")
                continue
            row["gate"] = self._gate(spec, run, parent)
            parent = run
            if row["gate"] == "fail":
                self._promote(passed)  # the last stage that passed its gate; never the failed one
                return 1, f"the gate failed for {spec.stage}: {self._failed_checks(run)} ({run.path / 'gate.json'})"
            passed = run  # a policy whose gate passed (or had none)
        self._promote(passed)
        return 0, None

    @staticmethod
    def _failed_checks(run: runs.Run) -> str:
        """The failed checks of a gate, one phrase each, for the last lines of the run."""
        from alignkit.runs import read_json

        gate = read_json(run.path / "gate.json", None) or {}
        failed = [c for c in gate.get("checks", []) if c.get("verdict") == "fail"]
        return "; ".join(str(c.get("reason") or c.get("metric")) for c in failed) or "see the gate file"

    def _promote(self, passed: runs.Run | None) -> None:
        promoted = runs.read_registry(self.root).get("promoted")
        if self.recipe.promote and passed is not None and promoted != passed.id:
            promotion.promote(self.root, passed.id, reason=f"pipeline {self.recipe.name}: last passing stage")

    def _fingerprint(self, spec: StageSpec, stage_recipe, parent, reward) -> str:
        """The stage's work as the lifecycle fingerprints it (recipe, TRL settings, library versions), before its
        data is curated: the input files' sha256s, the parent and reward runs, and the gate."""
        from alignkit import lifecycle

        st = stage_of(spec.stage)
        files = stage_recipe.data.files if hasattr(stage_recipe, "data") else []
        shas = {f: runs.sha256_file(f) for f in files if Path(f).is_file()}
        gate = runs.sha256_file(spec.gate) if spec.gate else None
        return lifecycle.fingerprint(spec.stage, stage_recipe, shas, parent.id if parent else None,
                                     lifecycle.trl_kwargs(st.defaults, stage_recipe.train), reward.id if reward else None, gate)

    def _completed(self, fp: str) -> runs.Run | None:
        reg = runs.read_registry(self.root)
        for run_id in sorted(reg["runs"], reverse=True):
            path = self.root / run_id
            if not (path / "manifest.json").is_file():
                continue
            run = runs.Run(path)
            m = run.manifest
            if m.get("pipeline", {}).get("fingerprint") == fp and run.status == "completed":
                return run
        return None

    def _gate(self, spec: StageSpec, run: runs.Run, parent: runs.Run | None) -> str:
        from eval import run_eval
        from eval.gate import run_gate

        if spec.gate is None:
            return "none"
        gate_file = run.path / "gate.json"
        if run.manifest.get("gate") and gate_file.is_file() and (run.path / "eval" / "report.json").is_file():
            print(f"   gate (recorded): {run.manifest['gate'].upper()}")
            return run.manifest["gate"]
        print(f"== {spec.stage}: eval of {run.id}")
        parent_adapter = parent.adapter_dir if parent is not None and parent.adapter_dir.is_dir() else None
        run_eval(self.eval_recipe, str(run.adapter_dir), run.path / "eval",
                 parent=str(parent_adapter) if parent_adapter else None)  # reward win rate over the parent, if set
        run_gate(spec.gate, str(run.path), str(parent.path) if parent else None)
        return runs.Run(run.path).manifest["gate"]

    def _collected_pairs(self, parent: runs.Run | None) -> str | None:
        """The pairs of the collect round; None (with instructions) while too few votes exist.

        With a program as annotator the round runs here: the parent adapter's own answers to the round's
        prompts, the judge's votes, the export. With humans, the pairs exported from the store so far.
        """
        from collect.export import ExportRules, write
        from collect.round import fill, open_round, run_round

        src = self.recipe.collect
        name = parent.id if parent else "base"
        url = src.store.replace("{parent}", name).replace("{output}", self.recipe.output)
        recipe = self.collect_recipe
        adapter = str(parent.adapter_dir) if parent else None
        log = lambda line: print("   " + line, flush=True)  # noqa: E731
        if src.annotator != "humans":
            out = self.root / "rounds" / f"{name}.pairs.jsonl"
            print(f"== collect round: {name} answers {src.prompts or 'all'} prompts, {src.annotator} votes")
            n = run_round(url, recipe, recipe.prompts, adapter, src.annotator, out, src.prompts, src.min_prompts,
                          src.min_margin, self.draw_seed, log=log)
        else:
            out = self.root / "pairs.jsonl"
            store = open_round(url, recipe, recipe.prompts, src.prompts, src.min_prompts, self.draw_seed, machine=False)
            n = write(store.dump(), out, ExportRules(min_votes=src.min_votes), store.overlap, dataset=False)["pairs"]
            if n < src.min_pairs:  # the annotators find the adapter's answers waiting for them
                print(f"== collect: {name}'s candidate pairs for the annotators")
                fill(store, recipe, adapter, log)
        if n >= src.min_pairs:
            print(f"   {n} pairs → {out}")
            return str(out)
        who = "" if src.annotator == "humans" else f"the {src.annotator} judge labelled {n}; people vote on the rest. "
        print(f"pipeline waiting for labels: {n} pairs in {url}, {src.min_pairs} needed. {who}\n"
              f"  alignkit collect serve --config {src.recipe} --store {url} --adapter {adapter or '<adapter>'}\n"
              f"  then re-run: alignkit pipeline --config {self.source}")
        return None

    def _print_summary(self, summary: list[dict[str, Any]]) -> None:
        print("\nstage    run                          gate")
        for row in summary:
            print(f"{row['stage']:<8} {row['run']:<28} {str(row['gate']).upper()}")
        self._print_headline(summary)

    def _print_headline(self, summary: list[dict[str, Any]]) -> None:
        """What changed: the gated suites' headline metrics for base, prompted base and each stage."""
        from alignkit.pipeline_report import suite_table
        from alignkit.runs import read_json

        base = read_json(self.root / "base" / "eval" / "report.json", None)
        stages = [(row["stage"], read_json(self.root / row["run"] / "eval" / "report.json", None)) for row in summary]
        table = suite_table(base, [(label, rep) for label, rep in stages if rep])
        arms = [a for a in ("base", "prompted") if any(a in row for row in table.values())]  # an arm may be off
        labels = arms + [label for label, rep in stages if rep]
        rows = [m for m in HEADLINE if m in table]
        if not rows:
            return
        print("\n" + f"{'metric':<28}" + "".join(f"{label:>10}" for label in labels))
        for metric in rows:
            cells = "".join(f"{table[metric][l]:>10.3f}" if l in table[metric] else f"{'-':>10}" for l in labels)
            print(f"{metric:<28}{cells}")


HEADLINE = ("harmful.refusal_rate", "benign.over_refusal_rate", "mc.acc", "passages.perplexity", "task.house_style")


def run_pipeline(config: str, overrides: list[str]) -> int:
    """`alignkit pipeline --config FILE`."""
    from alignkit.cli import quiet_libraries

    quiet_libraries()
    recipe = load_recipe(config, PipelineRecipe, overrides)
    return Pipeline(recipe, config).run()


def register(sub) -> None:
    """Add `alignkit pipeline` to the CLI."""
    from alignkit.cli import add_recipe_args

    p = sub.add_parser("pipeline", help="base eval → SFT → gate → DPO → gate (→ reward → RLHF) → promote")
    add_recipe_args(p)
    p.set_defaults(handler=lambda a: run_pipeline(a.config, a.overrides))
