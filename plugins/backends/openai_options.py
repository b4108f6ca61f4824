"""The options of the ``openai`` backend: one server (``base_url``) or several (``endpoints``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from reasondistill import Options

TRANSPORT = {"hash": False}  # how requests travel, not what they compute: not part of a stage's hash


class EndpointOptions(Options):
    """One server of the ``openai`` backend's ``endpoints``."""

    base_url: str = Field(description="the server's OpenAI API root (ends in /v1)")
    model: str | None = Field(None, description="the model's name on this server (default: the backend's model); "
                                                "every endpoint must serve the same model")
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding this server's key")
    max_concurrency: int | None = Field(None, ge=1, le=1024, description="requests in flight on this server "
                                                                        "(default: the backend's concurrency)")
    weight: float = Field(1.0, gt=0, description="its share of the load against the others (a faster server: more)")


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
    max_response_bytes: int = Field(8_000_000, ge=1024, json_schema_extra=TRANSPORT,
        description="a larger response body is refused (a misbehaving server cannot grow memory)")
    logprobs: bool = Field(True, description="ask for top_logprobs to read label probabilities")
    top_logprobs: int = Field(5, ge=1, le=20,
        description="alternatives per token asked for, to read each label's probability")
    send_stop: bool = Field(False, description="send the stop strings to the server; off by default because many "
                                               "servers drop the stop string (the label) from the text, so the "
                                               "client cuts the text instead")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="server-specific request fields, e.g. "
                                                                         "vLLM's {top_k: 20}")
    endpoints: list[EndpointOptions] = Field(
        default_factory=list, json_schema_extra=TRANSPORT,
        description="several servers of the same model, each request to the least loaded healthy one (replaces "
                    "base_url and api_key_env; adding or removing one never reruns a stage)")
    tokenizer: str | None = Field(None, json_schema_extra=TRANSPORT,
                                  description="a local tokenizer folder of the served model: where a server reports no "
                                              "token usage, prompts and completions are counted with it (else the "
                                              "completion is estimated and named so)")
    cost_per_1m_tokens: dict[Literal["input", "output"], float] = Field(
        default_factory=dict, json_schema_extra=TRANSPORT,
        description="price per million prompt (input) and completion (output) tokens, e.g. {input: 0.15, output: "
                    "0.6}: the run record then estimates the cost from the servers' token counts")
    breaker_failures: int = Field(3, ge=1, le=100, json_schema_extra=TRANSPORT,
                                  description="with several endpoints: consecutive failures that take one out")
    probe_interval: float = Field(5.0, gt=0, json_schema_extra=TRANSPORT,
                                  description="seconds before an endpoint taken out is tried again with one request")

    @model_validator(mode="after")
    def _one_way_to_name_servers(self) -> "OpenAIBackendOptions":
        both = [f for f in ("base_url", "api_key_env") if f in self.model_fields_set]
        if self.endpoints and both:
            raise ValueError(f"give {' and '.join(both)} or endpoints, not both (each endpoint has its own)")
        return self

    def servers(self) -> list[EndpointOptions]:
        """The endpoints, or the one ``base_url`` as an endpoint."""
        return self.endpoints or [EndpointOptions(base_url=self.base_url, api_key_env=self.api_key_env)]
