"""One home for device, precision, attention kernel and threads.

A recipe's ``runtime`` section (:class:`RuntimeSpec`) says what the user asks for; :func:`resolve_runtime`
turns it into a :class:`Runtime` for this machine, once per run, and every model load, training
config and tensor factory takes its device and dtype from there. The rule for ``auto``:

- device: ``cuda:0`` when torch sees a GPU, else ``cpu``.
- dtype: on a GPU, ``bfloat16`` where the GPU supports it, else ``float32``. On a CPU, ``float32``.
  A matmul probe (one 384 x 384 matmul, the best of 5 timings) measures bf16 against fp32 on this
  CPU (AVX-512 bf16 / AMX ran bf16 3x faster on one CPU seen here; another ran it 200x slower) and
  the manifest records it; ``dtype: bfloat16`` opts in. Choosing bf16 on a CPU automatically needs
  a label-agreement check in the stage that switches, which is not built yet
  (``benchmarks/precision.py`` measures speed and agreement).
- ``dtype: fastest`` chooses by measurement instead: bf16 on a GPU that supports it, and on a CPU
  whose bf16 matmul probe beats fp32 by :data:`CPU_BF16_MIN_SPEEDUP` (training under bf16 autocast
  with fp32 master weights, inference in bf16), else fp32. On the 2-core EPYC here the probe read
  2.0x and a Home Depot SFT step ran 1.4x faster; on a CPU without bf16 kernels it stays fp32.
- attn_implementation: ``sdpa`` (transformers' default), or what the recipe names.
- threads: torch's default for one process; with N processes on one machine, cores / N each
  (two 2-thread jobs on 2 cores made one sft step 1.6-1.9 s instead of 0.19 s).

What changes a stage's hash: the *requested* ``dtype`` (a bf16 run computes other numbers than an
fp32 one); not ``device``, ``threads`` or ``attn_implementation`` (the same computation, placed
elsewhere), and not what ``auto`` resolved to, so a run moved between machines resumes instead of
recomputing. The resolved runtime is written into every stage's manifest.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import RecipeError

CPU_BF16_MIN_SPEEDUP = 1.5
DTYPES = ("float32", "bfloat16", "float16")


class RuntimeSpec(BaseModel):
    """The recipe's ``runtime`` section (YAML or Python): what the run may use."""

    model_config = ConfigDict(extra="forbid")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "fastest", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and compute; auto = bf16 on GPUs that have it, fp32 on CPU; fastest = "
                            "bf16 also on a CPU where a matmul probe measures it 1.5x faster than fp32 (see docs)")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field("auto",
        description="attention kernel of model loads: auto (transformers' default, sdpa), or one named")
    threads: int | Literal["auto"] = Field("auto", description="torch threads per process; auto = cores / processes")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1")
        return value


@dataclass(frozen=True)
class Runtime:
    """A resolved runtime: what every model load and tensor in this process uses."""

    device: str = "cpu"
    dtype: str = "float32"
    #: dtype of models that only run inference (generation, scoring); may be bf16 on a CPU where
    #: that is faster, while training stays fp32
    inference_dtype: str = "float32"
    attn_implementation: str | None = None
    threads: int | None = None
    reason: str = ""

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def torch_dtype(self, inference: bool = False) -> Any:
        """The weights' dtype: ``inference_dtype`` for models that only run; fp32 master weights for
        models that train (the trainer's ``bf16``/``fp16`` autocast gives the compute precision)."""
        import torch

        return getattr(torch, self.inference_dtype) if inference else torch.float32

    def model_kwargs(self, inference: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained``: dtype and attention kernel."""
        out: dict[str, Any] = {"dtype": self.torch_dtype(inference)}
        if self.attn_implementation:
            out["attn_implementation"] = self.attn_implementation
        return out

    def place(self, model: Any, inference: bool = False) -> Any:
        """``model`` on this runtime's device (and dtype), in place; returns it."""
        return model.to(device=self.device, dtype=self.torch_dtype(inference))

    def training_args(self) -> dict[str, Any]:
        """Precision and device fields of ``TrainingArguments`` / trl configs (one place for all trainers)."""
        return {"bf16": self.dtype == "bfloat16", "fp16": self.dtype == "float16", "use_cpu": not self.is_cuda,
                "dataloader_pin_memory": self.is_cuda}

    @contextmanager
    def threads_applied(self):
        """torch's thread count set to :attr:`threads` inside the block (when set), restored after."""
        import torch

        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            if self.threads:
                torch.set_num_threads(before)

    def manifest(self) -> dict[str, Any]:
        return asdict(self)


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


PROBE_SIZE, PROBE_REPEATS = 384, 5  # one square matmul, the best of 5: ~50 ms in all


def matmul_seconds(dtype: Any, size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> float:
    """The best of ``repeats`` timings of one ``size`` x ``size`` matmul in ``dtype`` on the CPU."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return min(times)


@cache
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of one square matmul on this CPU (:func:`matmul_seconds`), measured once
    a process. 0.0 where torch has no bf16 kernels."""
    import torch

    try:
        return matmul_seconds(torch.float32) / max(matmul_seconds(torch.bfloat16), 1e-9)
    except RuntimeError:  # no bf16 kernels at all
        return 0.0


def resolve_runtime(spec: RuntimeSpec | None = None, processes: int = 1, local_rank: int = 0) -> Runtime:
    """The runtime for this process; a device that is not there is a one-line ``RecipeError``."""
    spec = spec or RuntimeSpec()
    reasons: list[str] = []
    device = _device(spec.device, local_rank, reasons)
    cuda = device.startswith("cuda")
    dtype = _dtype(spec.dtype, cuda, reasons)
    attn = None if spec.attn_implementation == "auto" else spec.attn_implementation
    return Runtime(device=device, dtype=dtype, inference_dtype=dtype, attn_implementation=attn,
                   threads=_threads(spec.threads, processes, cuda), reason="; ".join(reasons))


def _device(asked: str, local_rank: int, reasons: list[str]) -> str:
    """``auto``: this process's GPU by local rank, else the CPU; ``cuda[:N]`` must be there."""
    count = cuda_count()
    match asked:
        case "auto":
            device = f"cuda:{local_rank % count}" if count else "cpu"
            reasons.append(f"device auto -> {device} ({count} GPU{'s' if count != 1 else ''} visible)")
            return device
        case "cpu":
            return "cpu"
    index = int(asked.split(":")[1]) if ":" in asked else local_rank
    if not count:
        import torch

        raise RecipeError("runtime.device", f"{asked!r} asked for, but torch sees no GPU "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    if index >= count:
        raise RecipeError("runtime.device", f"{asked!r} asked for, but only {count} GPU(s) are visible")
    return f"cuda:{index}"


def _dtype(asked: str, cuda: bool, reasons: list[str]) -> str:
    """A named dtype as asked; ``auto`` and ``fastest`` by the rule in the module docstring."""
    if asked not in ("auto", "fastest"):
        return asked
    if cuda:
        import torch

        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        reasons.append(f"dtype {asked} -> {dtype} on the GPU")
        return dtype
    speedup = cpu_bf16_speedup()
    faster = speedup >= CPU_BF16_MIN_SPEEDUP
    if asked == "fastest":
        dtype, hint = ("bfloat16" if faster else "float32"), ""
    else:
        dtype, hint = "float32", "; runtime.dtype: fastest would use it" if faster else ""
    reasons.append(f"dtype {asked} -> {dtype} on the CPU (bf16 matmul {speedup:.1f}x fp32 here, "
                   f"{CPU_BF16_MIN_SPEEDUP}x needed{hint})")
    return dtype


def _threads(asked: int | str, processes: int, cuda: bool) -> int | None:
    """``auto``: torch's own default for one process or on a GPU; with N CPU processes, cores / N
    each (at least 1; an unknown core count gives 1)."""
    if asked != "auto":
        return int(asked)
    if processes > 1 and not cuda:
        return max(1, (os.cpu_count() or processes) // processes)
    return None


_CURRENT: Runtime | None = None


@contextmanager
def using(runtime: Runtime):
    """``runtime`` is :func:`current` inside the block (a run), the previous one after it."""
    global _CURRENT
    previous, _CURRENT = _CURRENT, runtime
    try:
        yield runtime
    finally:
        _CURRENT = previous


def current() -> Runtime:
    """The run's runtime, or this machine's default outside a run (scoring, export, tests)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = resolve_runtime()
    return _CURRENT
