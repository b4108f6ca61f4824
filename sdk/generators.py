"""The generation seam: one protocol every teacher backend speaks, and how a stage gets one.

Every stage that makes the teacher write (annotation, preference sampling, teacher evaluation,
STaR rationalization) asks :func:`load_generator` for a :class:`Generator` and never builds a
model itself. Parsing, voting, retries of unparsable answers and sharding stay above the seam, in
the stages, so a backend only turns chat messages into completions. Backends are components
(kind ``backend``) registered by plugins through ``register_generation_backends``: the built-in
``transformers`` (a local model folder) and ``openai`` (any OpenAI-compatible server: vLLM,
SGLang, TGI, llama.cpp, ``transformers serve``); a third party adds its own the same way.

A recipe picks the backend once for the teacher role (``backends: {teacher: {uses: openai,
options: {...}}}``) or per stage (a stage's ``backend`` option, the annotator's
``annotator_options.backend``).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from .components import Component

if TYPE_CHECKING:
    from .domain import Domain
    from .stage_context import StageContext

Messages = list[dict[str, str]]


@dataclass
class Generation:
    """One completion. ``error`` is set (and ``text`` empty) when the backend gave up on it after its
    own retries; the stages turn such a completion into an unparsed row that carries the error."""

    text: str
    tokens: int
    label_probs: list[float] | None = None
    error: str | None = None


@runtime_checkable
class Generator(Protocol):
    """What a loaded backend does: completions for chat prompts.

    ``identity`` names the teacher for fingerprints and the ``teacher`` column: a model folder's
    path, or a served model's id as the server lists it, never an address or a key.
    """

    identity: str

    def generate(self, messages: Sequence[Messages], *, n: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, max_new_tokens: int | None = None,
                 progress: Any = None) -> list[list[Generation]]:
        """``n`` completions per prompt, in input order.

        :param messages: one chat (system + user messages) per prompt.
        :param n: completions per prompt (sampled when ``n > 1`` and ``do_sample``).
        :param do_sample: sample with ``temperature`` / ``top_p``; greedy otherwise.
        :param seed: makes sampling repeatable where the backend can.
        :param stop: a completion ends right after the first of these strings (kept in the text);
            ``None`` means the domain's ``Label: <name>`` lines, ``[]`` means no stop strings.
        :param max_new_tokens: the token budget of one completion (``None``: the backend's).
        :param progress: a tqdm-like object; ``update(1)`` per finished prompt.
        """


def generator_accounting(gen: Any) -> dict[str, Any]:
    """What ``gen`` has spent since it was loaded: ``{"endpoints": {url: counts}, "total": counts}``
    with requests, answers, failed attempts by kind and the servers' token counts, or ``{}``.

    An optional ability of a :class:`Generator` (``accounting()``): the ``openai`` backend has it;
    a local model or a third-party backend need not, so the stage asks here instead of requiring it.
    """
    return _ability(gen, "accounting", lambda: {})()


def generator_precision_check(gen: Any, messages: Sequence[Messages], min_agreement: float) -> dict[str, Any] | None:
    """bf16 against fp32 labels on ``messages`` (``{"dtype": ..., "agreement": ...}``), or None.

    An optional ability of a :class:`Generator` (``check_bf16_labels(messages, min_agreement)``): the
    local ``transformers`` engines have it; a served teacher's precision is the server's, so it has
    none. Asked here, in one place, like :func:`generator_accounting`.
    """
    return _ability(gen, "check_bf16_labels", lambda *_: None)(messages, min_agreement)


def _ability(gen: Any, name: str, default: Any) -> Any:
    """A generator's optional method ``name``, else ``default``: the one place they are looked up."""
    found = getattr(gen, name, None)
    return found if callable(found) else default


def accounting_sum(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' accountings added up (each rank drives its own share of the endpoints' load)."""
    parts = [p for p in parts if p]
    if not parts:
        return {}

    def add(dicts: list[dict]) -> dict:
        out: dict[str, Any] = {}
        for d in dicts:
            for k, v in d.items():
                out[k] = round(out.get(k, 0) + v, 6)
        return out

    urls = sorted({u for p in parts for u in p["endpoints"]})
    return {"endpoints": {u: add([p["endpoints"].get(u, {}) for p in parts]) for u in urls},
            "total": add([p["total"] for p in parts])}


def accounting_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after - before``, count by count, per endpoint and in total (what one stage spent)."""
    def minus(a: dict, b: dict) -> dict:
        return {k: round(v - b.get(k, 0), 6) for k, v in a.items() if v - b.get(k, 0)}

    if not after:
        return {}
    ends = {url: minus(counts, before.get("endpoints", {}).get(url, {})) for url, counts in after["endpoints"].items()}
    return {"endpoints": ends, "total": minus(after["total"], before.get("total", {}))}


class BackendSpec(BaseModel):
    """A recipe's choice of backend: ``{uses: openai, options: {...}}``.

    Validated against the backend's own ``Options`` whenever a catalogue is in the validation
    context (as it is in ``reasondistill validate`` and every run), so a typo fails before work.
    """

    model_config = ConfigDict(extra="forbid")
    uses: str = Field("transformers",
        description="the registered generation backend (`transformers`, `openai`, or a plugin's)")
    options: dict[str, Any] = Field({}, description="that backend's options, validated with its own Options")

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> BackendSpec:
        catalogue = (info.context or {}).get("catalogue") if info is not None else None
        if catalogue is not None:
            backend = catalogue.get("backend", self.uses, "uses")
            try:
                self.options = backend.options(self.options).model_dump(mode="json")
            except ValidationError as exc:  # one line: options.<field>: <reason>
                err = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in ("options", *err["loc"]))
                raise ValueError(f"{where}: {'unknown option' if err['type'] == 'extra_forbidden' else err['msg']} "
                                 f"(backend {self.uses!r})") from None
        return self


class GenerationBackend(Component):
    """A way to run the teacher. ``load`` returns a :class:`Generator`.

    ``local`` is true when the backend runs a model folder in this process (the teacher the
    recipe's own stages train); false when the model lives elsewhere (a server), in which case
    ``load`` gets ``model=None`` and the backend's options name the model.
    """

    kind = "backend"
    local: ClassVar[bool] = True

    @abstractmethod
    def load(self, model: str | None, domain: Domain, options: Any, *, batch_size: int, max_new_tokens: int,
             trust_remote_code: bool = False) -> Generator:
        """Return a ready generator.

        :param model: the local teacher folder (or hub id) for local backends; ``None`` otherwise.
        :param domain: the run's domain (its label names and stop strings).
        :param options: this backend's validated ``Options``.
        :param batch_size: the calling stage's batch size (a hint; a server backend has its own
            concurrency).
        :param max_new_tokens: the default token budget of one completion.
        """


def effective_spec(recipe: Any, spec: BackendSpec | dict | None) -> BackendSpec:
    """A stage's own backend, else the recipe's ``backends.teacher``, else ``transformers``."""
    if spec is None:
        spec = recipe.backends.get("teacher")
    if spec is None:
        return BackendSpec()
    return spec if isinstance(spec, BackendSpec) else BackendSpec.model_validate(spec)


def teacher_roles(recipe: Any, spec: BackendSpec | dict | None, catalogue: Any) -> tuple[str, ...]:
    """``("teacher",)`` where the effective backend runs the teacher here (it needs ``models.teacher``),
    ``()`` for a served one: what :meth:`reasondistill.Stage.model_roles` returns for a stage that generates."""
    return ("teacher",) if catalogue.get("backend", effective_spec(recipe, spec).uses, "backend").local else ()


def load_generator(ctx: StageContext, spec: BackendSpec | dict | None = None, *, model: str | None = None,
                   trained: bool = False, batch_size: int = 16, max_new_tokens: int = 96) -> Generator:
    """The generator a stage uses.

    :param spec: the stage's own backend choice (``None``: the recipe's teacher backend).
    :param model: the local teacher folder for a local backend (default: the latest earlier
        ``teacher`` output, else ``models.teacher``); a served backend ignores it.
    :param trained: ``model`` is a folder this stage has just trained, which a server cannot be
        running: a backend that is not local gives way to ``transformers`` for it.
    """
    chosen = effective_spec(ctx.recipe, spec)
    backend = ctx.hooks.catalogue.get("backend", chosen.uses, "backend")
    if trained and not backend.local:
        chosen = BackendSpec()
        backend = ctx.hooks.catalogue.get("backend", chosen.uses, "backend")
    if backend.local and model is None:
        model = current_teacher(ctx)
        if model is None:
            ctx.model("teacher")  # raises the one-line error naming models.teacher
    return backend.load(model if backend.local else None, ctx.domain, backend.options(chosen.options),
                        batch_size=batch_size, max_new_tokens=max_new_tokens,
                        trust_remote_code=ctx.recipe.trust_remote_code)


def current_teacher(ctx: StageContext) -> str | None:
    """The local teacher: the latest earlier ``teacher`` output, else ``models.teacher``, else None."""
    if ctx.has_input("teacher"):
        return str(ctx.input("teacher"))
    return ctx.model("teacher") if "teacher" in ctx.recipe.models else None


def label_mass(top: dict[str, float], labels: Sequence[str]) -> list[float] | None:
    """Label probabilities from the log-probabilities of the candidate tokens at the label position.

    A token counts for a label when its text (trimmed, any case) starts exactly one label name; a
    token that starts two labels tells them apart from nothing and is dropped (the same rule as the
    local engine's first-token sets). ``None`` when no candidate starts a label.
    """
    names = [name.lower() for name in labels]
    mass = [0.0] * len(labels)
    for token, logprob in top.items():
        piece = token.strip().lower()
        hits = [i for i, name in enumerate(names) if piece and name.startswith(piece)]
        if len(hits) == 1:
            mass[hits[0]] += math.exp(logprob)
    total = sum(mass)
    return [m / total for m in mass] if total > 0 else None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to and including the earliest stop string (a server may write past it)."""
    ends = [text.find(s) + len(s) for s in stop if s and s in text]
    return text[:min(ends)] if ends else text
