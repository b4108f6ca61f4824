"""The ``transformers`` generation backend: the teacher's folder loaded in this process.

Behind it are the local engines of :mod:`reasondistill.local_decoding` (continuous slot batching with a
shared-prefix cache, or ``generate`` on length buckets), unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from reasondistill import GenerationBackend, Options, hookimpl


class TransformersBackendOptions(Options):
    engine: Literal["auto", "slots", "generate"] = Field(
        "auto", description="'slots': continuous batching (refill finished rows); 'generate': transformers "
                            "generate on length buckets; 'auto': slots where the model supports them")
    batch_size: int | None = Field(None, ge=1, description="rows decoded together (default: the stage's batch size)")
    int8: bool = Field(False, description="torch dynamic int8 quantization of the teacher's linear layers")
    prefix_cache: bool = Field(True, description="encode the prompt prefix every row shares once")


class TransformersBackend(GenerationBackend):
    name = "transformers"
    description = "A local model folder in this process: slot batching or generate, stop at the label, label probs."
    Options = TransformersBackendOptions
    local = True

    def load(self, model, domain, options: TransformersBackendOptions, *, batch_size, max_new_tokens,
             trust_remote_code=False):
        from reasondistill.local_decoding import TeacherGenerator

        return TeacherGenerator(model, domain, options.batch_size or batch_size, max_new_tokens,
                                trust_remote_code=trust_remote_code, int8=options.int8,
                                prefix_cache=options.prefix_cache, engine=options.engine)


@hookimpl
def register_generation_backends(register):
    register(TransformersBackend())
