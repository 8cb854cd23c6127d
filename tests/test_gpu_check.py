"""bench/gpu_check.sh: every part of the GPU check at tiny sizes on the CPU (--smoke).

Only the shape of the report is checked, and that model i of the vectorized run equals its
single-model run: timings on a shared CI machine prove nothing.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

PARTS = [
    "probe", "mlp-tiny/default", "cnn-tiny/default", "end_to_end", "mlp-tiny/models_per_step",
    "cnn-tiny/models_per_step", "mlp-tiny/forms", "cnn-tiny/forms", "check", "torch", "whitebox_query", "dp_step",
]  # fmt: skip
SMOKE_BUDGET_S = 2400  # minutes of compiling on a busy 2-core machine; the parts' caps still hold


def _run(tmp_path, *flags):
    report = tmp_path / "bench_gpu.json"
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--smoke", f"--json={report}", f"--workdir={tmp_path / 'work'}", *flags],
        capture_output=True, text=True, timeout=3000, cwd=REPO_ROOT, env={**os.environ, "OUT": str(tmp_path / "out")},
    )  # fmt: skip
    return result, (json.loads(report.read_text()) if report.is_file() else None)


@pytest.mark.slow
def test_smoke_runs_every_part_and_writes_the_report(tmp_path):
    result, report = _run(tmp_path, f"--budget_s={SMOKE_BUDGET_S}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {"cases", "device", "versions", "projection", "end_to_end", "parts", "roofline", "check"} <= set(
        report
    )
    assert [(p["name"], p["status"]) for p in report["parts"]] == [(name, "ok") for name in PARTS]
    assert report["device"]["platform"] == "cpu" and report["device"]["count"] >= 1
    assert {"python", "jax", "jaxlib", "flax", "optax", "numpy"} <= set(report["versions"])
    peaks = report["roofline"]["peaks"]
    assert peaks["datasheet_gflops"] is None and peaks["measured_matmul_gflops"]["fp32"] > 0

    cases = report["cases"]
    for case in cases:  # what docs/bench/bench_gpu.json promises of every case
        assert {"arch", "dtype", "models_per_step", "batch_size", "model_examples_per_s", "part"} <= set(case)
        assert case["model_examples_per_s"] > 0
    by_part = lambda part: {(c["name"], c["default"]) for c in cases if c["part"] == part}
    assert by_part("cnn-tiny/default") == {
        ("cnn-tiny/vmap/x1/xla", True), ("cnn-tiny/vmap/x1/xla/bfloat16", True),
        ("cnn-tiny/loop/x1/xla", False), ("cnn-tiny/loop/x1/xla/bfloat16", False),
    }  # fmt: skip
    assert {c["models_per_step"] for c in cases if c["part"] == "cnn-tiny/models_per_step"} == {1, 2}
    assert {c["method"] for c in cases if c["part"] == "mlp-tiny/forms"} == {"vmap", "grad_in_vmap"}
    for case in (
        c for c in cases if c["arch"] == "cnn-tiny" and c["method"] in ("vmap", "grad_in_vmap", "loop")
    ):
        convolutions = case["hlo_convolutions"]
        assert convolutions["convolution"] > 0 and convolutions["cudnn$convBackwardFilter"] == 0, case["name"]
        assert 0 < case["fraction_of_peak"]
    for arch, values in report["projection"]["archs"].items():
        assert 0 < values["best_hours"] <= values["default_hours"], arch

    end_to_end = report["end_to_end"]
    assert {row["arch"] for row in end_to_end} == {"cnn-tiny", "mlp-tiny"}
    assert all(row["end_to_end_vs_step"] > 0 and row["method"] == "end_to_end" for row in end_to_end)
    check = report["check"]["check"]
    assert check["passed"] is True and check["precision"] == "highest" and check["rtol"] == 1e-2
    assert check["worst_rel_diff"] <= 1e-2 * check["between_models_rel_diff"]
    assert check["params_rel_diff"] <= 1e-4 and check["logits_rel_diff"] <= 1e-4
    assert check["between_models_rel_diff"] > 1e-2  # the models differ, so the comparison has teeth
    assert check["models"] == [0, 3] and report["check"]["default_precision"]["models"] == [0, 3]
    assert report["torch"]["status"] == "ok"  # ./run.sh test installs torch

    whitebox = report["whitebox_query"]["cnn-tiny"]
    assert whitebox["whitebox_vs_logits_time"] > 0 and whitebox["whitebox"]["model_examples_per_s"] > 0
    assert set(report["dp_step"]) == {"mlp-tiny", "cnn-tiny"}
    for arch, dp_step in report["dp_step"].items():
        assert dp_step["dp_per_example_vs_sgd_time"] > 0 and dp_step["dp_ghost_vs_sgd_time"] > 0, arch

    out = result.stdout
    assert "White-box query stage, 4 cnn-tiny" in out and "DP-SGD step, mlp-tiny" in out
    assert "GPU check summary" in out and "model-ex/s" in out and "LiRA paper" in out
    assert "End to end, cnn-tiny/end_to_end/x1" in out and "bwd filter" in out
    assert "Check PASSED" in out and "Exit status 0" in out
    assert json.loads((tmp_path / "out" / "bench_gpu.json").read_text()) == report
    assert "GPU check summary" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_parts_out_of_time_are_skipped_and_fail_the_run(tmp_path):
    result, report = _run(tmp_path, "--parts=probe", "--budget_s=1")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert [(p["name"], p["status"]) for p in report["parts"]] == [("probe", "skipped (no time left)")]
    assert "Exit status 2: parts not finished: probe" in result.stdout


def test_a_user_mistake_is_one_line(tmp_path):
    result, report = _run(tmp_path, "--parts=wrn")
    assert result.returncode != 0 and report is None
    assert "--parts: unknown ['wrn']; valid: probe," in result.stderr


def test_exit_status():
    code = """
import sys
sys.argv = ["gpu_check"]
from bench import gpu_check

ok = {"name": "check", "status": "ok"}
report = lambda check, *parts: {"check": {"check": check} if check else None, "parts": [ok, *parts]}
assert gpu_check.exit_status(report({"passed": True})) == (0, "every part ran and the check passed")
assert gpu_check.exit_status(report({"passed": False})) == (1, "the check failed")
late = {"name": "cnn32/forms", "status": "timeout"}
assert gpu_check.exit_status(report({"passed": True}, late)) == (2, "parts not finished: cnn32/forms")
assert gpu_check.exit_status(report({"passed": False}, late))[0] == 1
skipped = {"name": "check", "status": "skipped (no time left)"}
assert gpu_check.exit_status({"check": None, "parts": [skipped]}) == (2, "parts not finished: check")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
