"""The ``distill`` stage: train a student on (teacher) labels and reasoning with a chosen loss."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from reasondistill import ComponentRef, Options, Stage, StageResult, hookimpl
from reasondistill import distributed as dist
from reasondistill.components import StudentNetwork
from reasondistill.domain import recipe_domain, require_ability
from reasondistill.errors import DataError, PluginError, RecipeError
from reasondistill.evaluation import evaluate_student, retention
from reasondistill.fingerprint import portable_ref
from reasondistill.hf_compat import warmup_arg
from reasondistill.manager import validate_nested
from reasondistill.model_refs import model_max_positions
from reasondistill.plugins.student.calibration import calibrate
from reasondistill.plugins.student.ship_check import ship_check
from reasondistill.plugins.student.sources import (
    TrainSource,
    hide_verdict_in,
    read_verdict,
    training_rows,
    weights_mismatch,
)
from reasondistill.predictor import render_items
from reasondistill.recipe import OUTPUT_REF
from reasondistill.runtime import current
from reasondistill.student_io import check_round_trip, write_trained_outputs
from reasondistill.student_package import student_component
from reasondistill.views import STANDARD, check_encoding, forward_view, forward_views


class DistillOptions(Options):
    student: ComponentRef("student") = "encoder-classifier"
    student_options: dict[str, Any] = Field(default_factory=dict)
    loss: ComponentRef("loss") = "crsd"
    loss_options: dict[str, Any] = Field(default_factory=dict)
    train_input: str = Field("annotations", description="the earlier output to train on (one source; see sources)", json_schema_extra=OUTPUT_REF)
    sources: list[TrainSource] = Field(default_factory=list, description="several training inputs, each with a "
                                       "weight and filters (teacher annotations + gold pairs); replaces train_input")
    gate: str | None = Field(None, description="a quality gate's verdict (an earlier output, e.g. `verdict`): when "
                             "it falls back, the sources whose labels are the teacher's are dropped",
                             json_schema_extra=OUTPUT_REF)
    reasoning_column: str = "reasoning"
    domain_rationale: bool = Field(False, description="reasoning from the domain's rule-written rationale(row, label)")
    hide_verdict: bool = Field(False, description="drop the reasoning's sentences that name a label "
                                                  "(Domain.strip_verdict), so the reasoning view cannot copy it")
    label_column: str = "label"
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
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(200, ge=1)
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

    def options(self, raw=None, context=None) -> DistillOptions:
        opts = DistillOptions.model_validate(raw or {}, context=context)
        student = validate_nested(context, "student", opts.student, opts.student_options, "student_options")
        loss = validate_nested(context, "loss", opts.loss, opts.loss_options, "loss_options")
        catalogue = (context or {}).get("catalogue")
        loss_entry = catalogue.kind("loss").get(opts.loss) if catalogue is not None else None
        check_position_limit(context, student, bool(loss_entry and loss_entry.component.needs_reasoning))
        return opts.model_copy(update={"student_options": student.model_dump(), "loss_options": loss.model_dump()})

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
        from transformers import TrainingArguments
        from transformers.trainer_utils import get_last_checkpoint

        from reasondistill.training import DistillTrainer, PairCollator

        cat = ctx.hooks.catalogue
        student_c = cat.get("student", options.student)
        loss_c = cat.get("loss", options.loss)
        s_opts = student_c.options(options.student_options)
        l_opts = loss_c.options(options.loss_options)
        model_path = ctx.model("student")
        trust = ctx.recipe.trust_remote_code
        labels = ctx.domain.labels

        needs_r = loss_c.needs_reasoning
        train, source_metrics = training_rows(ctx, options, needs_r)
        if loss_c.uses_label_probs and "label_probs" not in train.column_names:
            import logging

            logging.getLogger("reasondistill").warning(
                "distill %s: loss %r learns from the teacher's label probabilities, and no training row has any "
                "(a server without logprobs): it trains on the hard labels only", ctx.name, options.loss)
        if len(train) < options.batch_size:
            names = ", ".join(s.input for s in options.train_sources())
            raise DataError(f"{names}: {len(train)} usable rows, fewer than batch_size {options.batch_size}")
        tokenizer = student_c.tokenizer(model_path, trust)
        texts = (t for r in train for t in (ctx.domain.query_text(r), ctx.domain.item_text(r),
                                             r.get("reasoning") or "" if needs_r else ""))
        added = list(student_c.adapt_tokenizer(tokenizer, texts, s_opts) or [])
        student_plugin = cat.kind("student")[options.student].plugin

        def encode(batch):
            rows = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
            queries = [ctx.domain.query_text(r) for r in rows]
            items = [ctx.domain.item_text(r) for r in rows]
            reasonings = [r.get("reasoning") or "" for r in rows] if needs_r else None
            out = student_c.encode(tokenizer, queries, items, reasonings, s_opts)
            check_encoding(out, needs_r, student_plugin)
            out["labels"] = [int(r[options.label_column]) for r in rows]
            return out

        encoded = train.map(encode, batched=True, desc="tokenizing",
                            remove_columns=[c for c in train.column_names if c not in ("label_probs", "weight")])
        student = student_c.build(model_path, len(labels), s_opts, trust, vocab_size=len(tokenizer) if added else None)
        check_network(student, student_plugin)
        dry_call_network(student, encoded, tokenizer, len(labels), needs_r, student_plugin)
        extra = loss_c.extra_modules(student.hidden_size, l_opts)
        if extra:
            import torch

            student.extra = torch.nn.ModuleDict(extra)
        ckpt_dir = ctx.dir / "checkpoints"
        args = TrainingArguments(
            output_dir=str(ckpt_dir), num_train_epochs=options.epochs, max_steps=options.max_steps,
            per_device_train_batch_size=options.batch_size, learning_rate=options.learning_rate,
            weight_decay=options.weight_decay, **warmup_arg(options.warmup_ratio), logging_steps=options.logging_steps,
            save_steps=options.save_steps, save_total_limit=2, seed=ctx.seed, data_seed=ctx.seed,
            report_to=options.report_to or "none", remove_unused_columns=False,
            dataloader_num_workers=0, disable_tqdm=False, dataloader_drop_last=True,
            **current().training_args(),
        )
        trainer = DistillTrainer(model=student, args=args, train_dataset=encoded,
                                 data_collator=PairCollator(tokenizer),
                                 loss=loss_c, loss_options=l_opts)
        last = get_last_checkpoint(str(ckpt_dir)) if ctx.resuming and ckpt_dir.exists() else None
        train_out = trainer.train(resume_from_checkpoint=last)
        dist.check_replicas(student, "distill")
        if not dist.is_main():  # every rank trained (DDP); the main process saves and evaluates
            return StageResult()

        out_dir = ctx.dir / "student"
        config = getattr(getattr(student, "model", None), "config", None)
        if config is not None:  # the exported config.json names the domain's labels, not LABEL_0..2
            config.id2label, config.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
        def ship(calibration: dict[str, float] | None = None) -> None:
            student_c.save(student, tokenizer, out_dir)
            (out_dir / "reasondistill.json").write_text(json.dumps({
                "labels": list(labels), "domain": ctx.domain.name, "domain_options": ctx.domain.settings.model_dump(mode="json"), "max_length": s_opts.max_length,
                "loss": options.loss, "student": options.student, "student_options": s_opts.model_dump(mode="json"),
                "base_model": portable_ref(ctx.recipe.models.get("student") or model_path),
                **({"calibration_offsets": calibration} if calibration else {})}, indent=2))
            hold_to_trained_outputs(ctx, student_c, student, tokenizer, out_dir, train, student_plugin)

        ship()
        history = [h for h in trainer.state.log_history if "loss" in h]
        (ctx.dir / "loss_history.json").write_text(json.dumps(history, indent=1))
        metrics: dict[str, Any] = {"train_rows": len(train), **source_metrics, "steps": trainer.state.global_step,
                                   "train_loss": round(float(train_out.training_loss), 5),
                                   "step_seconds": round(train_out.metrics["train_runtime"] / max(1, trainer.state.global_step), 4),
                                   "resumed_from": last.rsplit("-", 1)[-1] if last else None,
                                   "added_tokens": len(added)}
        if ctx.has_input("dev"):
            dev = hide_verdict_in(ctx.load_dataset("dev"), options, ctx.domain)
            metrics.update(evaluate_student(out_dir, dev, ctx.domain, reasoning_column=options.reasoning_column,
                                            student=student, tokenizer=tokenizer, student_options=s_opts, student_component=student_c,
                                            predictions_path=ctx.dir / "dev_predictions.json"))
        if options.calibrate == "macro_f1":
            if not ctx.has_input("dev"):
                raise DataError("calibrate: macro_f1 fits on the dev split, and this run has none (the pairs "
                                "stage's dev_fraction or dev_source makes one)")

            dev = hide_verdict_in(ctx.load_dataset("dev"), options, ctx.domain)
            calibration = calibrate(student, student_c, tokenizer, out_dir, dev.to_list(), ctx.domain,
                                    s_opts.max_length, ctx.seed, student_plugin)
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
            predictor = (student_c.predictor(out_dir, network=student, tokenizer=tokenizer) if shipped_trained
                         else student_component_of(out_dir, ctx))
            metrics.update({f"vs_teacher_{k}": v for k, v in
                            retention(predictor, ctx.load_dataset("dev_annotations"), ctx.domain).items()})
        import shutil

        if ckpt_dir.exists():  # the final model is saved; checkpoints only serve resume
            shutil.rmtree(ckpt_dir)
        outputs = {"student": "student", "loss_history": "loss_history.json"}
        if (ctx.dir / "dev_predictions.json").exists():
            outputs["dev_predictions"] = "dev_predictions.json"
        return StageResult(outputs=outputs, metrics=metrics)


REFERENCE_ROWS = 512


def student_component_of(folder, ctx):
    """The predictor of a saved student folder, by the component that trained it."""
    return student_component(folder, ctx.hooks).predictor(folder)


def hold_to_trained_outputs(ctx, component, network, tokenizer, out_dir, train, plugin: str) -> None:
    """Record the in-memory network's probabilities on up to ``REFERENCE_ROWS`` dev (else train)
    rows, then reload the saved folder and fail, naming the student plugin, if it differs: a
    ``save`` that drops a trained parameter never reaches dev metrics, export or the server."""
    source = ctx.load_dataset("dev") if ctx.has_input("dev") else train
    rows = list(source.select(range(min(REFERENCE_ROWS, len(source)))))
    queries, items = render_items(rows, ctx.domain)
    probs = component.predictor(out_dir, network=network, tokenizer=tokenizer).predict_proba(queries, items)
    write_trained_outputs(out_dir, queries, items, probs)
    check_round_trip(component, out_dir, plugin)


def dry_call_network(network: Any, encoded, tokenizer, num_labels: int, needs_reasoning: bool, plugin: str) -> None:
    """Run the network's views on two real rows before training: logits must be ``[rows,
    num_labels]`` and the vector ``[rows, hidden]``, else one line naming the student plugin (not the
    loss that would trip over it at the first step). The RNG state is restored, so training is
    unchanged by the call."""
    import torch

    from reasondistill.training import PairCollator
    rows = [encoded[i] for i in range(min(2, len(encoded)))]
    batch = PairCollator(tokenizer)([{k: v for k, v in r.items() if k not in ("label_probs", "weight")} for r in rows])
    device = next(network.parameters()).device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    hook = "StudentNetwork.forward_shared" if any(k.startswith("shr_") for k in batch) else "StudentNetwork.forward_view"
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            views = forward_views(network, batch) if needs_reasoning else (forward_view(network, batch, STANDARD),)
        except Exception as exc:
            raise PluginError(plugin, hook, f"failed on a batch of {len(rows)} rows: {type(exc).__name__}: {exc}") from exc
    for name, out in zip(("standard", "reasoning"), views):
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise PluginError(plugin, hook, f"the {name} view returned {type(out).__name__}, not (logits, cls) tensors")
        logits, cls = out
        if tuple(logits.shape) != (len(rows), num_labels):
            raise PluginError(plugin, hook, f"the {name} view's logits have shape {tuple(logits.shape)}; the domain has "
                              f"{num_labels} labels, so [{len(rows)}, {num_labels}] for {len(rows)} rows")
        if cls.dim() != 2 or cls.shape[0] != len(rows):
            raise PluginError(plugin, hook, f"the {name} view's vector has shape {tuple(cls.shape)}; "
                              f"[{len(rows)}, hidden] for {len(rows)} rows")


def check_position_limit(context: dict | None, student_options: Any, reasoning_view: bool) -> None:
    """At ``validate``: the student's token budget (``max_length``, plus ``reasoning_tokens`` for
    the reasoning view) fits its model's positions; else an error naming the option and the limit
    (a 100,000-token budget once trained, then failed in the server on a long document)."""
    context = context or {}
    recipe, catalogue = context.get("recipe"), context.get("catalogue")
    length = getattr(student_options, "max_length", None)
    if recipe is None or catalogue is None or not isinstance(length, int):
        return
    ref = recipe.models.get("student")
    limit = model_max_positions(ref, catalogue)
    if not limit:
        return
    if length > limit:
        raise RecipeError("student_options.max_length", f"{length} is above the {limit} positions of the student "
                          f"model {ref!r}; at most {limit}")
    extra = (getattr(student_options, "reasoning_tokens", 0) or 0) if reasoning_view else 0
    if length + extra > limit:
        raise RecipeError("student_options.reasoning_tokens", f"max_length {length} + reasoning_tokens {extra} = "
                          f"{length + extra} is above the {limit} positions of the student model {ref!r} (the "
                          f"reasoning view reads both); at most {limit - length}")


def check_network(network: Any, plugin: str) -> None:
    """What ``Student.build`` returned trains under the losses: a torch module with the
    :class:`~reasondistill.components.StudentNetwork` members; else one line naming the plugin."""
    import torch


    if not isinstance(network, torch.nn.Module) or not isinstance(network, StudentNetwork):
        missing = [m for m in ("forward_view", "hidden_size", "extra") if not hasattr(network, m)]
        raise PluginError(plugin, "Student.build", f"returned a {type(network).__name__}, not a torch.nn.Module with "
                          f"forward_view, hidden_size and extra (missing: {', '.join(missing) or 'torch.nn.Module'}); "
                          "see reasondistill.components.StudentNetwork")


@hookimpl
def register_stages(register):
    register(DistillStage())

