"""The vectorized trainer on one GPU, time-boxed; bench/gpu_check.sh runs it.

Parts, the most important first, each in a process of its own under a timeout cut from one
budget (--budget_s), with time kept back for the end-to-end part:

    probe             the device and the versions
    wrn28-2/float32   bench/training.py at 1, 16 and 64 models a step, and the jitted loop
    cnn32/float32     the same at 1, 16, 64 and 128
    end_to_end        64 cnn32 models trained on the CIFAR-10 subset with lira's trainer, timed;
                      then models 0 and 63 trained alone, and compared with the vectorized run
    whitebox_query    bench/training.py --case=whitebox_query: the white-box query stage against
                      the logits-only one, 64 cnn32 models (issue 15's cost, never yet on a GPU)
    dp_step           bench/dp.py: the DP-SGD step against the ordinary one, mlp and cnn32, 16
                      models a step, both clippings (issue 16's cost)
    wrn28-2/bfloat16, cnn32/bfloat16

After every part the merged results go to --json (and $OUT when set), so a part that fails or
runs out of time costs only its own figures. Exit status: 0 when every part ran and the check
passed; 1 when the check failed or did not run; 2 when another part failed or ran out of time.

The check compares each model with its single-model run under float32 matmuls at full precision
("highest"). Vectorized and single convolutions then differ only in summation order, but
training amplifies rounding: on an H200 (2026-11-30), after 33 steps, model 0 differed from its
single run by 7.0e-3 of its largest weight, while models 0 and 63 differed by 2.8. So the check
passes when the vectorized run's largest difference from the single runs (params and logits,
relative to each array's largest magnitude) is at most --rtol times the difference between two
models of the run: model i of the vectorized run is model i trained alone, not another model.
The exact equality is the CPU tests' job (tests/test_train.py). The same comparison at the GPU's
default precision (TF32 for float32 matmuls and convolutions on NVIDIA GPUs) is reported alongside.

--smoke: every part at tiny sizes on the CPU, cnn-tiny standing in for cnn32 and mlp-tiny for
wrn28-2 (tests/test_gpu_check.py); its time is nearly all compiling.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from lira import cli, data
from lira.config import TrainingConfig
from lira.run import layout
from lira.training import loop, masks, models
from lira.training import step as step_lib

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "Tiny sizes on the CPU, for the tests.")
flags.DEFINE_string("json", None, "Results (default docs/bench_gpu.json; --smoke: in --workdir).")
flags.DEFINE_string("workdir", None, "Parts' outputs and the log (default exp/gpu_check[_smoke]).")
flags.DEFINE_string("data", None, "The end-to-end part's npz (default data_cache/cifar10_6k.npz).")
flags.DEFINE_integer("budget_s", 480, "Seconds for all parts together.")
flags.DEFINE_list("parts", None, "Parts to run, in their fixed order (default all).")
flags.DEFINE_float("rtol", 1e-2, "Tolerance of the check, relative to the difference between two models.")
flags.DEFINE_enum("child", None, ["probe", "end_to_end"], "Internal: run this part in this process.")
flags.DEFINE_string("child_json", None, "Internal: where the child part writes its results.")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "docs" / "bench_gpu.json"
DEFAULT_DATA = REPO / "data_cache" / "cifar10_6k.npz"  # gpu_check.sh copies it there from ../shared/data
CHECK_PRECISION = "highest"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "absl-py")
MIN_PART_S = 5.0  # a part with less time left than this is skipped


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
    """One process of the check, at most cap_s seconds; while earlier parts run, time is kept
    back for a part with `reserve`. Training bench parts have an arch; the other benchmarks are
    named by `bench` ("whitebox_query" or "dp_step", other_bench_command); the rest run in this
    file."""

    name: str
    cap_s: float
    arch: str | None = None
    models_per_step: str = ""
    dtype: str = "float32"
    reserve: bool = False
    bench: str | None = None


@dataclasses.dataclass(frozen=True)
class EndToEnd:
    """The end-to-end run: num_models trained models_per_step at a time, then check_models alone."""

    arch: str
    num_models: int
    models_per_step: int
    epochs: int
    batch_size: int
    num_examples: int  # the pool (the whole CIFAR-10 subset on the GPU)
    num_test: int
    check_models: tuple[int, ...]


def plan(smoke: bool) -> list[Part]:
    cnn, wrn = ("cnn-tiny", "mlp-tiny") if smoke else ("cnn32", "wrn28-2")
    cnn_steps, wrn_steps = ("2", "2") if smoke else ("1,16,64,128", "1,16,64")
    return [
        Part("probe", 60 if smoke else 90),
        Part(f"{wrn}/float32", 200, wrn, wrn_steps, "float32"),
        Part(f"{cnn}/float32", 120, cnn, cnn_steps, "float32"),
        Part("end_to_end", 200, reserve=True),
        Part("whitebox_query", 120, bench="whitebox_query"),
        Part("dp_step", 120, bench="dp_step"),
        Part(f"{wrn}/bfloat16", 160, wrn, wrn_steps, "bfloat16"),
        Part(f"{cnn}/bfloat16", 100, cnn, cnn_steps, "bfloat16"),
    ]


def end_to_end_run(smoke: bool) -> EndToEnd:
    if smoke:
        return EndToEnd("cnn-tiny", 4, 4, 2, 16, 128, 32, (0, 3))
    return EndToEnd("cnn32", 64, 64, 3, 256, 5170, 1000, (0, 63))


def bench_command(part: Part, smoke: bool, json_path: Path) -> list[str]:
    # Peak memory would take a fresh process per case (minutes on a GPU): --memory=none. The
    # bfloat16 parts leave out the trainer's default case, which is float32 and timed already.
    command = [sys.executable, "-m", "bench.training", f"--arch={part.arch}",
               f"--models_per_step={part.models_per_step}", f"--dtypes={part.dtype}", "--methods=vmap,loop",
               "--conv_impls=xla", "--memory=none", f"--add_default={part.dtype == 'float32'}",
               f"--json={json_path}"]  # fmt: skip
    if smoke:
        command += ["--steps=2", "--batch_size=8", "--num_examples=64", "--repeats=1", "--loop_models=2",
                    "--matmul_size=256"]  # fmt: skip
    return command


def other_bench_command(part: Part, smoke: bool, json_path: Path) -> list[str]:
    """The command of a part that runs bench/training.py's white-box case or bench/dp.py."""
    if part.bench == "whitebox_query":
        sizes = ["--quick", "--arch=cnn-tiny"] if smoke else ["--arch=cnn32", "--whitebox_models=64",
                                                              "--whitebox_examples=4096"]  # fmt: skip
        command = [sys.executable, "-m", "bench.training", "--case=whitebox_query", *sizes]
        return [*command, f"--json={json_path}"]
    sizes = (["--arch=mlp-tiny,cnn-tiny", "--models=2", "--steps=1", "--repeats=1", "--batch_size=16"] if smoke
             else ["--arch=mlp,cnn32", "--models=16", "--steps=4", "--repeats=3"])  # fmt: skip
    return [sys.executable, "-m", "bench.dp", *sizes, f"--json={json_path}"]


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


def run_process(command: list[str], timeout: float, log: Log) -> tuple[str, int | None]:
    """(status, return code) of `command`, its output streamed to the log; "timeout" kills it
    (and whatever it started) after `timeout` seconds."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
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
    started = time.monotonic()
    statuses, results = [], {}
    for index, part in enumerate(parts):
        part_json = options.workdir / (part.name.replace("/", "_") + ".json")
        part_json.unlink(missing_ok=True)
        kept_back = sum(p.cap_s for p in parts[index + 1 :] if p.reserve)
        timeout = min(part.cap_s, started + options.budget_s - time.monotonic() - kept_back)
        status, code, tic = "skipped (no time left)", None, time.monotonic()
        if timeout >= MIN_PART_S:
            log(f"\n=== {part.name} (timeout {timeout:.0f} s) ===")
            status, code = run_process(part_command(part, options, part_json), timeout, log)
        if part_json.is_file():  # a child writes as it goes: a timed-out end_to_end keeps its stages
            results[part.name] = json.loads(part_json.read_text())
        statuses.append({"name": part.name, "status": status, "returncode": code,
                         "wall_s": time.monotonic() - tic, "timeout_s": max(timeout, 0.0)})  # fmt: skip
        merged = merge(parts, results, statuses, options, time.monotonic() - started)
        write_outputs(merged, options.json_path, log)
    return merged


def part_command(part: Part, options: Options, part_json: Path) -> list[str]:
    if part.arch:
        return bench_command(part, options.smoke, part_json)
    if part.bench:
        return other_bench_command(part, options.smoke, part_json)
    return [sys.executable, "-m", "bench.gpu_check", f"--child={part.name}", f"--child_json={part_json}", f"--data={options.data}",
            f"--rtol={options.rtol}", f"--smoke={options.smoke}"]  # fmt: skip


def merge(parts: list[Part], results: dict, statuses: list[dict], options: Options, wall_s: float) -> dict:
    """One report from the parts' results: the bench parts' cases in one list, their ratios,
    rooflines and environments by part, one projection."""
    bench_parts = [p.name for p in parts if p.arch and p.name in results]
    probe = results.get("probe", {})
    return {
        "smoke": options.smoke, "budget_s": options.budget_s, "wall_s": wall_s, "parts": statuses,
        "device": probe.get("device"), "versions": {**versions(), **probe.get("versions", {})},
        "cases": [row for name in bench_parts for row in results[name]["cases"]],
        "ratios": {name: results[name]["ratios"] for name in bench_parts},
        "roofline": {name: results[name]["roofline"] for name in bench_parts},
        "out_of_memory": {name: results[name]["out_of_memory"] for name in bench_parts},
        "environment": {name: results[name]["environment"] for name in bench_parts},
        "projection": merge_projections([results[name]["projection"] for name in bench_parts]),
        "end_to_end": results.get("end_to_end"),
        "whitebox_query": results.get("whitebox_query", {}).get("whitebox_query"),
        "dp_step": results.get("dp_step", {}).get("dp_step"),
    }  # fmt: skip


def merge_projections(projections: list[dict]) -> dict | None:
    """One projection (bench/training.py's lira_paper_projection) from several parts': each
    arch's default from the part that timed it, its best the fastest of all parts."""
    if not projections:
        return None
    out = {**{k: v for k, v in projections[0].items() if k != "archs"}, "archs": {}}
    for projection in projections:
        assert projection["model_examples"] == out["model_examples"], "parts with different batch sizes"
        for arch, values in projection["archs"].items():
            merged = out["archs"].setdefault(arch, {})
            if "default_hours" in values:
                merged.update(default_hours=values["default_hours"], default_case=values["default_case"])
            if values.get("best_hours", float("inf")) < merged.get("best_hours", float("inf")):
                merged.update(best_hours=values["best_hours"], best_case=values["best_case"])
    return out


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


# --- The summary ---------------------------------------------------------------------------------


def summarize(merged: dict, log: Log) -> None:
    device = merged["device"] or {}
    log(f"\n=== GPU check summary: {device.get('kind', 'unknown device')} x{device.get('count', '?')}, "
        f"jax {merged['versions'].get('jax', '?')}, {merged['wall_s']:.0f} s of {merged['budget_s']} ===")  # fmt: skip
    for part in merged["parts"]:
        log(f"{part['name']:20s} {part['status']:24s} {part['wall_s']:6.1f} s of {part['timeout_s']:.0f}")
    rows = merged["cases"]
    loops = {(r["arch"], r["dtype"]): r["model_examples_per_s"] for r in rows if r["method"] == "loop"}
    log(f"\n{'case':34s} {'model-ex/s':>12s} {'vs loop':>8s} {'% peak':>7s} {'compile s':>9s}")
    for row in rows:
        loop = loops.get((row["arch"], row["dtype"]))
        ratio = f"{row['model_examples_per_s'] / loop:8.2f}" if loop else f"{'-':>8s}"
        log(f"{row['name'] + (' *' if row['default'] else ''):34s} {row['model_examples_per_s']:12,.0f} {ratio} "
            f"{100 * row['fraction_of_peak']:7.1f} {row['compile_s']:9.1f}")  # fmt: skip
    log("(* the trainer's default; vs loop: the jitted single-model loop of the same arch and dtype)")
    for archs in merged["out_of_memory"].values():
        for case in (case for cases in archs.values() for case in cases):
            log(f"{case}: out of memory, skipped")
    projection = merged["projection"]
    if projection:
        log(f"\nThe LiRA paper's CIFAR-10 experiment ({projection['models']} models x {projection['epochs']} "
            f"epochs x {projection['examples_in']:,} examples) would take, compiling apart:")  # fmt: skip
        for arch, values in projection["archs"].items():
            at = [f"{values[f'{k}_hours']:,.2f} h at {k} ({values[f'{k}_case']})" for k in ("default", "best")
                  if f"{k}_hours" in values]  # fmt: skip
            log(f"  {arch}: {', '.join(at)}")
    if merged["end_to_end"]:
        summarize_end_to_end(merged["end_to_end"], rows, log)
    for arch, result in (merged["whitebox_query"] or {}).items():
        log(f"\nWhite-box query stage, {result['num_models']} {arch} x {result['num_examples']:,} examples x "
            f"{result['queries']} queries, compiling included: {result['whitebox']['model_examples_per_s']:,.0f} "
            f"model-ex/s, {result['whitebox_vs_logits_time']:.2f}x the logits-only stage's time "
            f"({result['logits']['model_examples_per_s']:,.0f} model-ex/s)")  # fmt: skip
    for arch, result in (merged["dp_step"] or {}).items():
        log(f"DP-SGD step, {arch}, {result['models']} models a step, batch {result['batch_size']}: "
            f"{result['dp_per_example_vs_sgd_time']:.2f}x the ordinary step's time with per-example "
            f"clipping, {result['dp_ghost_vs_sgd_time']:.2f}x with ghost clipping")  # fmt: skip


def summarize_end_to_end(result: dict, rows: list[dict], log: Log) -> None:
    log(f"\nEnd to end: {result['num_models']} {result['arch']} models, {result['models_per_step']} a step, "
        f"{result['epochs']} epochs of {result['steps_per_epoch']} steps (batch {result['batch_size']}) on "
        f"{result['data']} ({result['num_examples']:,} examples)")  # fmt: skip
    vectorized = result.get("vectorized")
    if vectorized:
        log(f"  first epoch {vectorized['first_epoch_s']:.1f} s with compiling; test accuracy "
            f"{vectorized['test_acc_mean']:.3f} (min {vectorized['test_acc_min']:.3f})")  # fmt: skip
        if vectorized["model_examples_per_s"]:
            same = [r for r in rows if r["method"] == "vmap" and r["dtype"] == "float32"
                    and (r["arch"], r["models_per_step"], r["batch_size"])
                    == (result["arch"], result["models_per_step"], result["batch_size"])]  # fmt: skip
            bench = f" (the bench's same step: {same[0]['model_examples_per_s']:,.0f})" if same else ""
            log(f"  later epochs, resumed, with checkpoints and evaluation: "
                f"{vectorized['model_examples_per_s']:,.0f} model-ex/s{bench}")  # fmt: skip
        if vectorized["peak_device_mb"]:
            log(f"  peak device memory {vectorized['peak_device_mb']:,.0f} MB")
    for key in ("default_precision", "check"):
        if key in result:
            c = result[key]
            log(f"  {'check' if key == 'check' else 'default precision'}: models {c['models']} against their "
                f"single-model runs, largest difference relative to each array's largest magnitude: "
                f"params {c['params_rel_diff']:.1e}, logits {c['logits_rel_diff']:.1e}; "
                f"same argmax {100 * c['same_argmax']:.1f}%")  # fmt: skip
    check = result.get("check")
    if check:
        first, second = check["models"][:2]
        log(f"\nCheck {'PASSED' if check['passed'] else 'FAILED'}: precision {check['precision']}, largest "
            f"difference from the single runs {check['worst_rel_diff']:.1e}, at most {check['rtol']:.0e} x the "
            f"{check['between_models_rel_diff']:.1e} between models {first} and {second}")  # fmt: skip


def exit_status(merged: dict, planned: list[str]) -> tuple[int, str]:
    """(status, why): see the module docstring."""
    check = (merged["end_to_end"] or {}).get("check")
    if "end_to_end" in planned and check is None:
        return 1, "the check did not run"
    if check and not check["passed"]:
        return 1, "the check failed"
    unfinished = [p["name"] for p in merged["parts"] if p["status"] != "ok"]
    if unfinished:
        return 2, f"parts not finished: {', '.join(unfinished)}"
    return 0, "every part ran" + (" and the check passed" if check else "")


# --- The parts that run in this file ---------------------------------------------------------------


def probe() -> dict:
    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    device = {
        "platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices),
        "memory_gb": stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None,
        "platform_version": getattr(getattr(devices[0], "client", None), "platform_version", None),
        "environment_info": jax.print_environment_info(return_string=True),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in device.items() if k != "environment_info"}))
    return {"device": device, "versions": {"jax": jax.__version__}}


def end_to_end(run: EndToEnd, data_path: Path, rtol: float, save) -> None:
    """Trains run.num_models models vectorized at the default precision, timed; then, at
    CHECK_PRECISION, vectorized again and run.check_models alone, and compares them (the check);
    then those alone at the default precision, compared too. save(result) after each stage."""
    cache = tempfile.mkdtemp(prefix="lira-gpu-check-cache-")  # resumed and single runs reuse programs
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    dataset, source = load_data(data_path, run)
    steps = step_lib.steps_per_epoch(len(dataset.y_train), 0.5, run.batch_size)
    result = {**dataclasses.asdict(run), "data": source, "num_examples": len(dataset.y_train),
              "steps_per_epoch": steps}  # fmt: skip
    trained = Trained(run, dataset)
    with tempfile.TemporaryDirectory(prefix="lira-gpu-check-") as tmp:
        default, full = Path(tmp, "default"), Path(tmp, CHECK_PRECISION)
        tic = time.perf_counter()
        trained.vectorized(default, stop_after_epochs=1)  # the first epoch compiles
        first_s = time.perf_counter() - tic
        trained.vectorized(default)  # the rest resumes, its programs from the cache
        later_s = time.perf_counter() - tic - first_s
        print(f"vectorized: first epoch {first_s:.1f} s, the other {run.epochs - 1} {later_s:.1f} s")
        result["vectorized"] = vectorized_figures(run, default, steps, first_s, later_s)
        save(result)
        with jax.default_matmul_precision(CHECK_PRECISION):  # the check first: it decides the exit status
            tic = time.perf_counter()
            trained.vectorized(full)
            trained.single(full)
            comparison = compare(full, run, dataset)
        worst = max(comparison["params_rel_diff"], comparison["logits_rel_diff"])
        passed = worst <= rtol * comparison["between_models_rel_diff"]
        result["check"] = {**comparison, "precision": CHECK_PRECISION, "rtol": rtol, "worst_rel_diff": worst,
                           "passed": bool(passed),
                           "wall_s": time.perf_counter() - tic}  # fmt: skip
        print(f"check at precision {CHECK_PRECISION}: {result['check']['wall_s']:.1f} s")
        save(result)
        tic = time.perf_counter()
        trained.single(default)
        result["single"] = {"models": list(run.check_models), "wall_s": time.perf_counter() - tic}
        result["default_precision"] = compare(default, run, dataset)
        print(f"single models at the default precision: {result['single']['wall_s']:.1f} s")
        save(result)
    shutil.rmtree(cache, ignore_errors=True)


class Trained:
    """lira.training.loop.train_models on the run's data, as tests/helpers.py calls it: all models
    vectorized under logdir/vectorized, or each of run.check_models alone under logdir/single."""

    def __init__(self, run: EndToEnd, dataset):
        self.run, self.dataset = run, dataset
        self.keep = masks.make_keep(run.num_models, len(dataset.y_train), 0.5, seed=0)

    def vectorized(self, logdir: Path, stop_after_epochs: int | None = None) -> None:
        self._train(
            logdir / "vectorized", (0, self.run.num_models), self.run.models_per_step, stop_after_epochs
        )

    def single(self, logdir: Path) -> None:
        for i in self.run.check_models:
            self._train(logdir / "single", (i, i + 1), 1)

    def _train(self, logdir, model_ids, models_per_step, stop_after_epochs=None):
        pool = self.dataset
        loop.train_models(
            logdir=logdir, x_train=pool.x_train, y_train=pool.y_train, x_test=pool.x_test, y_test=pool.y_test,
            num_classes=pool.num_classes, keep=self.keep, arch=self.run.arch,
            config=dataclasses.replace(train_config(self.run), models_per_step=models_per_step),
            model_ids=model_ids, progress=False, stop_after_epochs=stop_after_epochs,
        )  # fmt: skip


def load_data(path: Path, run: EndToEnd):
    """(lira.data.Dataset, what it is): the npz's first run.num_examples examples, or as many
    synthetic 32x32x3 images whose class shifts their mean when the npz is not there."""
    if path.is_file():
        dataset = data.load_dataset(f"npz:{path}", pool_size=run.num_examples)
        dataset = dataclasses.replace(dataset, x_test=dataset.x_test[: run.num_test],
                                      y_test=dataset.y_test[: run.num_test])  # fmt: skip
        return dataset, os.path.relpath(path, REPO)
    print(f"{path} is not there: the end-to-end part trains on synthetic images instead.")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, run.num_examples + run.num_test).astype(np.int32)
    x = rng.standard_normal((len(y), 32, 32, 3), dtype=np.float32) + y[:, None, None, None] / 5
    cut = run.num_examples
    return data.Dataset("synthetic", x[:cut], y[:cut], x[cut:], y[cut:], 10), "synthetic images"


def train_config(run: EndToEnd) -> TrainingConfig:
    return TrainingConfig(epochs=run.epochs, batch_size=run.batch_size, eval_every=run.epochs)


def vectorized_figures(run: EndToEnd, logdir: Path, spe: int, first_s: float, later_s: float) -> dict:
    rows = layout.read_jsonl(logdir / "vectorized" / layout.TRAIN_LOG)
    accuracy = [row["test_acc"] for row in rows if "test_acc" in row]
    stats = jax.local_devices()[0].memory_stats() or {}
    work = run.num_models * (run.epochs - 1) * spe * run.batch_size
    return {
        "first_epoch_s": first_s, "later_epochs_s": later_s, "model_examples_per_s": work / later_s if work else None,
        "test_acc_mean": float(np.mean(accuracy)), "test_acc_min": float(np.min(accuracy)),
        "test_acc_max": float(np.max(accuracy)),
        "peak_device_mb": stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None,
    }  # fmt: skip


def compare(logdir: Path, run: EndToEnd, dataset) -> dict:
    """How far each model of the vectorized run is from its single-model run: the largest
    difference of any parameter (or BatchNorm statistic) array, and of the test logits, each
    relative to that array's largest magnitude."""
    config, sample, size = train_config(run), dataset.x_train[0], len(dataset.y_train)
    load = lambda folder: {
        start + offset: jax.tree.map(lambda leaf, offset=offset: leaf[offset], state)
        for start, stop, state in loop.load_slice_states(
            folder, run.arch, dataset.num_classes, config, sample, size
        )  # fmt: skip
        for offset in range(stop - start)
    }
    vectorized, single = load(logdir / "vectorized"), load(logdir / "single")
    model = models.get_model(run.arch, dataset.num_classes)
    predict = jax.jit(lambda state, x: step_lib.predict(model, state, x))
    logits = lambda state: np.asarray(predict(state, dataset.x_test))
    weights = lambda state: (state.params, state.batch_stats)
    rows = []
    for i in run.check_models:
        a, b = logits(vectorized[i]), logits(single[i])
        rows.append({"model": i, "params_rel_diff": relative_difference(weights(vectorized[i]), weights(single[i])),
                     "logits_rel_diff": relative_difference(a, b),
                     "same_argmax": float(np.mean(a.argmax(-1) == b.argmax(-1)))})  # fmt: skip
    first, second = run.check_models[:2]
    return {
        "models": list(run.check_models), "per_model": rows,
        "params_rel_diff": max(r["params_rel_diff"] for r in rows),
        "logits_rel_diff": max(r["logits_rel_diff"] for r in rows),
        "same_argmax": min(r["same_argmax"] for r in rows),
        "between_models_rel_diff": relative_difference(weights(vectorized[first]), weights(vectorized[second])),
    }  # fmt: skip


def relative_difference(a, b) -> float:
    """max over the arrays of pytrees a and b of max|a - b| / max|b|."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)))
    return worst


# --- Entry --------------------------------------------------------------------------------------


def main(argv) -> int:
    del argv
    if FLAGS.child:
        save = functools.partial(layout.save_json, Path(FLAGS.child_json))  # atomic: a kill leaves the last
        if FLAGS.child == "probe":
            save(probe())
        else:
            end_to_end(end_to_end_run(FLAGS.smoke), Path(FLAGS.data or DEFAULT_DATA), FLAGS.rtol, save)
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
    data = Path(FLAGS.data or DEFAULT_DATA).resolve()
    options = Options(FLAGS.smoke, FLAGS.budget_s, data, FLAGS.rtol, workdir, json_path)
    log = Log(workdir / "gpu_check.log")
    log(f"GPU check: {', '.join(p.name for p in parts)} within {FLAGS.budget_s} s, results to {json_path}")
    merged = run_parts(parts, options, log)
    summarize(merged, log)
    status, why = exit_status(merged, [p.name for p in parts])
    log(f"Wrote {json_path}. Exit status {status}: {why}.")
    write_outputs(merged, options.json_path, log)  # the log with the summary, into $OUT
    return status


if __name__ == "__main__":
    cli.run(main)
