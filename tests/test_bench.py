"""bench/training.py end to end on tiny sizes: it runs and its JSON keeps the documented schema.

Only the shape of the output is checked: timings on a shared CI machine prove nothing.
"""

import json
import math
import statistics
import subprocess
import sys

import jax
import pytest
from conftest import REPO_ROOT

from bench import cases, harness, roofline
from lira.training import layers

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


@pytest.mark.slow
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
    roofline = report["roofline"]  # on the CPU: FLOPs from the architecture over a measured matmul
    assert roofline["datasheet_gflops"] is None and roofline["peak_source"].startswith("measured")
    assert roofline["peak_gflops"]["fp32"] == roofline["measured_matmul_gflops"]["fp32"] > 0
    assert all(v > 0 for v in roofline["train_flops_per_example"].values())
    for case in cases:
        assert case["precision"] == "fp32" and case["fraction_of_peak"] > 0
        rate = roofline["train_flops_per_example"][case["arch"]] * case["model_examples_per_s"] / 1e9
        assert math.isclose(case["train_gflops_per_s"], rate)
        if case["method"] == "torch":  # PyTorch's baseline compiles no XLA program
            assert case["hlo_convolutions"] == {}
            continue
        assert case["hlo_convolutions"]["cudnn$convBackwardFilter"] == 0  # no cuDNN on the CPU
        assert (case["hlo_convolutions"]["convolution"] > 0) == (case["arch"] == "cnn-tiny")
    assert report["complete"] is True and report["torch_baseline"] == "ok"  # ./run.sh test installs torch
    assert {c["arch"] for c in cases if c["method"] == "torch"} == {"mlp-tiny", "cnn-tiny"}
    projection = report["projection"]
    assert projection["model_examples"] == harness.model_examples(32, 256, 100, 25_000)  # --quick: batch 32
    for arch in ("mlp-tiny", "cnn-tiny"):
        default = next(c for c in cases if c["arch"] == arch and c["default"])
        hours = projection["model_examples"] / default["model_examples_per_s"] / 3600
        assert math.isclose(projection["archs"][arch]["default_hours"], hours)
        assert 0 < projection["archs"][arch]["best_hours"] <= hours
    assert report["out_of_memory"] == {"mlp-tiny": [], "cnn-tiny": []}
    assert "model-ex/s" in stdout and "LiRA paper" in stdout  # the table and the projection


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    report, stdout = _run(tmp_path, "--case=end_to_end", f"--workdir={tmp_path}")
    rows = report["end_to_end"]
    assert report["cases"] == rows and {r["arch"] for r in rows} == {"mlp-tiny", "cnn-tiny"}
    for row in rows:
        assert {"arch", "dtype", "models_per_step", "batch_size", "model_examples_per_s"} <= set(row)
        assert row["method"] == "end_to_end" and row["default"] and row["dtype"] == "float32"
        assert row["num_models"] == row["models_per_step"] * row["slices"]
        assert row["model_examples_per_s"] > 0 and row["step_model_examples_per_s"] > 0
        assert row["end_to_end_vs_step"] == statistics.median(row["ratios"]) > 0
        work = row["num_models"] * row["epochs"] * row["steps_per_epoch"] * row["batch_size"]
        assert math.isclose(row["model_examples_per_s"], work / statistics.median(row["run_times_s"]))
    assert "its step alone" in stdout


def test_a_mistaken_flag_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.training", "--dtypes=float64"], capture_output=True,
                            text=True, timeout=300, cwd=REPO_ROOT)  # fmt: skip
    assert result.returncode != 0 and "--dtypes: unknown ['float64']; valid: float32, bfloat16, default" in (
        result.stderr
    )


def test_model_examples_of_the_lira_paper():
    # 256 models x 100 epochs x ceil(25,000 / 256) = 98 batches of 256.
    assert harness.model_examples(256, **harness.LIRA_PAPER_CIFAR10) == 256 * 100 * 98 * 256


@pytest.mark.slow
def test_quick_inference_memory(tmp_path):
    report, _ = _run(tmp_path, "--case=inference_memory", f"--workdir={tmp_path / 'run'}")
    result = report["inference_memory"]
    assert result["logits_mb"] > 0 and result["rss_mb"] > 0
    logits = sorted((tmp_path / "run" / "logits").glob("*.npy"))
    assert len(logits) == result["num_models"]


@pytest.mark.slow
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


# --- The roofline: FLOPs counted from the architecture, and the peaks ---------------------------


def _conv(strides, padding, lhs_dilation, rhs_dilation, feature_groups=1, batch_groups=1):
    return lambda lhs, rhs: jax.lax.conv_general_dilated(
        lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, ("NHWC", "HWIO", "NHWC"),
        feature_group_count=feature_groups, batch_group_count=batch_groups,
    )  # fmt: skip


@pytest.mark.parametrize(
    "lhs, rhs, conv",
    [
        ((2, 7, 6, 3), (3, 2, 3, 4), _conv((2, 1), ((1, 2), (0, -1)), (1, 1), (1, 2))),
        ((2, 7, 6, 3), (3, 3, 3, 4), _conv((1, 1), ((1, 1), (1, 1)), (2, 1), (1, 1))),  # a transposed conv
        ((2, 8, 8, 4), (3, 3, 2, 6), _conv((1, 1), "SAME", (1, 1), (1, 1), feature_groups=2)),
        ((4, 8, 8, 3), (3, 3, 3, 6), _conv((1, 1), "SAME", (1, 1), (1, 1), batch_groups=2)),
    ],
)
def test_convolution_flops_count_the_taps_that_read_real_inputs(lhs, rhs, conv):
    # With all-ones inputs and kernel, each output element is the number of multiply-adds that
    # read a real input element (padding and dilation holes read zeros): their sum is the count.
    ones_lhs, ones_rhs = jax.numpy.ones(lhs), jax.numpy.ones(rhs)
    direct = float(conv(ones_lhs, ones_rhs).sum())
    assert roofline.count_flops(jax.make_jaxpr(conv)(ones_lhs, ones_rhs)).matmul == 2 * direct


def test_valid_taps_against_a_loop():
    for size, kernel, stride, padding, lhs_dil, rhs_dil in [
        (7, 3, 1, (1, 1), 1, 1), (7, 3, 2, (1, 2), 1, 1), (6, 2, 1, (0, -1), 1, 2), (5, 3, 1, (2, 2), 2, 1),
    ]:  # fmt: skip
        dilated = [i * lhs_dil if i < size else None for i in range(size)]
        real = {p for p in dilated if p is not None}
        span = (kernel - 1) * rhs_dil + 1
        count, out = 0, 0
        while out * stride + span <= (size - 1) * lhs_dil + 1 + sum(padding):
            for k in range(kernel):
                count += (out * stride + k * rhs_dil - padding[0]) in real
            out += 1
        assert roofline.valid_taps(size, kernel, stride, padding, lhs_dil, rhs_dil) == count


def _xla_flops_per_example(arch, shape, num_classes, batch_size=16):
    """XLA:CPU's cost analysis of the real single-model training step, per example."""
    workload = cases.Workload(shape, num_classes, 2 * batch_size, batch_size)
    x, y = cases.synthetic_data(workload)
    runner = harness.LoopRunner(cases.Case(arch, "loop", 1, "xla"), workload, x, y, 1, num_models=1)
    with layers.without_space_to_depth():
        runner.compile()
    return runner.flops_per_step() / batch_size


@pytest.mark.parametrize(
    "arch, shape, num_classes",
    [
        ("mlp-tiny", (600,), 100),
        ("cnn-tiny", (8, 8, 3), 10),
        ("cnn-tiny", (32, 32, 3), 10),
        ("wrn10-1", (8, 8, 3), 10),
    ],
)
@pytest.mark.slow
def test_model_flops_match_xla_within_ten_percent(arch, shape, num_classes):
    flops = roofline.arch_flops(arch, shape, num_classes)
    xla = _xla_flops_per_example(arch, shape, num_classes)
    assert abs((flops["train"] + flops["train_elementwise"]) / xla - 1) < 0.10, (flops, xla)
    # Forward, weight gradients, and input gradients of all layers but the first: at most 3x.
    assert 2.0 < flops["train_vs_forward"] <= 3.0
    assert flops["train_elementwise"] < flops["train"]


def test_datasheet_peaks_by_device_name():
    h200, pcie = roofline.datasheet_peaks("NVIDIA H200"), roofline.datasheet_peaks("NVIDIA H100 PCIe")
    assert h200 == pytest.approx({"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12})
    assert roofline.datasheet_peaks("NVIDIA H100 80GB HBM3") == h200  # the SXM part
    assert pcie["bf16"] == pytest.approx(756.5e12) and pcie["tf32"] < h200["tf32"]
    assert roofline.datasheet_peaks("NVIDIA A100-SXM4-80GB")["tf32"] == pytest.approx(156e12)
    assert roofline.datasheet_peaks("cpu") is None
    assert (
        roofline.precision_of("float32", "gpu") == "tf32"
        and roofline.precision_of("float32", "cpu") == "fp32"
    )
    assert roofline.precision_of("bfloat16", "gpu") == "bf16"
    with jax.default_matmul_precision("highest"):
        assert roofline.precision_of("float32", "gpu") == "fp32"


def test_peaks_are_the_datasheets_on_a_gpu_and_the_measured_matmul_on_the_cpu():
    peaks = roofline.peaks("cpu", "cpu", 128, ("fp32",), iterations=2)
    assert peaks["datasheet_gflops"] is None and peaks["peak_source"] == "measured 128^2 matmul"
    assert peaks["peak_gflops"]["fp32"] == peaks["measured_matmul_gflops"]["fp32"] > 0
    on_h200 = roofline.peaks("gpu", "NVIDIA H200", 128, ())  # nothing measured: the datasheet's all the same
    assert (
        on_h200["peak_gflops"]
        == on_h200["datasheet_gflops"]
        == pytest.approx({"fp32": 66_900, "tf32": 494_700, "bf16": 989_400})
    )
    assert on_h200["peak_source"] == "datasheet (dense)" and on_h200["measured_matmul_gflops"] == {}


def test_hlo_convolutions_counts_cudnn_calls_and_grouped_convolutions():
    text = "\n".join([
        '%a = (f32[16,3,3,32]{3,2,1,0}, u8[0]) custom-call(%x, %g), window={size=32x32 pad=1_1x1_1}, '
        'dim_labels=f01b_i01o->01bf, feature_group_count=16, custom_call_target="__cudnn$convForward"',
        '%b = (f32[3,3,32,64], u8[0]) custom-call(%x, %g), window={size=3x3}, dim_labels=b01f_01io->b01f, '
        'batch_group_count=16, custom_call_target="__cudnn$convBackwardFilter"',
        "%c = f32[8,8] convolution(%p, %q), window={size=3x3}, dim_labels=b01f_01io->b01f, feature_group_count=4",
    ])  # fmt: skip
    counts = harness.hlo_convolutions(text)
    assert counts["cudnn$convForward"] == 1 and counts["cudnn$convBackwardFilter"] == 1
    assert counts["cudnn$convBackwardInput"] == 0 and counts["convolution"] == 1
    assert counts["feature_grouped"] == 2 and counts["batch_grouped"] == 1


@pytest.mark.slow
def test_steps_per_call_bench_writes_its_table(tmp_path):
    out = tmp_path / "steps.json"
    args = ["--arch=mlp-tiny", "--num_examples=128", "--batch_size=16", "--repeats=1", f"--json={out}"]
    result = subprocess.run([sys.executable, "-m", "bench.steps_per_call", *args], capture_output=True, text=True,
                            timeout=300, cwd=REPO_ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (case,) = json.loads(out.read_text())["cases"]
    assert set(case["median_s"]) == {"step_program", "loop_program_1_step", "loop_program_epoch"}
    assert all(ratio > 0 for ratio in case["speedup_vs_step_program"].values())
