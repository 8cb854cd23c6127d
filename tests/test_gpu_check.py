"""bench/gpu_check.sh: every part of the GPU check at tiny sizes on the CPU (--smoke).

Only the shape of the report is checked, and that model i of the vectorized run equals its
single-model run: timings on a shared CI machine prove nothing.
"""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

PARTS = [
    "probe",
    "mlp-tiny/float32",
    "cnn-tiny/float32",
    "end_to_end",
    "whitebox_query",
    "dp_step",
    "mlp-tiny/bfloat16",
    "cnn-tiny/bfloat16",
]


def _run(tmp_path, *flags):
    report = tmp_path / "bench_gpu.json"
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--smoke", f"--json={report}", f"--workdir={tmp_path / 'work'}", *flags],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env={**os.environ, "OUT": str(tmp_path / "out")},
    )  # fmt: skip
    return result, (json.loads(report.read_text()) if report.is_file() else None)


def test_smoke_runs_every_part_and_writes_the_report(tmp_path):
    result, report = _run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {"cases", "device", "versions", "projection", "end_to_end", "parts"} <= set(report)
    assert [(p["name"], p["status"]) for p in report["parts"]] == [(name, "ok") for name in PARTS]
    assert report["device"]["platform"] == "cpu" and report["device"]["count"] >= 1
    assert {"python", "jax", "jaxlib", "flax", "optax", "numpy"} <= set(report["versions"])

    cases = report["cases"]
    assert {(c["arch"], c["dtype"]) for c in cases} == {
        (arch, dtype) for arch in ("mlp-tiny", "cnn-tiny") for dtype in ("float32", "bfloat16")
    }
    assert all(c["method"] in ("vmap", "loop") and c["model_examples_per_s"] > 0 for c in cases)
    defaults = [c for c in cases if c["default"]]  # float32 only: the bfloat16 parts leave it out
    assert sorted(c["arch"] for c in defaults) == ["cnn-tiny", "mlp-tiny"]
    assert {c["dtype"] for c in defaults} == {"float32"}
    assert len({c["name"] for c in cases}) == len(cases)
    for arch, values in report["projection"]["archs"].items():
        assert 0 < values["best_hours"] <= values["default_hours"], arch

    end_to_end = report["end_to_end"]
    check = end_to_end["check"]
    assert check["passed"] is True and check["precision"] == "highest" and check["rtol"] == 1e-2
    assert check["worst_rel_diff"] <= 1e-2 * check["between_models_rel_diff"]
    assert check["params_rel_diff"] <= 1e-4 and check["logits_rel_diff"] <= 1e-4
    assert check["between_models_rel_diff"] > 1e-2  # the models differ, so the comparison has teeth
    assert check["models"] == [0, 3] and end_to_end["default_precision"]["models"] == [0, 3]
    assert (
        end_to_end["vectorized"]["first_epoch_s"] > 0 and end_to_end["vectorized"]["model_examples_per_s"] > 0
    )

    whitebox = report["whitebox_query"]["cnn-tiny"]
    assert whitebox["whitebox_vs_logits_time"] > 0 and whitebox["whitebox"]["model_examples_per_s"] > 0
    assert set(report["dp_step"]) == {"mlp-tiny", "cnn-tiny"}
    for arch, dp_step in report["dp_step"].items():
        assert dp_step["dp_per_example_vs_sgd_time"] > 0 and dp_step["dp_ghost_vs_sgd_time"] > 0, arch

    out = result.stdout
    assert "White-box query stage, 4 cnn-tiny" in out and "DP-SGD step, mlp-tiny" in out
    assert "GPU check summary" in out and "model-ex/s" in out and "LiRA paper" in out
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

ok = {"name": "end_to_end", "status": "ok"}
report = lambda check, *parts: {"end_to_end": {"check": check} if check else None, "parts": [ok, *parts]}
planned = ["end_to_end"]
assert gpu_check.exit_status(report({"passed": True}), planned) == (0, "every part ran and the check passed")
assert gpu_check.exit_status(report({"passed": False}), planned) == (1, "the check failed")
assert gpu_check.exit_status(report(None), planned) == (1, "the check did not run")
late = {"name": "cnn32/bfloat16", "status": "timeout"}
assert gpu_check.exit_status(report({"passed": True}, late), planned)[0] == 2
assert gpu_check.exit_status(report({"passed": False}, late), planned)[0] == 1
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
