"""The ``openai`` generation backend: any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp,
``transformers serve``) as the teacher.

One HTTP request per completion (``n`` samples are ``n`` requests with seeds ``seed + j``: not every
server honours ``n``, and servers with prefix caching, as vLLM and SGLang, pay little for it),
sent from a bounded thread pool over one pooled ``httpx`` client per server. With several
``endpoints`` each request goes to the least loaded healthy one, and a failing one is taken out and
probed back in (:mod:`.openai_endpoints`). Every request has a whole-response deadline and a size
bound (a server that trickles bytes forever is cut off), and is retried on 408, 429 (honouring
``Retry-After``), 5xx, connection errors, timeouts and malformed replies: at once on another
endpoint when there is one, else after an exponential backoff with jitter, capped at
``max_backoff``. A request that still fails becomes a :class:`Generation` with ``error`` set; 401,
403 and 404 stop the stage at once (a wrong key or address would fail every request). API keys are
read from the environment variables the recipe names and never written anywhere.

Label probabilities come from ``top_logprobs`` at the label token when the server returns them
(vLLM, SGLang, TGI, llama.cpp); otherwise none are given (``transformers serve``), and the annotator
records them as unavailable, or votes over ``n`` samples when asked to.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

from reasondistill import Generation, GenerationBackend, hookimpl
from reasondistill.errors import BackendError
from reasondistill.fingerprint import portable_ref
from reasondistill.generators import cut_at_stop, label_mass
from reasondistill.plugins.backends.openai_endpoints import Endpoint, EndpointPool, error_kind
from reasondistill.plugins.backends.openai_options import EndpointOptions, OpenAIBackendOptions
from reasondistill.plugins.backends.openai_wire import (
    chat_logprobs,
    completion_logprobs,
    httpx_module,
    request_id,
    retry_after,
)

log = logging.getLogger("reasondistill")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
FATAL_STATUS = {401, 403, 404}


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


class _Down(Exception):
    """An endpoint that does not answer while the generator starts."""


class OpenAIGenerator:
    """The :class:`~reasondistill.generators.Generator` of the ``openai`` backend."""

    def __init__(self, domain: Any, options: OpenAIBackendOptions, max_new_tokens: int = 96):
        from reasondistill.local_decoding import label_key_pattern, label_stop_strings

        self.httpx = httpx_module()
        self.domain, self.options, self.max_new_tokens = domain, options, max_new_tokens
        self.stop_strings = label_stop_strings(domain)
        self.label_key_re = label_key_pattern(domain)
        servers = options.servers()
        self.url = servers[0].base_url.rstrip("/")  # named in errors before any endpoint is chosen
        endpoints = [self._endpoint(spec) for spec in servers]
        # one endpoint: no breaker (taking the only server out gains nothing over its retries)
        self.pool = EndpointPool(endpoints, options.breaker_failures if len(endpoints) > 1 else 10**9,
                                 options.probe_interval)
        self._jitter = random.Random()
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # endpoints that answered as another model (warned once each)
        self._template = self._chat_template() if options.endpoint == "completions" else None
        self._counter = self._load_tokenizer(options.tokenizer) if options.tokenizer else None
        self.identity = self._identify()

    # --- set-up -------------------------------------------------------------------------------
    def _endpoint(self, spec: EndpointOptions) -> Endpoint:
        httpx, o = self.httpx, self.options
        url = spec.base_url.rstrip("/")
        key = self._api_key(spec.api_key_env, url)
        capacity = spec.max_concurrency or o.concurrency
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"} if key else {},
                              timeout=httpx.Timeout(o.timeout, connect=min(o.timeout, 10.0)),
                              limits=httpx.Limits(max_connections=capacity, max_keepalive_connections=capacity))
        return Endpoint(url=url, model=spec.model or o.model, capacity=capacity, weight=spec.weight, client=client,
                        key=key)

    def _fail(self, message: str, url: str | None = None) -> BackendError:
        return BackendError("openai", url or self.url, self._scrub(message))

    def _scrub(self, text: str) -> str:
        for ep in getattr(getattr(self, "pool", None), "endpoints", ()):
            if ep.key:
                text = text.replace(ep.key, "***")
        return text

    def _api_key(self, name: str | None, url: str) -> str | None:
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise BackendError("openai", url, f"api_key_env names {name!r}, which is not set in the environment")
        return key

    def _chat_template(self):
        return self._load_tokenizer(self.options.chat_template) if self.options.chat_template else None

    @staticmethod
    def _load_tokenizer(folder: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)

    def _identify(self) -> str:
        """``served:<id>[@<root>]`` from each server's model list; an unknown name, or endpoints that
        serve different models, fail here, before any work."""
        found, down = {}, {}
        for ep in self.pool.endpoints:
            try:
                found[ep.url] = self._identify_one(ep)
            except _Down as exc:
                if len(self.pool.endpoints) == 1:
                    raise self._fail(str(exc), ep.url) from None
                down[ep.url] = str(exc)
        if not found:
            raise self._fail("no endpoint answers: " + "; ".join(f"{u}: {e}" for u, e in down.items()))
        for ep in self.pool.endpoints:
            if ep.url in down:  # taken out from the start; probed like any failed endpoint
                ep.served = ep.model
                self.pool.take_out(ep)
                log.warning("openai endpoint %s does not answer (%s): taken out, probed again every %g s; the model "
                            "it serves is not checked", ep.url, down[ep.url], self.options.probe_interval)
        if len(set(found.values())) > 1:
            raise self._fail("the endpoints serve different models: " + "; ".join(f"{u} {i}" for u, i in found.items()))
        return next(iter(found.values()))

    def _identify_one(self, ep: Endpoint) -> str:
        payload = self._with_retries(lambda e: self._request(e, "GET", "/models"), fixed=ep)
        if isinstance(payload, Exception):
            raise _Down(f"cannot list models: {payload}")
        try:
            entries = {m["id"]: m for m in payload["data"]}
        except (KeyError, TypeError) as exc:
            raise self._fail(f"GET /models returned no model list ({type(exc).__name__}: {exc})", ep.url) from None
        name = ep.model
        if name == "auto" and len(entries) == 1:
            name = next(iter(entries))
        if not entries and name != "auto":
            # some servers list nothing they were not downloaded for (transformers serve 5.17 lists
            # only hub-cache models, not the local folder it serves): trust the recipe's name
            log.warning("backend 'openai' at %s lists no models; using %r as configured", ep.url, name)
            ep.served = name
            return f"served:{name}"
        entry = entries.get(name)
        if entry is None:
            raise self._fail(f"model {name!r} is not served{' (auto needs exactly one)' if name == 'auto' else ''}; "
                             f"the server lists: {', '.join(sorted(entries)) or 'nothing'}", ep.url)
        ep.served = entry["id"]  # requests name the model as the server does; the record names it portably
        root = entry.get("root")
        served, origin = portable_ref(entry["id"]), portable_ref(root)
        return f"served:{served}" + (f"@{origin}" if origin and origin not in (entry["id"], served) else "")

    @property
    def model(self) -> str:
        return self.pool.endpoints[0].served

    def accounting(self) -> dict[str, Any]:
        """Requests, failed attempts by kind, tokens and (with ``cost_per_1m_tokens``) the estimated
        cost, per endpoint and in total."""
        out = self.pool.accounting()
        price = self.options.cost_per_1m_tokens
        if price:
            for counts in [*out["endpoints"].values(), out["total"]]:
                counts["cost"] = round((counts.get("prompt_tokens", 0) * price.get("input", 0.0)
                                        + counts.get("completion_tokens", 0) * price.get("output", 0.0)) / 1e6, 6)
        return out

    def close(self) -> None:
        """Close the pooled connections (also done when the generator is collected)."""
        for ep in getattr(getattr(self, "pool", None), "endpoints", ()):
            ep.client.close()

    def __del__(self) -> None:
        self.close()

    # --- one request --------------------------------------------------------------------------
    def _request(self, ep: Endpoint, method: str, path: str, body: dict | None = None) -> Any:
        """One attempt on ``ep``: the parsed JSON, or ``_Retry``; a whole-response deadline and a size bound.
        The ``X-Request-Id`` is the body's hash, the same on every retry of the same request."""
        httpx, o = self.httpx, self.options
        deadline = time.monotonic() + o.timeout
        headers = {"X-Request-Id": request_id(body)} if body is not None else None
        try:
            with ep.client.stream(method, path, json=body, headers=headers) as resp:
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
            hint = " (the base URL usually ends in /v1)" if status == 404 and not ep.url.endswith("/v1") else ""
            raise self._fail(f"HTTP {status} on {method} {path}{hint}: {snippet}", ep.url)
        if status in RETRY_STATUS:
            raise _Retry(f"HTTP {status}: {snippet}", retry_after(headers.get("retry-after")))
        if status >= 400:
            raise ValueError(f"{ep.url}: HTTP {status}: {snippet}")  # this request is refused; retrying will not help
        try:
            return json.loads(bytes(data))
        except ValueError:
            raise _Retry(f"malformed JSON: {snippet!r}") from None

    def _with_retries(self, attempt, fixed: Endpoint | None = None) -> Any:
        """``attempt(endpoint)`` until it succeeds or ``retries`` are spent; the last error is
        returned. A failed attempt goes at once to another usable endpoint, and waits its backoff
        (capped at ``max_backoff``, or what ``Retry-After`` asks) only when there is none."""
        o = self.options
        error: Exception | None = None
        last: Endpoint | None = None
        for k in range(o.retries + 1):
            delay = self.backoff(k, getattr(error, "wait", 0.0)) if k else o.backoff
            if fixed is not None:
                time.sleep(delay if k else 0.0)
            elif k and last is not None and not self.pool.others_usable(last) and not self.pool.all_out():
                time.sleep(delay)  # the endpoint that failed is the only one in service: back off first
            # every endpoint taken out: wait up to the backoff for a probe instead of sleeping blind
            ep = fixed or self.pool.acquire(avoid=last, wait=delay)
            if ep is None:
                error = _Retry("every endpoint is taken out after repeated failures (probed again every "
                               f"{o.probe_interval:g} s)")
                continue
            try:
                result = attempt(ep)
            except _Retry as exc:
                error, last = exc, ep
                if fixed is None:
                    self.pool.release(ep, error_kind(str(exc)))
                continue
            except BaseException as exc:
                if fixed is None:
                    self.pool.release(ep, None if isinstance(exc, ValueError) else "fatal")
                if isinstance(exc, ValueError):
                    return exc
                raise
            if fixed is None:
                self.pool.release(ep, None)
            return result
        where = f" (last on {last.url})" if last is not None else ""
        return RuntimeError(f"gave up after {o.retries + 1} attempts{where}: {error}")

    def backoff(self, k: int, asked: float = 0.0) -> float:
        """Seconds before retry ``k`` (1-based): ``backoff * 2**(k-1)`` with +-50% jitter, at most
        ``max_backoff`` (jitter included); a server's ``Retry-After`` may ask more (at most 10 min)."""
        o = self.options
        with self._lock:
            jitter = self._jitter.uniform(0.5, 1.5)
        return max(min(o.max_backoff, o.backoff * 2 ** (k - 1) * jitter), asked)

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
        slots = sum(ep.capacity for ep in self.pool.endpoints)
        pool = ThreadPoolExecutor(max_workers=min(slots, len(jobs)), thread_name_prefix="reasondistill-openai")
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
        payload = self._with_retries(lambda ep: self._checked(ep, self._request(ep, "POST", path, body), stops,
                                                              messages))
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

    def _checked(self, ep: Endpoint, payload: Any, stops: Sequence[str], messages: Any = None) -> Generation:
        """The completion of a response, or ``_Retry`` saying what is missing (malformed)."""
        if not isinstance(payload, dict) or not payload.get("choices"):
            raise _Retry(f"malformed reply from {ep.url}: no choices")
        choice = payload["choices"][0]
        try:
            if self.options.endpoint == "chat":
                if not isinstance(choice.get("message"), dict):
                    raise _Retry(f"malformed reply from {ep.url}: the choice has no message")
                text = choice["message"].get("content") or ""
                tokens, tops = chat_logprobs(choice.get("logprobs"))
            else:
                text = choice["text"] or ""
                tokens, tops = completion_logprobs(choice.get("logprobs"))
            usage = payload.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _Retry(f"malformed reply from {ep.url} ({type(exc).__name__}: {exc})") from None
        answered_by = payload.get("model")
        if answered_by and answered_by not in (ep.served, ep.model) and ep.url not in self._warned:
            # many servers echo another name (an alias, a path, a fixed string), so a warning, once
            self._warned.add(ep.url)
            log.warning("openai endpoint %s answered as model %r, not %r as asked: check that it serves the teacher "
                        "you mean", ep.url, answered_by, ep.served or ep.model)
        used = usage.get("completion_tokens")
        cut = cut_at_stop(text, stops)
        n_tokens = int(used) if isinstance(used, int) else len(tokens) or len(cut.split())
        counts = {"ok": 1, **{k: int(usage[k]) for k in ("prompt_tokens", "completion_tokens")
                              if isinstance(usage.get(k), int)}}
        if "completion_tokens" not in counts and self._counter is not None:  # counted as the model does
            counts["completion_tokens"] = n_tokens = len(self._counter(cut, add_special_tokens=False)["input_ids"])
            prompt = self._counter.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            counts["prompt_tokens"] = len(self._counter(prompt, add_special_tokens=False)["input_ids"])
        elif "completion_tokens" not in counts:  # a server without usage: the logprob tokens, else words
            counts["completion_tokens_estimated"] = n_tokens
        self.pool.count(ep, counts)
        return Generation(cut, n_tokens, self._label_probs(tokens, tops))

    def _label_probs(self, tokens: list[str], tops: list[dict[str, float]]) -> list[float] | None:
        """At the first token with text after ``Label:``, the label mass among its top tokens."""
        text = ""
        for token, top in zip(tokens, tops):
            if token.strip() and self.label_key_re.search(text):
                return label_mass(top, self.domain.labels)
            text += token
        return None


@hookimpl
def register_generation_backends(register):
    register(OpenAIBackend())
