"""The ``openai`` generation backend: any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp,
``transformers serve``) as the teacher.

One HTTP request per completion (``n`` samples are ``n`` requests with seeds ``seed + j``: not every
server honours ``n``, and servers with prefix caching, as vLLM and SGLang, pay little for it),
sent from a bounded thread pool over one pooled ``httpx`` client. Every request has a whole-response
deadline and a size bound (a server that trickles bytes forever is cut off), and is retried with
exponential backoff and jitter on 408, 429 (honouring ``Retry-After``), 5xx, connection errors,
timeouts and malformed JSON. A request that still fails becomes a :class:`Generation` with ``error``
set; 401, 403 and 404 stop the stage at once (a wrong key or address would fail every request).
The API key is read from the environment variable the recipe names and never written anywhere.

Label probabilities come from ``top_logprobs`` at the label token when the server returns them
(vLLM, SGLang, TGI, llama.cpp); otherwise the annotator votes over ``n`` samples.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Literal, Sequence

from pydantic import Field

from reasondistill.fingerprint import portable_ref
from reasondistill import Generation, GenerationBackend, Options, hookimpl
from reasondistill.errors import BackendError
from reasondistill.generators import cut_at_stop, label_mass

log = logging.getLogger("reasondistill")
TRANSPORT = {"hash": False}  # how requests travel, not what they compute: not part of a stage's hash
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
FATAL_STATUS = {401, 403, 404}


def httpx_module():
    """The HTTP client library: ``httpx2`` (what huggingface_hub 2 installs) or ``httpx``."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older stacks ship httpx
        import httpx
    return httpx


class OpenAIBackendOptions(Options):
    model: str = Field(description="the model's name as the server lists it under GET /v1/models; 'auto': the "
                                   "server's only model")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="the server's OpenAI API root (ends in /v1)",
                          json_schema_extra=TRANSPORT)
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding the API key "
                                                      "(the key itself never goes into a recipe)",
                                    json_schema_extra=TRANSPORT)
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="'chat': /chat/completions (the server applies its chat template); 'completions': "
                            "/completions with the prompt rendered here (see chat_template)")
    chat_template: str | None = Field(None, description="completions endpoint: a local tokenizer folder whose chat "
                                                        "template renders the prompt (default: plain text)")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once", json_schema_extra=TRANSPORT)
    timeout: float = Field(120.0, gt=0, description="seconds for one whole response", json_schema_extra=TRANSPORT)
    retries: int = Field(4, ge=0, le=100, description="retries of a failed request", json_schema_extra=TRANSPORT)
    backoff: float = Field(0.5, gt=0, description="first wait in seconds, doubled per retry, with +-50% jitter",
                           json_schema_extra=TRANSPORT)
    max_backoff: float = Field(30.0, gt=0, description="longest wait between retries (Retry-After may ask more)",
                               json_schema_extra=TRANSPORT)
    max_response_bytes: int = Field(8_000_000, ge=1024, json_schema_extra=TRANSPORT)
    logprobs: bool = Field(True, description="ask for top_logprobs to read label probabilities")
    top_logprobs: int = Field(5, ge=1, le=20)
    send_stop: bool = Field(False, description="send the stop strings to the server; off by default because many "
                                               "servers drop the stop string (the label) from the text, so the "
                                               "client cuts the text instead")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="server-specific request fields, e.g. "
                                                                         "vLLM's {top_k: 20}")


class OpenAIBackend(GenerationBackend):
    name = "openai"
    description = "An OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, transformers serve) as the teacher."
    Options = OpenAIBackendOptions
    local = False

    def load(self, model, domain, options: OpenAIBackendOptions, *, batch_size, max_new_tokens,
             trust_remote_code=False):
        return OpenAIGenerator(domain, options, max_new_tokens)


class _Retry(Exception):
    """A failed attempt worth another try; ``wait`` is a server-requested delay in seconds."""

    def __init__(self, message: str, wait: float = 0.0):
        super().__init__(message)
        self.wait = wait


class OpenAIGenerator:
    """The :class:`~reasondistill.generators.Generator` of the ``openai`` backend."""

    def __init__(self, domain: Any, options: OpenAIBackendOptions, max_new_tokens: int = 96):
        from reasondistill.generation import label_key_pattern, label_stop_strings

        httpx = self.httpx = httpx_module()
        self.domain, self.options, self.max_new_tokens = domain, options, max_new_tokens
        self.url = options.base_url.rstrip("/")
        self.stop_strings = label_stop_strings(domain)
        self.label_key_re = label_key_pattern(domain)
        self._key = self._api_key()
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers,
                                   timeout=httpx.Timeout(options.timeout, connect=min(options.timeout, 10.0)),
                                   limits=httpx.Limits(max_connections=options.concurrency,
                                                       max_keepalive_connections=options.concurrency))
        self._jitter = random.Random()
        self._lock = threading.Lock()
        self._template = self._chat_template() if options.endpoint == "completions" else None
        self.identity = self._identify()

    # --- set-up -------------------------------------------------------------------------------
    def _fail(self, message: str) -> BackendError:
        return BackendError("openai", self.url, self._scrub(message))

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if getattr(self, "_key", None) else text

    def _api_key(self) -> str | None:
        name = self.options.api_key_env
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise BackendError("openai", self.url, f"api_key_env names {name!r}, which is not set in the environment")
        return key

    def _chat_template(self):
        if not self.options.chat_template:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.options.chat_template)

    def _identify(self) -> str:
        """``served:<id>[@<root>]`` from the server's model list; an unknown name fails here, before work."""
        payload = self._with_retries(lambda: self._request("GET", "/models"))
        if isinstance(payload, Exception):
            raise self._fail(f"cannot list models: {payload}")
        try:
            entries = {m["id"]: m for m in payload["data"]}
        except (KeyError, TypeError) as exc:
            raise self._fail(f"GET /models returned no model list ({type(exc).__name__}: {exc})") from None
        name = self.options.model
        if name == "auto" and len(entries) == 1:
            name = next(iter(entries))
        if not entries and name != "auto":
            # some servers list nothing they were not downloaded for (transformers serve 5.17 lists
            # only hub-cache models, not the local folder it serves): trust the recipe's name
            log.warning("backend 'openai' at %s lists no models; using %r as configured", self.options.base_url, name)
            self.model = name
            return f"served:{name}"
        entry = entries.get(name)
        if entry is None:
            raise self._fail(f"model {name!r} is not served{' (auto needs exactly one)' if name == 'auto' else ''}; "
                             f"the server lists: {', '.join(sorted(entries)) or 'nothing'}")
        self.model = entry["id"]  # requests name the model as the server does; the record names it portably
        root = entry.get("root")
        served, origin = portable_ref(entry["id"]), portable_ref(root)
        return f"served:{served}" + (f"@{origin}" if origin and origin not in (entry["id"], served) else "")

    def close(self) -> None:
        """Close the pooled connections (also done when the generator is collected)."""
        self.client.close()

    def __del__(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    # --- one request --------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        """One attempt: the parsed JSON, or ``_Retry``; a whole-response deadline and a size bound."""
        httpx, o = self.httpx, self.options
        deadline = time.monotonic() + o.timeout
        try:
            with self.client.stream(method, path, json=body) as resp:
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > o.max_response_bytes:
                        raise _Retry(f"response larger than {o.max_response_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _Retry(f"no complete response within {o.timeout:g} s")
                status, headers = resp.status_code, resp.headers
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        snippet = bytes(data[:200]).decode("utf-8", "replace").replace("\n", " ")
        if status in FATAL_STATUS:
            raise self._fail(f"HTTP {status} on {method} {path}: {snippet}")
        if status in RETRY_STATUS:
            raise _Retry(f"HTTP {status}: {snippet}", _retry_after(headers.get("retry-after")))
        if status >= 400:
            raise ValueError(f"HTTP {status}: {snippet}")  # this request is refused; retrying will not help
        try:
            return json.loads(bytes(data))
        except ValueError:
            raise _Retry(f"malformed JSON: {snippet!r}") from None

    def _with_retries(self, attempt) -> Any:
        """``attempt()`` until it succeeds or ``retries`` are spent; the last error is returned."""
        o = self.options
        error: Exception | None = None
        for k in range(o.retries + 1):
            if k:
                wait = min(o.max_backoff, o.backoff * 2 ** (k - 1))
                with self._lock:
                    wait *= self._jitter.uniform(0.5, 1.5)
                time.sleep(max(wait, getattr(error, "wait", 0.0)))
            try:
                return attempt()
            except _Retry as exc:
                error = exc
            except ValueError as exc:
                return exc
        return RuntimeError(f"gave up after {o.retries + 1} attempts: {error}")

    # --- the Generator protocol ---------------------------------------------------------------
    def generate(self, messages: Sequence[list[dict[str, str]]], *, n: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 stop: Sequence[str] | None = None, max_new_tokens: int | None = None,
                 progress: Any = None) -> list[list[Generation]]:
        stops = list(self.stop_strings if stop is None else stop)
        budget = max_new_tokens or self.max_new_tokens
        results: list[list[Generation | None]] = [[None] * n for _ in messages]
        left = [n] * len(messages)
        jobs = [(i, j) for i in range(len(messages)) for j in range(n)]
        if not jobs:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.options.concurrency, len(jobs)),
                                  thread_name_prefix="reasondistill-openai")
        try:
            futures = {pool.submit(self._complete, messages[i], do_sample, temperature, top_p,
                                   None if seed is None else seed + j, stops, budget): (i, j) for i, j in jobs}
            for future in as_completed(futures):
                i, j = futures[future]
                results[i][j] = future.result()
                left[i] -= 1
                if progress is not None and left[i] == 0:
                    progress.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results  # type: ignore[return-value]

    def _complete(self, messages, do_sample, temperature, top_p, seed, stops, budget) -> Generation:
        body = self._body(messages, do_sample, temperature, top_p, seed, stops, budget)
        path = "/chat/completions" if self.options.endpoint == "chat" else "/completions"
        payload = self._with_retries(lambda: self._checked(self._request("POST", path, body), stops))
        if isinstance(payload, Exception):
            return Generation("", 0, None, self._scrub(str(payload)))
        return payload

    def _body(self, messages, do_sample, temperature, top_p, seed, stops, budget) -> dict[str, Any]:
        o = self.options
        body: dict[str, Any] = {"model": self.model, "max_tokens": budget,
                                "temperature": temperature if do_sample else 0.0}
        if do_sample:
            body["top_p"] = top_p
            if seed is not None:
                body["seed"] = seed
        if o.endpoint == "chat":
            body["messages"] = messages
            if o.logprobs:
                body.update(logprobs=True, top_logprobs=o.top_logprobs)
        else:
            body["prompt"] = self._render(messages)
            if o.logprobs:
                body["logprobs"] = o.top_logprobs
        if o.send_stop and stops:
            body["stop"] = stops
        return {**body, **o.extra_body}

    def _render(self, messages) -> str:
        if self._template is not None:
            return self._template.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(m["content"] + "\n\n" for m in messages)

    def _checked(self, payload: Any, stops: Sequence[str]) -> Generation:
        """The completion of a response, or ``_Retry`` when the response is not one (malformed)."""
        try:
            choice = payload["choices"][0]
            if self.options.endpoint == "chat":
                text = choice["message"].get("content") or ""
                tokens, tops = _chat_logprobs(choice.get("logprobs"))
            else:
                text = choice["text"] or ""
                tokens, tops = _completion_logprobs(choice.get("logprobs"))
            used = (payload.get("usage") or {}).get("completion_tokens")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _Retry(f"malformed response ({type(exc).__name__}: {exc})") from None
        cut = cut_at_stop(text, stops)
        return Generation(cut, int(used) if isinstance(used, int) else len(tokens) or len(cut.split()),
                          self._label_probs(tokens, tops))

    def _label_probs(self, tokens: list[str], tops: list[dict[str, float]]) -> list[float] | None:
        """At the first token with text after ``Label:``, the label mass among its top tokens."""
        text = ""
        for token, top in zip(tokens, tops):
            if token.strip() and self.label_key_re.search(text):
                return label_mass(top, self.domain.labels)
            text += token
        return None


def _chat_logprobs(logprobs: Any) -> tuple[list[str], list[dict[str, float]]]:
    content = (logprobs or {}).get("content") or []
    return ([c["token"] for c in content],
            [{t["token"]: t["logprob"] for t in (c.get("top_logprobs") or [])} or {c["token"]: c["logprob"]}
             for c in content])


def _completion_logprobs(logprobs: Any) -> tuple[list[str], list[dict[str, float]]]:
    logprobs = logprobs or {}
    tokens = logprobs.get("tokens") or []
    tops = logprobs.get("top_logprobs") or [{} for _ in tokens]
    return list(tokens), [dict(t or {}) for t in tops]


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (delta seconds; an HTTP date counts as unknown), at most 10 min."""
    try:
        return min(600.0, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0


@hookimpl
def register_generation_backends(register):
    register(OpenAIBackend())
