"""reasondistill.runtime: one place resolves device, precision, attention kernel and threads."""

import json
import os

import pytest
import yaml

from reasondistill import Recipe, load_recipe, step
from reasondistill.cli import main
from reasondistill.runtime import Runtime, RuntimeSpec, resolve_runtime

_NEEDS_GPU = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")


def CUDA(fn):
    return pytest.mark.cuda(_NEEDS_GPU(fn))
NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")


@NO_CUDA
def test_auto_on_this_cpu_is_fp32_and_says_why():
    rt = resolve_runtime()
    assert (rt.device, rt.dtype, rt.inference_dtype, rt.threads) == ("cpu", "float32", "float32", None)
    assert "device auto -> cpu" in rt.reason and "bf16 matmul" in rt.reason
    assert rt.training_args() == {"bf16": False, "fp16": False, "use_cpu": True, "dataloader_pin_memory": False}


@NO_CUDA
@pytest.mark.parametrize("speedup, dtype", [(2.0, "bfloat16"), (1.2, "float32"), (0.005, "float32"), (0.0, "float32")])
def test_fastest_takes_bf16_only_where_the_probe_measures_it_faster(monkeypatch, speedup, dtype):
    """``dtype: fastest`` on a CPU follows the matmul probe (2.0x on this EPYC; 200x slower on an
    older CPU; 0.0 where bf16 kernels are missing); ``auto`` stays fp32 whatever it reads."""
    from reasondistill import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: speedup)
    rt = resolve_runtime(RuntimeSpec(dtype="fastest"))
    assert (rt.dtype, rt.inference_dtype) == (dtype, dtype)
    assert f"dtype fastest -> {dtype} on the CPU (bf16 matmul {speedup:.1f}x fp32" in rt.reason
    assert rt.training_args()["bf16"] is (dtype == "bfloat16")
    assert resolve_runtime(RuntimeSpec(dtype="auto")).dtype == "float32"


def test_explicit_choices_are_honoured():
    rt = resolve_runtime(RuntimeSpec(device="cpu", dtype="bfloat16", attn_implementation="eager", threads=3))
    assert (rt.device, rt.dtype, rt.inference_dtype, rt.attn_implementation, rt.threads) == \
        ("cpu", "bfloat16", "bfloat16", "eager", 3)
    import torch

    assert rt.model_kwargs(inference=True) == {"dtype": torch.bfloat16, "attn_implementation": "eager"}
    assert rt.model_kwargs() == {"dtype": torch.float32, "attn_implementation": "eager"}  # fp32 master weights
    assert rt.training_args()["bf16"] is True and rt.training_args()["fp16"] is False
    assert rt.place(torch.nn.Linear(2, 2)).weight.dtype == torch.float32  # a model that trains: fp32 master weights
    assert rt.place(torch.nn.Linear(2, 2), inference=True).weight.dtype == torch.bfloat16


def test_threads_split_the_cores_between_processes():
    assert resolve_runtime(RuntimeSpec(device="cpu"), processes=2).threads == max(1, (os.cpu_count() or 1) // 2)
    assert resolve_runtime(RuntimeSpec(device="cpu"), processes=1).threads is None


@pytest.mark.parametrize("raw, message", [
    ({"device": "gpu"}, "runtime.device: Value error, must be auto, cpu, cuda or cuda:N"),
    ({"dtype": "fp8"}, "runtime.dtype: Input should be 'auto', 'fastest', 'float32', 'bfloat16' or 'float16'"),
    ({"threads": 0}, "runtime.threads"),
    ({"devcie": "cpu"}, "runtime.devcie: unknown option"),
])
def test_invalid_runtime_values_name_the_field(tmp_path, capsys, raw, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "rt", "runtime": raw, "stages": [{"uses": "pairs"}]}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_there_fails_before_anything_is_written(tmp_path, capsys, device):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "rt", "runtime": {"device": device}, "stages": [{"uses": "pairs"}]}))
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    import torch

    build = f"(torch {torch.__version__}, CUDA build: {torch.version.cuda if torch.version.cuda else 'none'})"
    assert len(err.splitlines()) == 1 and "runtime.device" in err and f"torch sees no GPU {build}" in err, err
    assert not (tmp_path / "runs").exists()


def test_manifest_records_the_runtime_and_only_dtype_changes_the_hash(rd_engine):
    def run(**runtime):
        recipe = Recipe(name="rt", runtime=runtime, stages=[step("pairs", n=20)])
        rd_engine.run(recipe)
        return json.loads((rd_engine.runs_dir / "rt" / "pairs" / "manifest.json").read_text())

    first = run()
    assert first["runtime"]["device"] in ("cpu", "cuda:0") and first["runtime"]["reason"]
    same = run(device="cpu", threads=1, attn_implementation="eager")  # placement, not computation
    assert same["hash"] == first["hash"] and same["timings"] == first["timings"], "skipped, not recomputed"
    assert run(dtype="float32")["hash"] != first["hash"]


def test_yaml_and_python_runtime_alike():
    recipe = load_recipe({"name": "y", "runtime": {"device": "cpu", "dtype": "float32"}, "stages": [{"uses": "pairs"}]})
    assert recipe.runtime == RuntimeSpec(device="cpu", dtype="float32")
    assert Runtime().manifest()["device"] == "cpu"


@CUDA
def test_auto_on_a_gpu_is_bf16_where_supported():
    import torch

    rt = resolve_runtime()
    assert rt.device == "cuda:0"
    assert rt.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")


@CUDA
def test_slot_engine_on_the_gpu_writes_what_generate_writes(tiny_teacher):
    """The slot loop's cache, index and mask tensors live on the model's device."""
    from transformers import AutoModelForCausalLM

    from reasondistill.local_decoding import TeacherGenerator
    from reasondistill.tiny import default_domain

    dom = default_domain()
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher).to("cuda")  # runtime: the test's own placement
    messages = [dom.messages(r) for r in dom.generate(n=12, seed=4)]
    slots = TeacherGenerator(str(tiny_teacher), dom, batch_size=5, max_new_tokens=40, model=model, engine="slots")
    plain = TeacherGenerator(str(tiny_teacher), dom, batch_size=5, max_new_tokens=40, model=model, engine="generate")
    assert [g[0].text for g in slots.generate(messages)] == [g[0].text for g in plain.generate(messages)]


@CUDA
def test_tiny_pipeline_trains_and_evaluates_on_the_gpu(rd_engine):
    recipe = Recipe(name="gpu", models={"teacher": "tiny-causal-lm", "student": "tiny-encoder"}, stages=[
        step("pairs", n=120), step("reasoning", source="column", limit=32),
        step("sft", max_steps=2, lora=False, batch_size=4, max_length=320, eval_rows=4, eval_max_new_tokens=16),
        step("annotate", limit=16, shard_size=8, dev_rows=4, annotator_options={"max_new_tokens": 16}),
        step("distill", train_input="pairs", reasoning_column="rationale", max_steps=2, batch_size=8)])
    results = rd_engine.run(recipe)
    manifest = json.loads((rd_engine.runs_dir / "gpu" / "distill" / "manifest.json").read_text())
    assert manifest["runtime"]["device"] == "cuda:0" and "dev_macro_f1" in results["distill"].metrics


def test_the_bf16_probe_is_the_fp32_time_over_the_bf16_time(monkeypatch):
    import torch

    from reasondistill import runtime

    assert runtime.matmul_seconds(torch.float32, size=16, repeats=2) > 0
    seconds = {torch.float32: 0.002, torch.bfloat16: 0.001}
    timed = []
    monkeypatch.setattr(runtime, "matmul_seconds", lambda dtype: timed.append(dtype) or seconds[dtype])
    runtime.cpu_bf16_speedup.cache_clear()
    try:
        assert runtime.cpu_bf16_speedup() == pytest.approx(2.0)
        assert runtime.cpu_bf16_speedup() == pytest.approx(2.0) and len(timed) == 2  # measured once a process
        runtime.cpu_bf16_speedup.cache_clear()
        seconds[torch.bfloat16] = 0.0  # a timer too coarse to see it: very fast, never a division by zero
        assert runtime.cpu_bf16_speedup() == pytest.approx(2e6)
        runtime.cpu_bf16_speedup.cache_clear()

        def no_bf16_kernels(dtype):
            if dtype is torch.bfloat16:
                raise RuntimeError('"addmm_impl_cpu_" not implemented for \'BFloat16\'')
            return 0.002
        monkeypatch.setattr(runtime, "matmul_seconds", no_bf16_kernels)
        assert runtime.cpu_bf16_speedup() == 0.0  # as documented: never "as fast", so never bf16
    finally:
        runtime.cpu_bf16_speedup.cache_clear()


@NO_CUDA
@pytest.mark.parametrize("speedup, hint", [(2.0, True), (1.2, False)])
def test_auto_says_when_fastest_would_take_bf16(monkeypatch, speedup, hint):
    from reasondistill import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: speedup)
    rt = resolve_runtime(RuntimeSpec(dtype="auto"))
    assert rt.dtype == "float32" and ("; runtime.dtype: fastest would use it" in rt.reason) is hint


def test_each_process_takes_its_own_gpu(monkeypatch):
    """Placement on a machine with 2 GPUs (counted, not used: the dtype is given)."""
    from reasondistill import runtime

    monkeypatch.setattr(runtime, "cuda_count", lambda: 2)

    def device(spec="auto", local_rank=None):
        ranks = {} if local_rank is None else {"local_rank": local_rank}
        return resolve_runtime(RuntimeSpec(device=spec, dtype="float32"), **ranks).device

    assert [device(), device(local_rank=1), device(local_rank=3)] == ["cuda:0", "cuda:1", "cuda:1"]
    assert [device("cuda"), device("cuda", 1), device("cuda:1")] == ["cuda:0", "cuda:1", "cuda:1"]
    with pytest.raises(Exception, match=r"'cuda:2' asked for, but only 2 GPU\(s\) are visible"):
        device("cuda:2")
    for count, words in ((2, "cuda:0 (2 GPUs visible)"), (1, "cuda:0 (1 GPU visible)"), (0, "cpu (0 GPUs visible)")):
        monkeypatch.setattr(runtime, "cuda_count", lambda count=count: count)
        assert f"device auto -> {words}" in resolve_runtime(RuntimeSpec(dtype="float32")).reason


def test_more_processes_than_cores_still_get_a_thread_each():
    assert resolve_runtime(RuntimeSpec(device="cpu"), processes=4 * (os.cpu_count() or 1)).threads == 1


def test_current_is_the_runs_runtime_inside_a_run_and_this_machines_outside(monkeypatch):
    from reasondistill import runtime

    monkeypatch.setattr(runtime, "_CURRENT", None)
    outside = runtime.current()
    assert isinstance(outside, Runtime) and runtime.current() is outside  # resolved once
    assert outside.threads is None  # one process: torch's own thread count
    mine = resolve_runtime(RuntimeSpec(device="cpu", dtype="bfloat16"))
    with runtime.using(mine):
        assert runtime.current() is mine
    assert runtime.current() is outside


@pytest.mark.parametrize("major", [4, 5, 6])
def test_a_per_query_mask_is_what_each_transformers_major_reads(monkeypatch, major):
    """4.x BERT takes a 3-D 0/1 mask; 5.x and later a 4-D additive one (0 where a query may look)."""
    import torch

    from reasondistill import hf_compat

    monkeypatch.setattr(hf_compat, "transformers_major", lambda: major)
    allowed = torch.tensor([[[True, False], [True, True]]])
    mask = hf_compat.per_query_mask(allowed, torch.float32)
    if major == 4:
        assert mask.tolist() == [[[1.0, 0.0], [1.0, 1.0]]]
    else:
        low = torch.finfo(torch.float32).min
        assert mask.shape == (1, 1, 2, 2) and mask.tolist() == [[[[0.0, low], [0.0, 0.0]]]]


def test_the_probe_is_the_one_the_docs_describe(monkeypatch):
    """One PROBE_SIZE square matmul, the best of PROBE_REPEATS timings, as the module docstring says:
    the probe readings in docs/benchmarks.md compare across runs only at one size."""
    import time

    import torch

    from reasondistill import runtime

    assert f"one {runtime.PROBE_SIZE} x {runtime.PROBE_SIZE} matmul, the best of {runtime.PROBE_REPEATS} timings" \
        in " ".join(runtime.__doc__.split())
    shapes, ticks = [], iter([0.0, 0.5, 1.0, 1.2, 2.0, 2.3, 3.0, 3.4, 4.0, 4.6, 5.0, 5.7])
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *size, **kw: shapes.append(size) or real_randn(2, 2, **kw))
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    assert runtime.matmul_seconds(torch.float32) == pytest.approx(0.2)  # the best of the 5 timings
    assert shapes == [(runtime.PROBE_SIZE, runtime.PROBE_SIZE)] * 2 and next(ticks) == 5.0  # 10 ticks read


@pytest.mark.parametrize("cores, processes, cuda, threads", [
    (5, 2, False, 2), (2, 2, False, 1), (1, 2, False, 1), (None, 2, False, 1), (8, 1, False, None),
    (8, 2, True, None)])
def test_auto_threads_split_known_cores_and_leave_gpus_alone(monkeypatch, cores, processes, cuda, threads):
    from reasondistill import runtime

    monkeypatch.setattr(runtime.os, "cpu_count", lambda: cores)
    got = runtime._threads("auto", processes, cuda)
    assert got == threads and type(got) is type(threads)
    assert runtime._threads(3, processes, cuda) == 3
