"""The vectorized trainer on one GPU, time-boxed; bench/gpu_check.sh runs it.

Parts, the trainer's open GPU questions first, each in a process of its own under a timeout
cut from one budget (--budget_s, about 8 minutes), each writing its figures as it finishes:

    probe                  the device, the versions, the datasheet's peaks beside measured
                           8192^2 matmuls (fp32, tf32, bf16), whether PyTorch has CUDA here
    (a) wrn28-2/default    bench/training.py: the trainer's default models a step, and the
        cnn32/default      jitted single-model loop, in float32 and bfloat16
    (b) end_to_end         bench/training.py --case=end_to_end: a real training call of cnn32
                           and wrn28-2 against its own step, at the trainer's defaults
    (c) wrn28-2/models_per_step, cnn32/models_per_step
                           1, 4, 16 and 64 models a step, in the trainer's default dtype
    (d) wrn28-2/forms, cnn32/forms
                           the step before the gradient left the vmap, and one step a
                           call, beside the trainer's step, float32, native convolutions
    then check             bench/vectorized_check.py: model i of a vectorized run is model i
                           trained alone
         torch             the PyTorch baseline as ML Privacy Meter runs on a GPU (one model at
                           a time, fp16 autocast, channels_last), where torch has CUDA
         whitebox_query    the white-box query stage against the logits-only one
         dp_step           bench/dp.py: the DP-SGD step against the ordinary one

All parts share one persistent compilation cache (<workdir>/jax_cache, emptied when the check
starts), so a program compiled by one part loads in the next (a case's compile_s is then the
load). Every vectorized case records its optimized HLO's convolutions (bench.harness.
hlo_convolutions): cuDNN's convBackwardFilter calls show that the weight gradients reach cuDNN.
After every part the merged results go to --json (and $OUT when set). Exit status: 0 when
every part ran and the check passed; 1 when the check failed; 2 when a part failed, ran out of
time or was skipped for want of it.

--smoke: every part at tiny sizes on the CPU, mlp-tiny standing in for wrn28-2 and cnn-tiny for
cnn32 (tests/test_gpu_check.py); its time is nearly all compiling.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
from absl import app, flags

from bench import CIFAR10_SUBSET, gpu_report, roofline
from lira import cli
from lira.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "Tiny sizes on the CPU, for the tests.")
flags.DEFINE_string("json", None, "Results (default docs/bench/bench_gpu.json; --smoke: in --workdir).")
flags.DEFINE_string("workdir", None, "Parts' outputs, the log and the cache (default exp/gpu_check[_smoke]).")
flags.DEFINE_string("data", None, "The check's npz (default data_cache/cifar10_6k.npz).")
flags.DEFINE_integer("budget_s", 480, "Seconds for all parts together.")
flags.DEFINE_list("parts", None, "Parts to run, in their fixed order (default all).")
flags.DEFINE_float("rtol", 1e-2, "Tolerance of the check, relative to the difference between two models.")
flags.DEFINE_string("probe_json", None, "Internal: run the probe in this process, its results here.")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "docs" / "bench" / "bench_gpu.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "absl-py", "torch")
MIN_PART_S = 5.0  # a part with less time left than this is skipped
SMOKE_CAP_S = 400.0


@dataclasses.dataclass(frozen=True)
class Options:
    smoke: bool
    budget_s: float
    data: Path
    rtol: float
    workdir: Path
    json_path: Path


@dataclasses.dataclass(frozen=True)
class Part:
    """One process of the check, at most cap_s seconds: `module` (bench.training, bench.dp, ...)
    run with `args` and --json=<its file>."""

    name: str
    cap_s: float
    module: str
    args: tuple[str, ...] = ()


def plan(smoke: bool) -> list[Part]:
    """The parts in their order of priority, with their flags."""
    wrn, cnn = ("mlp-tiny", "cnn-tiny") if smoke else ("wrn28-2", "cnn32")
    tiny = (
        ("--steps=2", "--batch_size=8", "--num_examples=64", "--repeats=1", "--loop_models=2")
        if smoke
        else ()
    )
    timing = ("--memory=none", "--measure_matmul=false", "--repeats=2", *tiny)
    each = ("1", "4", "16", "64") if not smoke else ("1", "2")
    forms = {wrn: "16" if not smoke else "2", cnn: "64" if not smoke else "2"}  # the old defaults
    training = "bench.training"
    parts = [Part("probe", 90, "bench.gpu_check")]
    for arch, cap in ((wrn, 160), (cnn, 90)):  # (a)
        parts.append(Part(f"{arch}/default", cap, training, (
            f"--arch={arch}", "--models_per_step=", "--dtypes=float32,bfloat16", "--methods=vmap,loop",
            "--conv_impls=xla", *timing)))  # fmt: skip
    e2e = ("--quick",) if smoke else ("--e2e_examples=10000", "--e2e_test=10000", "--repeats=2")
    parts.append(Part("end_to_end", 150, training, ("--case=end_to_end", f"--arch={cnn},{wrn}", "--dtypes=default",
                                                    *e2e)))  # (b)  # fmt: skip
    for arch, cap, impls in ((wrn, 180, "xla"), (cnn, 100, "xla" if smoke else "xla,im2col")):  # (c)
        parts.append(Part(f"{arch}/models_per_step", cap, training, (
            f"--arch={arch}", f"--models_per_step={','.join(each)}", "--dtypes=default", "--methods=vmap",
            f"--conv_impls={impls}", "--add_default=false", *timing)))  # fmt: skip
    for arch, cap in ((wrn, 120), (cnn, 60)):  # (d)
        parts.append(Part(f"{arch}/forms", cap, training, (
            f"--arch={arch}", f"--models_per_step={forms[arch]}", "--dtypes=float32", "--steps_per_call=0,1",
            "--methods=vmap,grad_in_vmap", "--conv_impls=xla", "--add_default=false", *timing)))  # fmt: skip
    parts.append(Part("check", 120, "bench.vectorized_check"))
    parts.append(Part("torch", 120, training, (
        f"--arch={cnn},{wrn}", "--methods=torch", "--torch_layouts=channels_last", "--torch_malloc=glibc",
        f"--torch_dtypes={'float32' if smoke else 'float16'}", "--add_default=false", *timing)))  # fmt: skip
    whitebox = ("--quick", "--arch=cnn-tiny") if smoke else ("--arch=cnn32", "--whitebox_models=64",
                                                              "--whitebox_examples=4096")  # fmt: skip
    parts.append(Part("whitebox_query", 120, training, ("--case=whitebox_query", *whitebox)))
    dp = (("--arch=mlp-tiny,cnn-tiny", "--models=2", "--steps=1", "--repeats=1", "--batch_size=16") if smoke
          else ("--arch=mlp,cnn32", "--models=16", "--steps=4", "--repeats=3"))  # fmt: skip
    parts.append(Part("dp_step", 120, "bench.dp", dp))
    # On the CPU every part is mostly compiling, for minutes on a busy machine: caps that only
    # stop a part that hangs (the tests give the smoke run a budget of its own).
    return [dataclasses.replace(p, cap_s=SMOKE_CAP_S) for p in parts] if smoke else parts


def part_command(part: Part, options: Options, part_json: Path) -> list[str]:
    command = [sys.executable, "-m", part.module, *part.args]
    if part.name == "probe":
        return [*command, f"--probe_json={part_json}", f"--smoke={options.smoke}"]
    if part.name == "check":
        return [*command, f"--json={part_json}", f"--data={options.data}", f"--rtol={options.rtol}",
                f"--smoke={options.smoke}"]  # fmt: skip
    return [*command, f"--json={part_json}"]


# --- The driver ---------------------------------------------------------------------------------


class Log:
    """Prints and appends to the log file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file, self.lock = path.open("w"), threading.Lock()

    def __call__(self, text: str = "") -> None:
        with self.lock:
            print(text, flush=True)
            self.file.write(text + "\n")
            self.file.flush()


def run_process(command: list[str], timeout: float, log: Log, env: dict) -> tuple[str, int | None]:
    """(status, return code) of `command`, its output streamed to the log; "timeout" kills it
    (and whatever it started) after `timeout` seconds."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})  # fmt: skip
    reader = threading.Thread(target=lambda: [log("  " + line.rstrip()) for line in process.stdout])
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join()
        return "timeout", None
    reader.join()
    return ("ok" if code == 0 else "failed"), code


def run_parts(parts: list[Part], options: Options, log: Log) -> dict:
    """Runs the parts within options.budget_s, writing the merged results after each."""
    cache = options.workdir / "jax_cache"
    shutil.rmtree(cache, ignore_errors=True)  # compile times are this check's, not a last run's
    env = {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    started = time.monotonic()
    statuses, results = [], {}
    for part in parts:
        part_json = options.workdir / (part.name.replace("/", "_") + ".json")
        part_json.unlink(missing_ok=True)
        timeout = min(part.cap_s, started + options.budget_s - time.monotonic())
        status, code, tic = "skipped (no time left)", None, time.monotonic()
        if timeout >= MIN_PART_S:
            log(f"\n=== {part.name} (timeout {timeout:.0f} s) ===")
            status, code = run_process(part_command(part, options, part_json), timeout, log, env)
        if part_json.is_file():  # a part writes as it goes: one that timed out keeps what it finished
            results[part.name] = json.loads(part_json.read_text())
        statuses.append({"name": part.name, "status": status, "returncode": code,
                         "wall_s": time.monotonic() - tic, "timeout_s": max(timeout, 0.0)})  # fmt: skip
        merged = gpu_report.merge(results, statuses, options, time.monotonic() - started, versions())
        write_outputs(merged, options.json_path, log)
    return merged


def versions() -> dict:
    """Installed versions of lira's dependencies and of any JAX CUDA plugin or NVIDIA library."""
    out = {"python": platform.python_version()}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name in PACKAGES or name.startswith(("jax-cuda", "jax_cuda", "nvidia-")):
            out[name] = dist.version
    return dict(sorted(out.items()))


def write_outputs(merged: dict, json_path: Path, log: Log) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(json_path, out / json_path.name)
        shutil.copy(log.file.name, out / Path(log.file.name).name)


def exit_status(merged: dict) -> tuple[int, str]:
    """(status, why): see the module docstring."""
    check = (merged.get("check") or {}).get("check")
    if check and not check["passed"]:
        return 1, "the check failed"
    unfinished = [p["name"] for p in merged["parts"] if p["status"] != "ok"]
    if unfinished:
        return 2, f"parts not finished: {', '.join(unfinished)}"
    return 0, "every part ran" + (" and the check passed" if check else "")


# --- The probe ------------------------------------------------------------------------------------


def probe(smoke: bool) -> dict:
    """The device, JAX's versions, the peaks (bench.roofline.peaks: the datasheet's and measured
    matmuls) and whether the PyTorch baseline can run here."""
    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    device = {
        "platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices),
        "memory_gb": stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None,
        "platform_version": getattr(getattr(devices[0], "client", None), "platform_version", None),
        "environment_info": jax.print_environment_info(return_string=True),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in device.items() if k != "environment_info"}))
    backend = jax.default_backend()
    precisions = ("fp32", "tf32", "bf16") if backend == "gpu" else ("fp32", "bf16")
    peaks = roofline.peaks(backend, devices[0].device_kind, 256 if smoke else 8192, precisions)
    print(", ".join(f"{p} matmul {v:,.0f} GFLOP/s" for p, v in peaks["measured_matmul_gflops"].items()))
    return {
        "device": device,
        "versions": {"jax": jax.__version__},
        "peaks": peaks,
        "torch": torch_probe(backend),
    }


def torch_probe(backend: str) -> dict:
    """{"status": "ok" | "torch not importable" | "torch has no CUDA", "version"}."""
    if importlib.util.find_spec("torch") is None:
        return {"status": "torch not importable", "version": None}
    code = "import torch; print(torch.__version__, torch.cuda.is_available())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode:
        return {"status": "torch not importable", "version": None, "error": result.stderr[-500:]}
    version, cuda = (result.stdout.split() + ["", ""])[:2]
    status = "ok" if cuda == "True" or backend == "cpu" else "torch has no CUDA"
    return {"status": status, "version": version, "cuda": cuda == "True"}


# --- Entry --------------------------------------------------------------------------------------


def main(argv) -> int:
    del argv
    if FLAGS.probe_json:
        layout.save_json(Path(FLAGS.probe_json), probe(FLAGS.smoke))
        return 0
    parts = plan(FLAGS.smoke)
    names = [p.name for p in parts]
    unknown = sorted(set(FLAGS.parts or []) - set(names))
    if unknown:
        raise app.UsageError(f"--parts: unknown {unknown}; valid: {', '.join(names)}.")
    if FLAGS.budget_s <= 0:
        raise app.UsageError(f"--budget_s must be positive, got {FLAGS.budget_s}.")
    parts = [p for p in parts if not FLAGS.parts or p.name in FLAGS.parts]
    # Defaults in the repository, whatever the working folder; paths given, from the working folder.
    workdir = Path(
        FLAGS.workdir or REPO / "exp" / ("gpu_check_smoke" if FLAGS.smoke else "gpu_check")
    ).resolve()
    json_path = Path(FLAGS.json or (workdir / "bench_gpu.json" if FLAGS.smoke else DEFAULT_JSON)).resolve()
    data = Path(FLAGS.data or CIFAR10_SUBSET).resolve()
    options = Options(FLAGS.smoke, FLAGS.budget_s, data, FLAGS.rtol, workdir, json_path)
    log = Log(workdir / "gpu_check.log")
    log(f"GPU check: {', '.join(p.name for p in parts)} within {FLAGS.budget_s} s, results to {json_path}")
    merged = run_parts(parts, options, log)
    gpu_report.summarize(merged, log)
    status, why = exit_status(merged)
    log(f"Wrote {json_path}. Exit status {status}: {why}.")
    write_outputs(merged, options.json_path, log)  # the log with the summary, into $OUT
    return status


if __name__ == "__main__":
    cli.run(main)
