"""Base classes for everything a plugin can register.

A component is an object with a ``name``, a pydantic ``Options`` model (validated from the
recipe with ``extra="forbid"``) and the methods of its kind. Configs are data (``Options``),
behaviour is code (the component), as in trl's config-beside-trainer convention.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Iterable, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

from .onnx_export import export_onnx
from .predictor import Predictor
from .student_io import load_network, save_network

if TYPE_CHECKING:
    from datasets import Dataset

    from .stage_context import StageContext, StageResult


class Options(BaseModel):
    """Base for component options: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class NoOptions(Options):
    """For components that take no options."""


class Component(ABC):
    """Common shape: a unique ``name`` per kind, a one-line ``description`` and ``Options``."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = NoOptions

    def options(self, raw: dict[str, Any] | None = None, context: dict | None = None) -> Options:
        """Validate raw recipe options into this component's ``Options`` model."""
        return self.Options.model_validate(raw or {}, context=context)


class Stage(Component):
    """One step of a recipe. ``run`` reads inputs from ``ctx`` and writes outputs under ``ctx.dir``.

    A stage must be resumable: when ``ctx.resuming`` is true the folder holds what an interrupted
    run left, and the stage continues from it instead of starting over.
    """

    kind = "stage"
    #: the stage makes the teacher write through the recipe's generation backend, so the
    #: recipe's ``backends`` are part of its hash
    generates: ClassVar[bool] = False
    #: under ``torchrun``/``accelerate launch`` every rank runs the stage (it trains with DDP or
    #: splits its work by rank); otherwise only the main process runs it while the others wait.
    #: A distributed stage writes its outputs from the main process only.
    distributed: ClassVar[bool] = False

    @abstractmethod
    def run(self, ctx: StageContext, options: Any) -> StageResult:
        """Do the stage's work and return its outputs (paths under ``ctx.dir``) and metrics."""

    def input_fingerprints(self, options: Any) -> dict[str, str]:
        """Fingerprints of external inputs (files named in options), part of the stage hash."""
        return {}

    def preflight(self, check: Any, options: Any) -> None:
        """A dry call before the run starts (:mod:`reasondistill.preflight`): call the plugins this
        stage will use on ``check.rows`` (a few of the run's own rows) and raise what they get
        wrong, so the mistake is found before any stage trains. Default: nothing to call."""

    def model_roles(self, recipe: Any, options: Any, catalogue: Any) -> tuple[str, ...]:
        """The recipe's model roles (``models.<role>``) this stage loads with these options, so a
        recipe that lacks one is refused at ``validate``, not when the stages before this one have
        run. Default: none."""
        return ()


class Annotator(Component):
    """Makes a teacher label pairs with a reasoning chain (the annotations contract).

    ``needs_teacher`` false marks an annotator that runs no teacher model (the ``gold`` labels),
    so the stage does not load or materialise one for it.
    """

    kind = "annotator"
    needs_teacher: ClassVar[bool] = True

    @abstractmethod
    def annotate(self, ctx: StageContext, pairs: Dataset, teacher: str, options: Any) -> Dataset:
        """Return ``pairs`` plus ``label``, ``reasoning``, ``label_probs``, ``teacher``, ``parse_ok``
        (and ``error`` for rows whose generation failed; the stage redoes those on a rerun).

        ``teacher`` is the local teacher folder, or ``""`` when the recipe has none (a served
        teacher); an annotator that makes the teacher write gets it from
        :func:`reasondistill.generators.load_generator`.
        """

    def model_roles(self, recipe: Any, options: Any, catalogue: Any) -> tuple[str, ...]:
        """The recipe's model roles this annotator loads, checked at ``validate`` (see
        :meth:`Stage.model_roles`). Default: none (the built-in ``teacher`` annotator names the
        teacher where it runs here)."""
        return ()

    def usage(self) -> dict[str, Any]:
        """What the annotator's teacher has spent so far (``generator_accounting``'s shape), for
        the run record; the stage reports the difference over its own work. Default: nothing known."""
        return {}

    def check_precision(self, ctx: StageContext, pairs: Dataset, teacher: str, options: Any) -> dict[str, Any]:
        """Called once before any shard is annotated: check that the precision the teacher runs at
        gives the labels fp32 would (and fall back when it does not); metrics for the run record.
        Default: nothing to check (a served teacher's precision is the server's)."""
        return {}


class Selector(Component):
    """Picks which unlabeled pool rows the teacher annotates next (the ``active`` stage).

    ``needs_probabilities`` tells the stage whether to score the pool with the current student
    first (a random selector does not need it, so it costs no student inference).
    """

    kind = "selector"
    needs_probabilities: ClassVar[bool] = True

    @abstractmethod
    def select(self, rows: list[dict[str, Any]], probabilities: Any, k: int, seed: int, options: Any) -> list[int]:
        """Return exactly ``min(k, len(rows))`` distinct positions in ``rows`` to annotate.

        ``probabilities`` is the current student's ``[len(rows), labels]`` array (``None`` when
        ``needs_probabilities`` is false); ``seed`` changes every round, so a random choice is
        reproducible. The stage checks the answer and names the plugin when it is wrong.
        """


@runtime_checkable
class StudentNetwork(Protocol):
    """What :meth:`Student.build` returns and the losses train (a ``torch.nn.Module``).

    ``forward_view`` runs one view and returns ``(logits [n, labels], cls [n, hidden])``: the
    logits of the one classifier head, and the vector the contrastive term aligns. ``extra`` is a
    ``torch.nn.ModuleDict`` where the distill stage puts the loss's own parameters
    (:meth:`DistillLoss.extra_modules`), so they train and checkpoint with the network. A student
    that encodes the shared layout (``shr_*``) also implements
    ``forward_shared(input_ids, attention_mask, split, token_type_ids=None)`` returning both views.
    """

    hidden_size: int
    extra: Any

    def forward_view(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> tuple[Any, Any]: ...


class Student(Component):
    """Builds, encodes for, saves and serves the fast relevance model.

    The ``distill`` stage calls, in this order: :meth:`tokenizer`, :meth:`adapt_tokenizer`,
    :meth:`encode` (batch layout: :mod:`reasondistill.views`), :meth:`build` (a
    :class:`StudentNetwork`), trains it with the loss, then :meth:`save`. Dev evaluation, export and
    ``serve`` ask the student for :meth:`predictor` and :meth:`export_onnx`; the defaults fit a
    network whose ``model`` is a transformers ``AutoModelForSequenceClassification``.
    """

    kind = "student"

    @abstractmethod
    def tokenizer(self, model: str, trust_remote_code: bool = False) -> Any:
        """The tokenizer for the base model ``model`` (a local folder or hub id)."""

    def adapt_tokenizer(self, tokenizer: Any, texts: Iterable[str], options: Any) -> list[str]:
        """Add tokens the training text needs (read ``texts`` only if you use them); returns the
        tokens added, and :meth:`build` then gets ``vocab_size``. Default: add nothing."""
        return []

    @abstractmethod
    def encode(self, tokenizer: Any, queries: list[str], items: list[str], reasonings: list[str] | None,
               options: Any) -> dict[str, list]:
        """Token lists of the standard view (``std_*``) and, when ``reasonings`` is given, of the
        reasoning view (``rsn_*`` or ``shr_*``): see :mod:`reasondistill.views`."""

    @abstractmethod
    def build(self, model: str, num_labels: int, options: Any, trust_remote_code: bool = False,
              vocab_size: int | None = None) -> StudentNetwork:
        """A trainable :class:`StudentNetwork` initialised from ``model``, with ``num_labels``
        outputs and, when given, input embeddings for ``vocab_size`` tokens."""

    def save(self, network: Any, tokenizer: Any, folder: Path) -> None:
        """Write the trained network and its tokenizer so :meth:`predictor` can load them.

        Default: ``network.model.save_pretrained`` plus every parameter outside ``network.model``
        (a custom head) in ``network.safetensors`` (:mod:`reasondistill.student_io`). The stage then
        reloads the folder and fails, naming this plugin, if it does not reproduce the trained outputs.
        """
        save_network(network, tokenizer, folder, self.name)

    def predictor(self, folder: Path, network: Any = None, tokenizer: Any = None, batch_size: int = 64) -> Any:
        """An object with ``predict_proba(queries, items) -> ndarray [n, labels]`` for the saved
        student in ``folder`` (or the in-memory ``network``): the standard view only.

        Default: the network's own ``forward_view``; a folder with parameters outside the sequence
        classifier is rebuilt with :meth:`build` and read back whole.
        """
        if network is None:
            network = load_network(self, Path(folder))
        return Predictor(folder, batch_size=batch_size, network=network, tokenizer=tokenizer)

    def export_onnx(self, folder: Path, out_dir: Path, quantize: bool = True, optimize: bool = True) -> dict[str, str]:
        """Write the standard view as ONNX to ``out_dir`` (``model.onnx``, optionally
        ``model.int8.onnx``, and the tokenizer); returns ``{"fp32": name, "int8": name}``.

        Default: the sequence classifier, or, for a folder with parameters outside it, the
        network rebuilt by :meth:`predictor`'s rule and traced through ``forward_view``."""
        network = load_network(self, Path(folder), inference=False)
        return export_onnx(folder, out_dir, quantize=quantize, optimize=optimize, network=network)


class DistillLoss(Component):
    """A training objective for the student.

    ``needs_reasoning`` tells the trainer whether to encode the reasoning-augmented view.
    """

    kind = "loss"
    needs_reasoning: ClassVar[bool] = False
    #: the loss learns from the teacher's ``label_probs``; the stage warns when the rows have none
    uses_label_probs: ClassVar[bool] = False

    @abstractmethod
    def compute(self, student: Any, batch: dict[str, Any], options: Any) -> dict[str, Any]:
        """Return ``{"loss": total, "logits": standard-view logits, "<term>": value, ...}``; each
        term is logged on its own. Read the views with :func:`reasondistill.views.forward_views`."""

    def extra_modules(self, hidden_size: int, options: Any) -> dict[str, Any]:
        """Parameters the loss trains with the student (a projection head), by name; they land in
        ``student.extra``. Default: none."""
        return {}


class ModelSource(Component):
    """A named model that materialises offline into a local folder (weights + tokenizer)."""

    kind = "model"
    #: ``causal-lm`` (fits the ``teacher`` role) or ``encoder`` (fits ``student``); ``validate``
    #: refuses a recipe that gives a role a model of the other kind
    model_kind: ClassVar[str] = "causal-lm"
    #: the longest token sequence the model reads (its ``max_position_embeddings``), so ``validate``
    #: can refuse a ``max_length`` beyond it without materialising the model; ``None``: unknown
    max_positions: ClassVar[int | None] = None

    @abstractmethod
    def materialize(self, cache_dir: Path) -> Path:
        """Create (once) and return the folder ``from_pretrained`` loads."""

    def materialize_for(self, cache_dir: Path, domain: Any) -> Path:
        """The folder for a run in ``domain``; by default the same for every domain. Override
        where the model depends on the domain's text (the tiny models train their tokenizer on it)."""
        return self.materialize(cache_dir)


def ComponentRef(kind: str) -> Any:
    """An options field naming a registered component of ``kind`` (checked against the catalogue).

    Use as a type: ``loss: ComponentRef("loss") = "crsd"``. The error lists the registered names.
    """
    from typing import Annotated

    from pydantic import ValidationInfo
    from pydantic.functional_validators import AfterValidator

    def check(value: str, info: ValidationInfo) -> str:
        catalogue = (info.context or {}).get("catalogue")
        if catalogue is not None and value not in catalogue.kind(kind):
            names = ", ".join(sorted(catalogue.kind(kind))) or "none"
            raise ValueError(f"unknown {kind} {value!r}; registered: {names}")
        return value

    return Annotated[str, AfterValidator(check)]


def _mapping_or_options(value: Any) -> Any:
    if not isinstance(value, (dict, BaseModel)):
        raise ValueError(f"must be a mapping of options, got {type(value).__name__}")
    return value


def _as_mapping(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


#: An options field that holds another component's options (``student_options``, ``loss_options``,
#: ``annotator_options``): a mapping in the recipe; after the owning stage validates it with that
#: component's own ``Options`` (``Stage.options``), the typed model; written out (manifest, stage
#: hash, docs) as the mapping it stands for.
NestedOptions = Annotated[Any, BeforeValidator(_mapping_or_options), PlainSerializer(_as_mapping),
                          WithJsonSchema({"type": "object"})]
