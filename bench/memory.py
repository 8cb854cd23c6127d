"""Memory of the benchmarks' jobs, each in a fresh process, and the inference-scale cases:
the peak host (and device) memory of a training case (bench/training.py's peak MB), of the
query stage writing many models' logits (--case=inference_memory), and the white-box query
stage against the logits-only one (--case=whitebox_query)."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import child_env
from bench.cases import Case, Workload, synthetic_data, synthetic_pixels
from bench.harness import make_runner
from lira import xla_flags
from lira.config import Config, QueryConfig
from lira.run import masks
from lira.training import loop
from lira.training import step as step_lib
from lira.training.models import get_model

# --- Peak memory, each case in a fresh process ---------------------------------------------------


def _proc_status() -> dict[str, int]:
    """{field: kB} of /proc/self/status memory lines (VmRSS, VmHWM, RssAnon, RssFile)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


class PeakMemory:
    """Peak resident memory of this process from `start()` on, in MB.

    `rss_mb`: the kernel's high-water mark VmHWM (exact), reset at start through
    /proc/self/clear_refs, minus the RSS at start. `anon_mb` / `file_mb`: the largest anonymous
    (heap, XLA buffers) and file-backed (memory-mapped files, libraries) parts seen by a 10 ms
    sampler, minus their values at start. `device_mb`: the accelerator's peak_bytes_in_use, on
    backends that keep memory stats (not the CPU).
    """

    def __init__(self):
        import threading

        self._stop, self._lock = threading.Event(), threading.Lock()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> PeakMemory:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        self.start_status = self.peak = _proc_status()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            status = _proc_status()
            with self._lock:
                self.peak = {k: max(v, self.peak[k]) for k, v in status.items()}

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        end, begin = _proc_status(), self.start_status
        out = {
            "rss_mb": (end["VmHWM"] - begin["VmRSS"]) / 1024,
            "anon_mb": (self.peak["RssAnon"] - begin["RssAnon"]) / 1024,
            "file_mb": (self.peak["RssFile"] - begin["RssFile"]) / 1024,
        }
        stats = jax.local_devices()[0].memory_stats() or {}
        out["device_mb"] = stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None
        return out


def child_main(spec: dict) -> dict:
    """Runs one measured job in this (fresh) process; `spec["job"]` is "train" or "inference"."""
    xla_flags.add_cpu_flags()  # as the scripts run: before JAX starts
    if spec["job"] == "train":
        case, workload = (
            Case(**spec["case"]),
            Workload(**{**spec["workload"], "input_shape": tuple(spec["workload"]["input_shape"])}),
        )
        x, y = synthetic_data(workload)
        if case.method == "torch":
            import torch  # noqa: F401  (its import is not part of the case's footprint)
        meter = PeakMemory().start()
        runner = make_runner(case, workload, x, y, spec["model_steps"], spec["loop_models"], spec["augment"],
                             None, synthetic_pixels(workload))  # fmt: skip
        runner.compile()
        runner.run()  # the first run holds the peak: every buffer of a step is live at least once
        return meter.stop()

    from lira.stages import query  # imported before the meter starts: its code is not the footprint

    meter = PeakMemory().start()
    tic = time.perf_counter()
    if spec.get("whitebox"):
        query.query_whitebox(spec["logdir"], QueryConfig(whitebox_queries=spec["queries"]), progress=False)
    else:
        query.query(
            spec["logdir"],
            QueryConfig(queries=spec["queries"], batch_size=spec["batch_size"]),
            progress=False,
        )
    return {**meter.stop(), "wall_s": time.perf_counter() - tic}


def in_child(spec: dict, timeout: float = 900, env: dict | None = None) -> dict:
    """child_main(spec) in a fresh Python process, so that nothing measured before counts."""
    import json
    import subprocess
    import sys

    code = "import json, sys; from bench import memory; print(json.dumps(memory.child_main(json.loads(sys.argv[1]))))"
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **child_env(), **(env or {})},
    )
    if result.returncode:
        raise RuntimeError(f"Memory job {spec.get('case', spec['job'])} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def case_peak_memory(case: Case, workload: Workload, model_steps: int, loop_models: int, augment: str,
                     omp_wait_policy: str = "PASSIVE") -> dict:  # fmt: skip
    spec = {"job": "train", "case": dataclasses.asdict(case), "workload": dataclasses.asdict(workload),
            "model_steps": model_steps, "loop_models": loop_models, "augment": augment}  # fmt: skip
    return in_child(spec, env=case.worker_env(omp_wait_policy))


# --- Inference at scale ---------------------------------------------------------------------------


def make_inference_rundir(logdir, num_models: int, num_examples: int, arch: str = "cnn-tiny",
                          image_shape=(8, 8, 1), num_classes: int = 10, models_per_step: int = 0) -> dict:  # fmt: skip
    """A run directory as experiments/train.py leaves it after 1 epoch, without the training:
    an npz pool of random uint8 images, config.json, keep.npy, labels.npy and one checkpoint per
    slice holding freshly initialised states (what inference costs does not depend on the
    weights' values). Returns the config's flags."""
    from pathlib import Path

    from lira.data import load_dataset
    from lira.run import checkpoint
    from lira.stages import train

    logdir = Path(logdir)
    rng = np.random.default_rng(0)
    npz = logdir / "pool.npz"
    logdir.mkdir(parents=True, exist_ok=True)
    np.savez(npz, x_train=rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8),
             y_train=rng.integers(0, num_classes, num_examples), x_test=rng.integers(0, 256, (8, *image_shape), dtype=np.uint8),
             y_test=np.arange(8) % num_classes, num_classes=num_classes)  # fmt: skip
    run_config = train.resolve(Config().replace(
        dataset=f"npz:{npz}", arch=arch, num_shadows=num_models, epochs=1, models_per_step=models_per_step
    ))  # fmt: skip
    training = run_config.training
    dataset = load_dataset(run_config.data.dataset)
    keep = masks.make_keep(num_models, num_examples, training.pkeep, training.seed)
    train.write_run_files(logdir, run_config, dataset, keep)
    model = get_model(arch, dataset.num_classes)
    spe = step_lib.steps_per_epoch(num_examples, training.pkeep, training.batch_size)
    programs = loop.Programs(model, training, spe, jnp.asarray(dataset.x_train[0]))
    for start in range(0, num_models, training.models_per_step):
        stop = min(start + training.models_per_step, num_models)
        inputs = loop.SliceInputs.place(keep, start, stop)
        checkpoint.save(
            checkpoint.slice_dir(logdir, start, stop), 1, programs.init_slice(inputs, training.seed)
        )
    return run_config.flat()


def whitebox_query(logdir, num_models: int = 8, num_examples: int = 2048, queries: int = 2, arch: str = "cnn32",
                   image_shape=(32, 32, 3)) -> dict:  # fmt: skip
    """The white-box query stage (lira.stages.query.query_whitebox: per-example gradient norms
    and activations) against the logits-only query stage on the same run: each in a fresh process,
    timed with its compiling, and its peak host memory. Returns both and their ratio."""
    make_inference_rundir(logdir, num_models, num_examples, arch=arch, image_shape=image_shape)
    out = {"arch": arch, "num_models": num_models, "num_examples": num_examples, "queries": queries}
    for name, whitebox in (("logits", False), ("whitebox", True)):
        spec = {
            "job": "inference",
            "logdir": str(logdir),
            "queries": queries,
            "batch_size": 256,
            "whitebox": whitebox,
        }
        result = in_child(spec)
        out[name] = {**result, "model_examples_per_s": num_models * num_examples / result["wall_s"]}
    out["whitebox_vs_logits_time"] = out["whitebox"]["wall_s"] / out["logits"]["wall_s"]
    return out


def inference_memory(logdir, num_models: int = 64, num_examples: int = 50_000, queries: int = 18,
                     batch_size: int = 256, models_per_step: int = 0) -> dict:  # fmt: skip
    """Peak host memory of lira.stages.query.query writing num_models x num_examples x queries
    logits, against the size of those logits. The inference runs in a fresh process."""
    tic = time.perf_counter()
    flags = make_inference_rundir(logdir, num_models, num_examples, models_per_step=models_per_step)
    setup_s = time.perf_counter() - tic
    memory = in_child(
        {"job": "inference", "logdir": str(logdir), "queries": queries, "batch_size": batch_size}
    )
    logits_mb = num_models * num_examples * queries * 10 * 4 / 2**20
    return {"num_models": num_models, "num_examples": num_examples, "queries": queries,
            "models_per_step": flags["models_per_step"], "arch": flags["arch"], "batch_size": batch_size,
            "logits_mb": logits_mb, "setup_s": setup_s, **memory}  # fmt: skip
