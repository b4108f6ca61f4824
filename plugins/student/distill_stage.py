"""The ``distill`` stage: train a student on (teacher) labels and reasoning with a chosen loss."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from reasondistill import ComponentRef, NestedOptions, Options, Stage, StageResult, hookimpl
from reasondistill import distributed as dist
from reasondistill.domain import recipe_domain, require_ability
from reasondistill.errors import DataError
from reasondistill.evaluation import evaluate_student, retention
from reasondistill.fingerprint import portable_ref
from reasondistill.hf_compat import warmup_arg
from reasondistill.manager import validate_nested
from reasondistill.plugins.student.calibration import calibrate
from reasondistill.plugins.student.checks import (
    check_network,
    check_position_limit,
    dry_call_network,
    hold_to_trained_outputs,
    student_component_of,
)
from reasondistill.plugins.student.ship_check import ship_check
from reasondistill.plugins.student.sources import (
    TrainSource,
    hide_verdict_in,
    read_verdict,
    training_rows,
    weights_mismatch,
)
from reasondistill.recipe import OUTPUT_REF
from reasondistill.runtime import current
from reasondistill.views import check_encoding

log = logging.getLogger("reasondistill")


class DistillOptions(Options):
    student: ComponentRef("student") = Field("encoder-classifier",
        description="the student component to train (`encoder-classifier`, or a plugin's)")
    student_options: NestedOptions = Field(default_factory=dict,
        description="options of that student, validated with its own Options")
    loss: ComponentRef("loss") = Field("crsd", description="the distillation loss: `crsd` (the paper), `ce` or `kd`")
    loss_options: NestedOptions = Field(default_factory=dict,
        description="options of that loss, validated with its own Options")
    train_input: str = Field("annotations", description="the earlier output to train on (one source; see sources)", json_schema_extra=OUTPUT_REF)
    sources: list[TrainSource] = Field(default_factory=list, description="several training inputs, each with a "
                                       "weight and filters (teacher annotations + gold pairs); replaces train_input")
    gate: str | None = Field(None, description="a quality gate's verdict (an earlier output, e.g. `verdict`): when "
                             "it falls back, the sources whose labels are the teacher's are dropped",
                             json_schema_extra=OUTPUT_REF)
    reasoning_column: str = Field("reasoning",
        description="the training rows' column holding the teacher's reasoning (the reasoning view)")
    domain_rationale: bool = Field(False, description="reasoning from the domain's rule-written rationale(row, label)")
    hide_verdict: bool = Field(False, description="drop the reasoning's sentences that name a label "
                                                  "(Domain.strip_verdict), so the reasoning view cannot copy it")
    label_column: str = Field("label", description="the training rows' column holding the label to learn")
    class_weights: Literal["balanced"] | list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="loss weight per class, for every built-in loss: 'balanced' (n / (k * n_c) over the "
        "training rows, the minority class weighs most) or one positive number per label; recorded in the run "
        "and the model card")
    calibrate: Literal["none", "macro_f1"] = Field(
        "none", description="after training, fit per-class logit offsets on half of the dev split to maximise "
        "macro-F1 (the other half reports before and after), added to the student's final bias so the "
        "predictor, ONNX export and serve give the same labels")
    epochs: float = Field(3.0, gt=0, le=10000, description="passes over the training rows")
    max_steps: int = Field(-1, ge=-1, description="overrides epochs when > 0")
    batch_size: int = Field(32, ge=2, description="also the InfoNCE negatives per row + 1")
    learning_rate: float = Field(5e-5, gt=0, le=1, description="peak learning rate (AdamW); above 1 diverges")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps spent warming the learning rate up")
    logging_steps: int = Field(10, ge=1, description="log the loss (and each loss term) every N steps")
    save_steps: int = Field(200, ge=1, description="write a checkpoint every N steps (resume after an interruption)")
    report_to: list[str] = Field(default_factory=list, description="trackers, as in TrainingArguments")

    @field_validator("domain_rationale")
    @classmethod
    def _domain_writes(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            require_ability(info.context, "writes_rationale", "")
        return value

    @field_validator("class_weights")
    @classmethod
    def _one_weight_per_label(cls, value: Any, info: ValidationInfo) -> Any:
        domain = recipe_domain(info.context)
        wrong = weights_mismatch(value, domain.labels) if domain is not None else None
        if wrong:
            raise ValueError(wrong)
        return value

    @field_validator("sources")
    @classmethod
    def _sources_domain_writes(cls, value: list[TrainSource], info: ValidationInfo) -> list[TrainSource]:
        if any(s.reasoning == "domain" for s in value):
            require_ability(info.context, "writes_rationale", "set the source's reasoning: column")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_inputs(self) -> "DistillOptions":
        if self.sources and "train_input" in self.model_fields_set:
            raise ValueError("give train_input or sources, not both")
        return self

    def train_sources(self) -> list[TrainSource]:
        return self.sources or [TrainSource(input=self.train_input)]


class DistillStage(Stage):
    name = "distill"
    description = "Train the student (CRSD, CE or KD) with transformers.Trainer; outputs `student`."
    Options = DistillOptions
    distributed = True

    def model_roles(self, recipe, options, catalogue) -> tuple[str, ...]:
        """The student it trains starts from ``models.student``."""
        return ("student",)

    def options(self, raw=None, context=None) -> DistillOptions:
        opts = DistillOptions.model_validate(raw or {}, context=context)
        student = validate_nested(context, "student", opts.student, opts.student_options, "student_options")
        loss = validate_nested(context, "loss", opts.loss, opts.loss_options, "loss_options")
        catalogue = (context or {}).get("catalogue")
        loss_entry = catalogue.kind("loss").get(opts.loss) if catalogue is not None else None
        check_position_limit(context, student, bool(loss_entry and loss_entry.component.needs_reasoning))
        return opts.model_copy(update={"student_options": student, "loss_options": loss})  # typed from here on

    def preflight(self, check, options: DistillOptions) -> None:
        """Tokenize, encode and build the student, and run its views on two of the run's rows."""
        if not check.rows:
            return
        cat = check.hooks.catalogue
        student_c, loss_c = cat.get("student", options.student), cat.get("loss", options.loss)
        s_opts = student_c.options(options.student_options)
        plugin = cat.kind("student")[options.student].plugin
        model_path, trust = check.model("student"), check.recipe.trust_remote_code
        tokenizer = student_c.tokenizer(model_path, trust)
        rows = check.rows[:2]
        needs_r = loss_c.needs_reasoning
        reasonings = [check.completion(r) for r in rows] if needs_r else None
        enc = student_c.encode(tokenizer, [check.domain.query_text(r) for r in rows],
                               [check.domain.item_text(r) for r in rows], reasonings, s_opts)
        check_encoding(enc, needs_r, plugin)
        network = student_c.build(model_path, len(check.domain.labels), s_opts, trust)
        check_network(network, plugin)
        dry_call_network(network, [{k: enc[k][i] for k in enc} for i in range(len(rows))], tokenizer,
                         len(check.domain.labels), needs_r, plugin)

    def run(self, ctx, options: DistillOptions) -> StageResult:
        parts = StudentParts.of(ctx, options)
        train, source_metrics = training_rows(ctx, options, parts.needs_reasoning)
        check_training_rows(ctx, options, parts, train)
        encoded, added = parts.encode(ctx, train, options.label_column)
        student = parts.build(ctx, encoded, added)
        trainer, trained = train_student(ctx, options, parts, student, encoded)
        if not dist.is_main():  # every rank trained (DDP); the main process saves and evaluates
            return StageResult()
        ship = Shipper(ctx, options, parts, student, train)
        ship()
        (ctx.dir / "loss_history.json").write_text(json.dumps([h for h in trainer.state.log_history if "loss" in h], indent=1))
        metrics: dict[str, Any] = {"train_rows": len(train), **source_metrics, **trained, "added_tokens": len(added)}
        metrics.update(self.evaluate(ctx, options, parts, student, ship))
        shutil.rmtree(ctx.dir / "checkpoints", ignore_errors=True)  # the student is saved; checkpoints only serve resume
        outputs = {"student": "student", "loss_history": "loss_history.json"}
        if (ctx.dir / "dev_predictions.json").exists():
            outputs["dev_predictions"] = "dev_predictions.json"
        return StageResult(outputs=outputs, metrics=metrics)

    @staticmethod
    def evaluate(ctx, options: DistillOptions, parts: StudentParts, student: Any, ship: Shipper) -> dict[str, Any]:
        """Dev figures of the saved student, its calibration, the ship check, and its agreement with
        the teacher; whatever replaces the trained student (calibrated, the gate's reference) is
        what the figures describe."""
        metrics: dict[str, Any] = {}
        out_dir, dev = ship.out_dir, None
        if ctx.has_input("dev"):
            dev = hide_verdict_in(ctx.load_dataset("dev"), options, ctx.domain)
            metrics.update(evaluate_student(out_dir, dev, ctx.domain, reasoning_column=options.reasoning_column,
                                            student=student, tokenizer=parts.tokenizer, student_options=parts.student_options,
                                            student_component=parts.student, predictions_path=ctx.dir / "dev_predictions.json"))
        if options.calibrate == "macro_f1":
            if dev is None:
                raise DataError("calibrate: macro_f1 fits on the dev split, and this run has none (the pairs "
                                "stage's dev_fraction or dev_source makes one)")
            calibration = calibrate(student, parts.student, parts.tokenizer, out_dir, dev.to_list(), ctx.domain,
                                    parts.student_options.max_length, ctx.seed, parts.plugin)
            metrics.update(calibration)
            if any(calibration["calibration_offsets"].values()):
                ship(calibration["calibration_offsets"])  # the calibrated network is what ships
        shipped_trained = True
        if options.gate:
            metrics.update(ship_check(ctx, read_verdict(ctx, options.gate), out_dir, ctx.name, options.calibrate == "macro_f1"))
            shipped_trained = metrics["ship_check"] != "reference"
            if not shipped_trained:  # the manifest describes what ships: the reference's dev figures
                trained = {k: metrics.pop(k) for k in [k for k in metrics if k.startswith("dev_")]}
                metrics.update({f"trained_{k}": v for k, v in trained.items()})
                metrics.update(evaluate_student(out_dir, ctx.load_dataset("dev"), ctx.domain,
                                                predictions_path=ctx.dir / "dev_predictions.json"))
        if ctx.has_input("dev_annotations"):
            predictor = (parts.student.predictor(out_dir, network=student, tokenizer=parts.tokenizer) if shipped_trained
                         else student_component_of(out_dir, ctx))
            metrics.update({f"vs_teacher_{k}": v for k, v in
                            retention(predictor, ctx.load_dataset("dev_annotations"), ctx.domain).items()})
        return metrics


@dataclass
class StudentParts:
    """The student and loss components a distill stage uses, their validated options, the
    student's tokenizer, and the plugin to name when the student gets something wrong."""

    student: Any
    loss: Any
    student_options: Any
    loss_options: Any
    plugin: str
    model_path: str
    tokenizer: Any = None

    @classmethod
    def of(cls, ctx, options: DistillOptions) -> StudentParts:
        cat = ctx.hooks.catalogue
        student, loss = cat.get("student", options.student), cat.get("loss", options.loss)
        model_path = ctx.model("student")
        return cls(student, loss, student.options(options.student_options), loss.options(options.loss_options),
                   cat.kind("student")[options.student].plugin, model_path,
                   student.tokenizer(model_path, ctx.recipe.trust_remote_code))

    @property
    def needs_reasoning(self) -> bool:
        return self.loss.needs_reasoning

    def encode(self, ctx, train, label_column: str) -> tuple[Any, list[str]]:
        """The training rows tokenized into the student's views, and the tokens the student added
        to its tokenizer for them (``Student.adapt_tokenizer``)."""
        dom, needs_r = ctx.domain, self.needs_reasoning
        texts = (t for r in train for t in (dom.query_text(r), dom.item_text(r), r.get("reasoning") or "" if needs_r else ""))
        added = list(self.student.adapt_tokenizer(self.tokenizer, texts, self.student_options) or [])

        def encode(batch):
            rows = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
            reasonings = [r.get("reasoning") or "" for r in rows] if needs_r else None
            out = self.student.encode(self.tokenizer, [dom.query_text(r) for r in rows], [dom.item_text(r) for r in rows],
                                      reasonings, self.student_options)
            check_encoding(out, needs_r, self.plugin)
            out["labels"] = [int(r[label_column]) for r in rows]
            return out

        keep = ("label_probs", "weight")
        return train.map(encode, batched=True, desc="tokenizing",
                         remove_columns=[c for c in train.column_names if c not in keep]), added

    def build(self, ctx, encoded, added: list[str]) -> Any:
        """The student network, checked and dry-called on two encoded rows, with the loss's extra
        modules (CRSD's projection heads) attached."""
        labels = len(ctx.domain.labels)
        network = self.student.build(self.model_path, labels, self.student_options, ctx.recipe.trust_remote_code,
                                     vocab_size=len(self.tokenizer) if added else None)
        check_network(network, self.plugin)
        dry_call_network(network, encoded, self.tokenizer, labels, self.needs_reasoning, self.plugin)
        extra = self.loss.extra_modules(network.hidden_size, self.loss_options)
        if extra:
            import torch  # heavy: loaded when a student trains

            network.extra = torch.nn.ModuleDict(extra)
        config = getattr(getattr(network, "model", None), "config", None)
        if config is not None:  # the exported config.json names the domain's labels, not LABEL_0..2
            names = ctx.domain.labels
            config.id2label, config.label2id = dict(enumerate(names)), {name: i for i, name in enumerate(names)}
        return network


def check_training_rows(ctx, options: DistillOptions, parts: StudentParts, train) -> None:
    """Enough rows for one full batch; a loss that reads the teacher's label probabilities warned
    when no row carries any (a server without logprobs)."""
    if parts.loss.uses_label_probs and "label_probs" not in train.column_names:
        log.warning("distill %s: loss %r learns from the teacher's label probabilities, and no training row has any "
                    "(a server without logprobs): it trains on the hard labels only", ctx.name, options.loss)
    if len(train) < options.batch_size:
        names = ", ".join(s.input for s in options.train_sources())
        raise DataError(f"{names}: {len(train)} usable rows, fewer than batch_size {options.batch_size}")


def train_student(ctx, options: DistillOptions, parts: StudentParts, student: Any, encoded) -> tuple[Any, dict[str, Any]]:
    """Train with :class:`~reasondistill.training.DistillTrainer`, resuming from the last checkpoint
    of an interrupted run; the trainer and what the run record keeps of its training."""
    # heavy (torch, transformers): imported when a student trains, not when the plugin registers
    from transformers.trainer_utils import get_last_checkpoint

    from reasondistill.training import DistillConfig, DistillTrainer, PairCollator

    ckpt_dir = ctx.dir / "checkpoints"
    args = DistillConfig(
        output_dir=str(ckpt_dir), num_train_epochs=options.epochs, max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size, learning_rate=options.learning_rate,
        weight_decay=options.weight_decay, **warmup_arg(options.warmup_ratio), logging_steps=options.logging_steps,
        save_steps=options.save_steps, seed=ctx.seed, data_seed=ctx.seed, report_to=options.report_to or "none",
        disable_tqdm=False, **current().training_args())
    trainer = DistillTrainer(model=student, args=args, train_dataset=encoded, data_collator=PairCollator(parts.tokenizer),
                             loss=parts.loss, loss_options=parts.loss_options)
    last = get_last_checkpoint(str(ckpt_dir)) if ctx.resuming and ckpt_dir.exists() else None
    out = trainer.train(resume_from_checkpoint=last)
    dist.check_replicas(student, "distill")
    steps = trainer.state.global_step
    return trainer, {"steps": steps, "train_loss": round(float(out.training_loss), 5),
                     "step_seconds": round(out.metrics["train_runtime"] / max(1, steps), 4),
                     "resumed_from": last.rsplit("-", 1)[-1] if last else None}


class Shipper:
    """Writes the student folder (``Student.save`` plus ``reasondistill.json``) and holds the saved
    folder to the trained network's outputs; called again when calibration changes what ships."""

    def __init__(self, ctx, options: DistillOptions, parts: StudentParts, student: Any, train):
        self.ctx, self.options, self.parts, self.student, self.train = ctx, options, parts, student, train
        self.out_dir = ctx.dir / "student"

    def __call__(self, calibration: dict[str, float] | None = None) -> None:
        ctx, options, parts = self.ctx, self.options, self.parts
        parts.student.save(self.student, parts.tokenizer, self.out_dir)
        (self.out_dir / "reasondistill.json").write_text(json.dumps({
            "labels": list(ctx.domain.labels), "domain": ctx.domain.name,
            "domain_options": ctx.domain.settings.model_dump(mode="json"), "max_length": parts.student_options.max_length,
            "loss": options.loss, "student": options.student, "student_options": parts.student_options.model_dump(mode="json"),
            "base_model": portable_ref(ctx.recipe.models.get("student") or parts.model_path),
            **({"calibration_offsets": calibration} if calibration else {})}, indent=2))
        hold_to_trained_outputs(ctx, parts.student, self.student, parts.tokenizer, self.out_dir, self.train, parts.plugin)


@hookimpl
def register_stages(register):
    register(DistillStage())

