"""Shadow-training throughput and memory: the vectorized trainer vs a loop vs PyTorch.

    python -m bench.training --json=harness.json                 # mlp, cnn32 (+ wrn28-2 on GPU)
    python -m bench.training --quick                           # tiny sizes, well under a minute
    python -m bench.training --arch=cnn32 --models_per_step=1,4 --methods=vmap,loop
    python -m bench.training --case=inference_memory           # 64 models x 50,000 x 18 queries
    python -m bench.training --case=whitebox_query             # white-box vs logits-only query, cnn32
    python -m bench.training --case=end_to_end                 # a real training call vs its step

Throughput is in model-examples per second (models x examples per model x steps / seconds),
the median of --repeats timed runs after one warm-up, with every case run once per repeat in a
rotated order so ratios can be taken within a repeat. Compile time is reported apart (a load
from the persistent compilation cache when JAX_COMPILATION_CACHE_DIR names one that already
holds the program, as in the GPU check). Peak memory comes from each case re-run in a fresh
process (see bench.memory.PeakMemory). "% of peak" holds the FLOPs counted from the
architecture (bench/roofline.py) against the datasheet's peak of the case's precision on a GPU,
and against a measured float32 matmul on the CPU. The PyTorch baseline needs
`pip install -r requirements-bench.txt`; without torch it is skipped, and said so.
"""

import functools
import gc
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from absl import app, flags

from bench import cases as bench_cases
from bench import end_to_end, harness, memory, roofline, summary
from lira import cli
from lira.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "case", "train", ["train", "inference_memory", "whitebox_query", "end_to_end"], "What to measure."
)
flags.DEFINE_bool("quick", False, "Tiny models and sizes, for the tests.")
flags.DEFINE_list("arch", None, "Architectures (default mlp,cnn32, and wrn28-2 on a GPU).")
flags.DEFINE_list(
    "models_per_step", ["1", "4", "16", "64"],
    "Models per compiled step of the vmap cases (empty: only the trainer's default, see --add_default).",
)  # fmt: skip
flags.DEFINE_list(
    "methods", ["vmap", "loop", "torch"],
    "Any of vmap (the trainer's step), grad_in_vmap (the step before issue 21), loop, torch.",
)  # fmt: skip
flags.DEFINE_list("conv_impls", ["im2col", "xla"], "Convolution lowerings to time for conv nets.")
flags.DEFINE_list(
    "steps_per_call", ["0"], "Steps in one compiled call of the vmap cases (0: the trainer's default here)."
)
flags.DEFINE_list(
    "dtypes", ["float32"], "Compute dtypes of the JAX cases: float32, bfloat16, or default (the trainer's)."
)
flags.DEFINE_integer("repeats", 3, "Timed runs per case (the median is reported).")
flags.DEFINE_integer("steps", 0, "Model-steps per timed run, rounded up to whole compiled steps (0: auto).")
flags.DEFINE_integer("batch_size", 256, "Examples per model per step.")
flags.DEFINE_integer("num_examples", 4096, "Pool size each model samples its IN half from.")
flags.DEFINE_integer("loop_models", 4, "Models the loop and torch methods train one after another.")
flags.DEFINE_enum("augment", "weak", ["none", "mirror", "weak"], "Training augmentation (images).")
flags.DEFINE_list("torch_layouts", list(bench_cases.TORCH_LAYOUTS), "Memory layouts of PyTorch's conv nets.")
flags.DEFINE_list(
    "torch_dtypes",
    ["float32"],
    "PyTorch's compute: float32, or float16 (autocast, as ML Privacy Meter on a GPU).",
)
flags.DEFINE_list(
    "torch_malloc", list(bench_cases.TORCH_MALLOCS),
    "malloc of the PyTorch worker: glibc's as it comes, as ML Privacy Meter runs, and/or with "
    f"transparent huge pages (GLIBC_TUNABLES={bench_cases.THP_TUNABLE}), as run.sh runs lira.",
)  # fmt: skip
flags.DEFINE_string(
    "torch_omp_wait_policy", "PASSIVE", "OMP_WAIT_POLICY of the PyTorch worker ('' = default)."
)
flags.DEFINE_enum("memory", "all", ["all", "default", "none"], "Which cases get a peak-memory run.")
flags.DEFINE_bool(
    "add_default", True, "Also time the trainer's default case when the other flags leave it out."
)
flags.DEFINE_integer(
    "matmul_size", 0, "Side of the roofline's matmul (0: 8192 on a GPU, 2048 on the CPU, 512 with --quick)."
)
flags.DEFINE_bool("measure_matmul", True, "Measure the matmul (on a GPU the peak is the datasheet's anyway).")
flags.DEFINE_integer("inference_models", 64, "inference_memory: models.")
flags.DEFINE_integer("inference_examples", 50_000, "inference_memory: pool examples.")
flags.DEFINE_integer("inference_queries", 18, "inference_memory: queries per example.")
flags.DEFINE_string(
    "workdir", None, "inference_memory, whitebox_query: where to build runs (default a temp dir)."
)
flags.DEFINE_integer("whitebox_models", 8, "whitebox_query: models.")
flags.DEFINE_integer("whitebox_examples", 2048, "whitebox_query: pool examples.")
flags.DEFINE_integer("whitebox_queries", 2, "whitebox_query: queries per example (image data).")
flags.DEFINE_integer("e2e_examples", 50_000, "end_to_end: pool examples (CIFAR-10's 50,000).")
flags.DEFINE_integer("e2e_test", 10_000, "end_to_end: test examples (CIFAR-10's 10,000).")
flags.DEFINE_integer("e2e_epochs", 3, "end_to_end: epochs of the timed training call.")
flags.DEFINE_integer("e2e_slices", 2, "end_to_end: slices of the trainer's models a step in the call.")
flags.DEFINE_string("json", None, "Write the results here as JSON (after every arch, and at the end).")


def resolve_dtypes(backend: str) -> list[str]:
    """--dtypes with "default" replaced by the trainer's dtype on `backend`, in order, once each."""
    return list(dict.fromkeys(harness.default_dtype(backend) if d == "default" else d for d in FLAGS.dtypes))


def torch_status(backend: str) -> str:
    """Whether the PyTorch baseline can run here (on a GPU: torch with CUDA): "ok", or why not."""
    if importlib.util.find_spec("torch") is None:
        return "torch not importable"
    if backend == "cpu":
        return "ok"
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    if probe.returncode:
        return "torch not importable"
    return "ok" if probe.stdout.strip().endswith("True") else "torch has no CUDA"


def case_grid(arch: str, backend: str, torch_ok: bool) -> list[bench_cases.Case]:
    """The cases for one arch. On the CPU, conv nets stop at 4 models a step unless
    --models_per_step is given explicitly: one conv-net model-step takes about a second there
    and more models a step bought nothing in our measurements, so the full run stays in minutes."""
    is_conv = arch in bench_cases.CONV_ARCHS
    explicit = FLAGS["models_per_step"].present or FLAGS.quick
    dtypes = resolve_dtypes(backend)
    cases = []
    for dtype in dtypes:
        for method, calls in (("vmap", FLAGS.steps_per_call), ("grad_in_vmap", ["1"])):
            for impl in FLAGS.conv_impls if is_conv else [None]:
                for k in sorted({int(k) for k in FLAGS.models_per_step}):
                    if explicit or backend != "cpu" or not is_conv or k <= 4:
                        cases += [bench_cases.Case(arch, method, k, impl, dtype, steps_per_call=int(n) * (method == "vmap"))
                                  for n in calls]  # fmt: skip
        for impl in FLAGS.conv_impls if is_conv else [None]:
            cases.append(bench_cases.Case(arch, "loop", 1, impl, dtype))
    for malloc in FLAGS.torch_malloc:
        for torch_layout in FLAGS.torch_layouts if is_conv else ["nchw"]:
            for dtype in FLAGS.torch_dtypes:
                layout_name = None if torch_layout == "nchw" else torch_layout
                cases.append(bench_cases.Case(arch, "torch", 1, layout_name, dtype, malloc=malloc))
    cases = [c for c in cases if c.method in FLAGS.methods and (c.method != "torch" or torch_ok)]
    defaults = [harness.default_case(arch, backend, dtype) for dtype in dtypes]
    add = [d for d in defaults if FLAGS.add_default and "vmap" in FLAGS.methods and d not in cases]
    return cases + add


def run_arch(arch: str, backend: str, torch_ok: bool) -> tuple[list[dict], dict, dict, list[str]]:
    """Times every case of `arch` that fits in memory; returns the rows, the ratios, the FLOPs
    counted from the architecture (bench/roofline.py) and the cases skipped for want of memory."""
    workload = bench_cases.Workload(bench_cases.WORKLOADS[arch].input_shape, bench_cases.WORKLOADS[arch].num_classes,
                              FLAGS.num_examples, FLAGS.batch_size)  # fmt: skip
    model_steps = FLAGS.steps or (4 if arch in bench_cases.CONV_ARCHS and backend == "cpu" else 64)
    x, y = bench_cases.synthetic_data(workload)
    pixels = bench_cases.synthetic_pixels(workload)  # images: uint8 on the device, as the trainer has them
    runners, compile_s, skipped = {}, {}, []
    for case in case_grid(arch, backend, torch_ok):
        build = functools.partial(harness.make_runner, case, workload, x, y, model_steps, FLAGS.loop_models,
                                  FLAGS.augment, FLAGS.torch_omp_wait_policy, pixels)  # fmt: skip
        runner, compile_s[case] = harness.prepare_runner(build)
        if runner is None:
            print(f"{case.name}: out of memory, skipped")
            skipped.append(case.name)
            gc.collect()
        else:
            runners[case] = runner
    wall, cpu = harness.time_interleaved({c.name: r for c, r in runners.items()}, FLAGS.repeats)
    flops = roofline.arch_flops(arch, workload.input_shape, workload.num_classes)
    default = harness.default_case(arch, backend)
    rows = []
    for case, runner in runners.items():
        work = runner.model_steps * workload.batch_size
        peak = {}
        if FLAGS.memory == "all" or (FLAGS.memory == "default" and case == default):
            peak = memory.case_peak_memory(case, workload, model_steps, FLAGS.loop_models, FLAGS.augment,
                                            FLAGS.torch_omp_wait_policy)  # fmt: skip
        getattr(runner, "close", lambda: None)()
        rate = work / statistics.median(wall[case.name])
        rows.append({
            "arch": arch, "backend": backend, "method": case.method, "models_per_step": case.models_per_step,
            "conv_impl": case.conv_impl, "dtype": case.dtype, "name": case.name,
            "default": case == harness.default_case(arch, backend, case.dtype),
            "precision": roofline.precision_of(case.dtype, backend),
            "model_examples_per_s": rate,
            "model_examples_per_cpu_s": work / statistics.median(cpu[case.name]),
            "peak_mem_mb": peak.get("rss_mb"), "peak_anon_mb": peak.get("anon_mb"),
            "peak_device_mb": peak.get("device_mb"), "compile_s": compile_s[case],
            "times_s": wall[case.name], "cpu_times_s": cpu[case.name], "model_steps_per_run": runner.model_steps,
            "batch_size": workload.batch_size, "models_trained": getattr(runner, "num_models", None),
            "steps_per_call": getattr(runner, "steps_per_call", 1),
            "xla_flops_per_step": runner.flops_per_step(),
            "hlo_convolutions": getattr(runner, "convolutions", dict)(),
            "train_gflops_per_s": flops["train"] * rate / 1e9,
        })  # fmt: skip
    ratios = summary.arch_ratios(rows, wall, runners, default)
    ratios.update(
        {
            f"{k}_cpu": v
            for k, v in summary.arch_ratios(rows, cpu, runners, default).items()
            if "_vs_" in k and not k.endswith("_case")
        }
    )
    return rows, ratios, flops, skipped


def measure_peaks(backend: str, dtypes) -> dict:
    """bench.roofline.peaks for the precisions the cases use (on a GPU all three)."""
    size = FLAGS.matmul_size or (512 if FLAGS.quick else 2048 if backend == "cpu" else 8192)
    wanted = ("fp32", "tf32", "bf16") if backend == "gpu" else tuple(dict.fromkeys(
        roofline.precision_of(d, backend) for d in ["float32", *dtypes]))  # fmt: skip
    return roofline.peaks(backend, jax.devices()[0].device_kind, size, wanted if FLAGS.measure_matmul else ())


def train_main(backend: str, save) -> dict:
    if FLAGS.quick:
        FLAGS.arch = FLAGS.arch or ["mlp-tiny", "cnn-tiny"]
        FLAGS.models_per_step, FLAGS.repeats, FLAGS.steps = [], min(FLAGS.repeats, 2), FLAGS.steps or 4
        FLAGS.conv_impls = ["xla"]  # the default adds im2col where it is the backend's
        FLAGS.batch_size, FLAGS.num_examples = 32, 256
        FLAGS.memory = "default" if FLAGS.memory == "all" else FLAGS.memory
    archs = FLAGS.arch or (["mlp", "cnn32"] + ([] if backend == "cpu" else ["wrn28-2"]))
    peaks = measure_peaks(backend, resolve_dtypes(backend))
    torch = torch_status(backend) if "torch" in FLAGS.methods else "not asked for"
    if torch != "ok" and "torch" in FLAGS.methods:
        print(
            f"{torch} (pip install -r requirements-bench.txt; on a GPU, torch with CUDA): no PyTorch baseline."
        )
    flops, rows, ratios, skipped = {}, [], {}, {}
    train_flops = {}
    out = {"cases": rows, "ratios": ratios, "out_of_memory": skipped, "torch_baseline": torch,
           "projection": summary.lira_paper_projection(rows, FLAGS.batch_size),
           "roofline": {**peaks, "flops": flops, "train_flops_per_example": train_flops,
                        "flops_source": "counted from the architecture (bench/roofline.py): 2 x the multiply-adds "
                        "of every convolution and matmul of the loss's value and gradient, one model, padding taps "
                        "excluded"}}  # fmt: skip
    for arch in archs:
        if not case_grid(arch, backend, torch == "ok"):
            print(f"{arch}: no case to time with --methods={','.join(FLAGS.methods)} here.")
            continue
        arch_rows, ratios[arch], flops[arch], skipped[arch] = run_arch(arch, backend, torch == "ok")
        train_flops[arch] = flops[arch]["train"]
        for r in arch_rows:
            peak = peaks["peak_gflops"].get(r["precision"])
            r["fraction_of_peak"] = r["train_gflops_per_s"] / peak if peak else None
        rows += arch_rows
        out["projection"] = summary.lira_paper_projection(rows, FLAGS.batch_size)
        save(out)  # what is measured so far, should a later arch not finish
    summary.print_table(rows, ratios, peaks, out["projection"])
    return out


def end_to_end_main(backend: str, save) -> dict:
    """--case=end_to_end (bench/end_to_end.py) for each --arch and dtype, at the trainer's
    default models a step unless --models_per_step is given."""
    archs = FLAGS.arch or (["mlp", "cnn32"] + ([] if backend == "cpu" else ["wrn28-2"]))
    sizes = end_to_end.Sizes(FLAGS.e2e_examples, FLAGS.e2e_test, FLAGS.e2e_epochs, FLAGS.e2e_slices,
                             FLAGS.batch_size, FLAGS.repeats)  # fmt: skip
    if FLAGS.quick:
        FLAGS.arch = archs = FLAGS.arch or ["mlp-tiny", "cnn-tiny"]
        sizes = end_to_end.Sizes(256, 64, 2, 2, 32, 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lira-bench-e2e-", dir=FLAGS.workdir) as tmp:
        for arch in archs:
            for dtype in resolve_dtypes(backend):
                default = harness.default_case(arch, backend, dtype)
                counts = [int(k) for k in FLAGS.models_per_step] if FLAGS["models_per_step"].present else []
                for models_per_step in counts or [default.models_per_step]:
                    row = end_to_end.measure(arch, models_per_step, dtype, default.conv_impl, sizes,
                                             Path(tmp) / arch, FLAGS.augment)  # fmt: skip
                    rows.append(
                        {**row, "backend": backend, "default": models_per_step == default.models_per_step}
                    )
                    print(f"{row['name']}: a training call of {row['num_models']} models x {row['epochs']} epochs x "
                          f"{row['steps_per_epoch']} steps: {row['model_examples_per_s']:,.0f} model-ex/s, its step "
                          f"alone {row['step_model_examples_per_s']:,.0f}: {row['end_to_end_vs_step']:.2f}x "
                          f"(repeats {', '.join(f'{r:.2f}' for r in row['ratios'])})", flush=True)  # fmt: skip
                    save({"cases": rows, "end_to_end": rows})
    return {"cases": rows, "end_to_end": rows}


def inference_main() -> dict:
    models, examples = FLAGS.inference_models, FLAGS.inference_examples
    if FLAGS.quick:
        models, examples = min(models, 8), min(examples, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        result = memory.inference_memory(FLAGS.workdir or tmp, models, examples, FLAGS.inference_queries)
    print(f"inference of {models} models x {examples:,} examples x {FLAGS.inference_queries} queries "
          f"({result['models_per_step']} models a step): logits {result['logits_mb']:,.0f} MB on disk; peak RSS "
          f"+{result['rss_mb']:,.0f} MB (anonymous +{result['anon_mb']:,.0f} MB, file-backed "
          f"+{result['file_mb']:,.0f} MB) in {result['wall_s']:.0f} s")  # fmt: skip
    return {"inference_memory": result}


def whitebox_main() -> dict:
    """The white-box query stage against the logits-only one, per --arch (default cnn32)."""
    archs = FLAGS.arch or ["cnn32"]
    models, examples = (4, 256) if FLAGS.quick else (FLAGS.whitebox_models, FLAGS.whitebox_examples)
    out = {}
    for arch in archs:
        shape = (600,) if arch.startswith("mlp") else (8, 8, 3) if FLAGS.quick else (32, 32, 3)
        with tempfile.TemporaryDirectory() as tmp:
            result = memory.whitebox_query(Path(FLAGS.workdir or tmp) / arch, models, examples, 1 if len(shape) == 1
                                            else FLAGS.whitebox_queries, arch, shape)  # fmt: skip
        out[arch] = result
        print(f"{arch}: {models} models x {examples:,} examples x {result['queries']} queries, compiling included: "
              f"logits {result['logits']['model_examples_per_s']:,.0f} model-ex/s (peak RSS "
              f"+{result['logits']['rss_mb']:,.0f} MB), white-box {result['whitebox']['model_examples_per_s']:,.0f} "
              f"model-ex/s (+{result['whitebox']['rss_mb']:,.0f} MB): {result['whitebox_vs_logits_time']:.2f}x the time")  # fmt: skip
    return {"whitebox_query": out}


def _thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"), if it says."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return next((word[1:-1] for word in text.split() if word.startswith("[")), None)


def check_flags() -> None:
    """A mistaken list value is one line naming the flag, before anything is measured."""
    for name, valid in (
        ("torch_layouts", bench_cases.TORCH_LAYOUTS), ("torch_malloc", bench_cases.TORCH_MALLOCS),
        ("methods", bench_cases.METHODS), ("dtypes", ("float32", "bfloat16", "default")),
        ("torch_dtypes", ("float32", "float16")),
    ):  # fmt: skip
        unknown = sorted(set(FLAGS[name].value) - set(valid))
        if unknown:
            raise app.UsageError(f"--{name}: unknown {unknown}; valid: {', '.join(valid)}.")
    bad = [k for k in FLAGS.models_per_step if not k.isdigit() or int(k) < 1]
    if bad:
        raise app.UsageError(f"--models_per_step: {bad} are not positive integers.")
    bad = [k for k in FLAGS.steps_per_call if not k.isdigit()]
    if bad:
        raise app.UsageError(f"--steps_per_call: {bad} are not integers >= 0 (0: the trainer's default).")


def environment(backend: str, started: float, load) -> dict:
    return {
        "backend": backend, "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
        "cpu_count": os.cpu_count(), "loadavg_start": load, "loadavg_end": os.getloadavg(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "transparent_hugepage": _thp_mode(),
        "xla_flags": os.environ.get("XLA_FLAGS"), "wall_s": time.time() - started, "quick": FLAGS.quick,
        "compilation_cache": jax.config.jax_compilation_cache_dir,
    }  # fmt: skip


def main(argv):
    del argv
    check_flags()
    backend = jax.default_backend()
    started, load = time.time(), os.getloadavg()
    # A persistent compilation cache: the one JAX_COMPILATION_CACHE_DIR names (the GPU check's,
    # shared by its parts), else a fresh one for this process and its children. The peak-memory
    # processes and the end-to-end case's training calls then load the programs compiled here
    # instead of compiling them again.
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or tempfile.mkdtemp(prefix="lira-bench-cache-")
    fresh = cache != os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    def save(out: dict, complete: bool = False) -> None:
        if FLAGS.json:
            layout.save_json(Path(FLAGS.json), {**out, "complete": complete,
                                                "environment": environment(backend, started, load)})  # fmt: skip

    out = {
        "train": lambda: train_main(backend, save),
        "end_to_end": lambda: end_to_end_main(backend, save),
        "inference_memory": inference_main,
        "whitebox_query": whitebox_main,
    }[FLAGS.case]()
    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
    save(out, complete=True)
    if FLAGS.json:
        print(f"Wrote {FLAGS.json}")


if __name__ == "__main__":
    cli.run(main)
