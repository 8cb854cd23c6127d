"""bench/training.py end to end on tiny sizes: it runs and its JSON keeps the documented schema.

Only the shape of the output is checked: timings on a shared CI machine prove nothing.
"""

import json
import math
import subprocess
import sys

import jax
import pytest
from conftest import REPO_ROOT

from bench import cases, harness

CASE_KEYS = {
    "arch", "backend", "method", "models_per_step", "model_examples_per_s", "peak_mem_mb", "compile_s",
    "conv_impl", "dtype", "default", "times_s", "train_gflops_per_s",
}  # fmt: skip


def _run(tmp_path, *flags):
    out = tmp_path / "harness.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.training", "--quick", f"--json={out}", *flags],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_quick_train_bench_writes_the_schema(tmp_path):
    report, stdout = _run(tmp_path)
    assert set(report) >= {"cases", "ratios", "roofline", "environment"}
    cases = report["cases"]
    assert {c["arch"] for c in cases} == {"mlp-tiny", "cnn-tiny"}
    for case in cases:
        assert CASE_KEYS <= set(case), CASE_KEYS - set(case)
        assert case["method"] in ("vmap", "loop", "torch")
        assert case["model_examples_per_s"] > 0 and math.isfinite(case["model_examples_per_s"])
        assert len(case["times_s"]) >= 1
    defaults = [c for c in cases if c["default"]]
    assert {c["arch"] for c in defaults} == {"mlp-tiny", "cnn-tiny"}
    assert all(c["method"] == "vmap" and c["peak_mem_mb"] > 0 and c["compile_s"] > 0 for c in defaults)
    assert {"loop", "vmap"} <= {c["method"] for c in cases}
    for arch, ratios in report["ratios"].items():
        assert ratios["default_vs_loop"] > 0, arch
    roofline = report["roofline"]
    assert roofline["peak_matmul_gflops"] > 0
    assert all(v > 0 for v in roofline["train_flops_per_example"].values())
    assert roofline["peak_matmul_gflops_by_dtype"]["float32"] == roofline["peak_matmul_gflops"]
    projection = report["projection"]
    assert projection["model_examples"] == harness.model_examples(32, 256, 100, 25_000)  # --quick: batch 32
    for arch in ("mlp-tiny", "cnn-tiny"):
        default = next(c for c in cases if c["arch"] == arch and c["default"])
        hours = projection["model_examples"] / default["model_examples_per_s"] / 3600
        assert math.isclose(projection["archs"][arch]["default_hours"], hours)
        assert 0 < projection["archs"][arch]["best_hours"] <= hours
    assert report["out_of_memory"] == {"mlp-tiny": [], "cnn-tiny": []}
    assert "model-ex/s" in stdout and "LiRA paper" in stdout  # the table and the projection


def test_model_examples_of_the_lira_paper():
    # 256 models x 100 epochs x ceil(25,000 / 256) = 98 batches of 256.
    assert harness.model_examples(256, **harness.LIRA_PAPER_CIFAR10) == 256 * 100 * 98 * 256


def test_quick_inference_memory(tmp_path):
    report, _ = _run(tmp_path, "--case=inference_memory", f"--workdir={tmp_path / 'run'}")
    result = report["inference_memory"]
    assert result["logits_mb"] > 0 and result["rss_mb"] > 0
    logits = sorted((tmp_path / "run" / "logits").glob("*.npy"))
    assert len(logits) == result["num_models"]


def test_quick_whitebox_query(tmp_path):
    report, stdout = _run(
        tmp_path, "--case=whitebox_query", "--arch=cnn-tiny,mlp-tiny", f"--workdir={tmp_path}"
    )
    for arch in ("cnn-tiny", "mlp-tiny"):
        result = report["whitebox_query"][arch]
        assert result["logits"]["model_examples_per_s"] > 0 and result["whitebox"]["model_examples_per_s"] > 0
        assert result["whitebox_vs_logits_time"] > 0 and f"{arch}: 4 models" in stdout
        norms = sorted((tmp_path / arch / "whitebox").glob("*_norms.npy"))
        assert len(norms) == result["num_models"]
    assert report["whitebox_query"]["mlp-tiny"]["queries"] == 1  # tabular data has one query


def test_torch_worker_env():
    nchw = cases.Case("cnn32", "torch", 1, None, malloc="glibc")
    thp = cases.Case("cnn32", "torch", 1, "channels_last", malloc="thp")
    assert nchw.name == "cnn32/torch/x1" and thp.name == "cnn32/torch/x1/channels_last/thp"
    # glibc's malloc as it comes, whatever the parent process has.
    assert nchw.worker_env("PASSIVE") == {"OMP_WAIT_POLICY": "PASSIVE", "GLIBC_TUNABLES": ""}
    assert thp.worker_env() == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert cases.Case("cnn32", "vmap", 1, "xla").worker_env() == {}  # the parent's own settings


class _Runner:
    def __init__(self, fail_in=None):
        self.fail_in, self.closed, self.runs = fail_in, False, 0

    def _maybe_fail(self, where):
        if self.fail_in == where:
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB."
            )

    def compile(self):
        self._maybe_fail("compile")
        return 1.5

    def run(self):
        self._maybe_fail("run")
        self.runs += 1

    def close(self):
        self.closed = True


def test_a_case_that_does_not_fit_is_skipped():
    runner, compile_s = harness.prepare_runner(_Runner)
    assert compile_s == 1.5 and runner.runs == 1  # compiled and warmed up
    for where in ("compile", "run"):
        failing = _Runner(where)
        assert harness.prepare_runner(lambda failing=failing: failing) == (None, None)
        assert failing.closed

    def other_error():
        raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shapes")

    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
        harness.prepare_runner(other_error)
    assert not harness.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED"))  # not XLA's
