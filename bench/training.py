"""Shadow-training throughput and memory: the vectorized trainer vs a loop vs PyTorch.

    python -m bench.training --json=harness.json                 # mlp, cnn32 (+ wrn28-2 on GPU)
    python -m bench.training --quick                           # tiny sizes, well under a minute
    python -m bench.training --arch=cnn32 --models_per_step=1,4 --methods=vmap,loop
    python -m bench.training --case=inference_memory           # 64 models x 50,000 x 18 queries
    python -m bench.training --case=whitebox_query             # white-box vs logits-only query, cnn32

Throughput is in model-examples per second (models x examples per model x steps / seconds),
the median of --repeats timed runs after one warm-up, with every case run once per repeat in a
rotated order so ratios can be taken within a repeat. Compile time is reported apart. Peak
memory comes from each case re-run in a fresh process (see bench.harness.PeakMemory). The
PyTorch baseline needs `pip install -r requirements-bench.txt`; without torch it is skipped.
"""

import functools
import gc
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
from absl import app, flags

from bench import cases as bench_cases
from bench import harness
from lira import cli
from lira.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_enum("case", "train", ["train", "inference_memory", "whitebox_query"], "What to measure.")
flags.DEFINE_bool("quick", False, "Tiny models and sizes, for the tests.")
flags.DEFINE_list("arch", None, "Architectures (default mlp,cnn32, and wrn28-2 on a GPU).")
flags.DEFINE_list("models_per_step", ["1", "4", "16", "64"], "Models per compiled step of the vmap cases.")
flags.DEFINE_list("methods", list(bench_cases.METHODS), "Any of vmap, loop, torch.")
flags.DEFINE_list("conv_impls", ["im2col", "xla"], "Convolution lowerings to time for conv nets.")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes of the JAX cases (float32, bfloat16).")
flags.DEFINE_integer("repeats", 3, "Timed runs per case (the median is reported).")
flags.DEFINE_integer("steps", 0, "Model-steps per timed run, rounded up to whole compiled steps (0: auto).")
flags.DEFINE_integer("batch_size", 256, "Examples per model per step.")
flags.DEFINE_integer("num_examples", 4096, "Pool size each model samples its IN half from.")
flags.DEFINE_integer("loop_models", 4, "Models the loop and torch methods train one after another.")
flags.DEFINE_enum("augment", "weak", ["none", "mirror", "weak"], "Training augmentation (images).")
flags.DEFINE_list("torch_layouts", list(bench_cases.TORCH_LAYOUTS), "Memory layouts of PyTorch's conv nets.")
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
flags.DEFINE_integer("matmul_size", 0, "Side of the roofline's matmul (0: 512 with --quick, else 2048).")
flags.DEFINE_integer("inference_models", 64, "inference_memory: models.")
flags.DEFINE_integer("inference_examples", 50_000, "inference_memory: pool examples.")
flags.DEFINE_integer("inference_queries", 18, "inference_memory: queries per example.")
flags.DEFINE_string(
    "workdir", None, "inference_memory, whitebox_query: where to build runs (default a temp dir)."
)
flags.DEFINE_integer("whitebox_models", 8, "whitebox_query: models.")
flags.DEFINE_integer("whitebox_examples", 2048, "whitebox_query: pool examples.")
flags.DEFINE_integer("whitebox_queries", 2, "whitebox_query: queries per example (image data).")
flags.DEFINE_string("json", None, "Write the results here as JSON.")


def case_grid(arch: str, backend: str) -> list[bench_cases.Case]:
    """The cases for one arch. On the CPU, conv nets stop at 4 models a step unless
    --models_per_step is given explicitly: one conv-net model-step takes about a second there
    and more models a step bought nothing in our measurements, so the full run stays in minutes."""
    is_conv = arch in bench_cases.CONV_ARCHS
    explicit = FLAGS["models_per_step"].present or FLAGS.quick
    cases = []
    for dtype in FLAGS.dtypes:
        for impl in FLAGS.conv_impls if is_conv else [None]:
            for k in sorted({int(k) for k in FLAGS.models_per_step}):
                if explicit or backend != "cpu" or not is_conv or k <= 4:
                    cases.append(bench_cases.Case(arch, "vmap", k, impl, dtype))
        for impl in FLAGS.conv_impls if is_conv else [None]:
            cases.append(bench_cases.Case(arch, "loop", 1, impl, dtype))
    for malloc in FLAGS.torch_malloc:
        for torch_layout in FLAGS.torch_layouts if is_conv else ["nchw"]:
            cases.append(
                bench_cases.Case(
                    arch, "torch", 1, None if torch_layout == "nchw" else torch_layout, malloc=malloc
                )
            )
    cases = [c for c in cases if c.method in FLAGS.methods]
    if "torch" in FLAGS.methods and importlib.util.find_spec("torch") is None:
        print("torch is not installed (pip install -r requirements-bench.txt): no PyTorch baseline.")
        cases = [c for c in cases if c.method != "torch"]
    default = harness.default_case(arch, backend)
    add = FLAGS.add_default and "vmap" in FLAGS.methods and default not in cases
    return cases + ([default] if add else [])


def run_arch(arch: str, backend: str) -> tuple[list[dict], dict, float | None, list[str]]:
    """Times every case of `arch` that fits in memory; returns the rows, the ratios, training FLOPs
    per example and the names of the cases skipped for want of memory."""
    workload = bench_cases.Workload(bench_cases.WORKLOADS[arch].input_shape, bench_cases.WORKLOADS[arch].num_classes,
                              FLAGS.num_examples, FLAGS.batch_size)  # fmt: skip
    model_steps = FLAGS.steps or (4 if arch in bench_cases.CONV_ARCHS and backend == "cpu" else 64)
    x, y = bench_cases.synthetic_data(workload)
    runners, compile_s, skipped = {}, {}, []
    for case in case_grid(arch, backend):
        build = functools.partial(harness.make_runner, case, workload, x, y, model_steps, FLAGS.loop_models,
                                  FLAGS.augment, FLAGS.torch_omp_wait_policy)  # fmt: skip
        runner, compile_s[case] = harness.prepare_runner(build)
        if runner is None:
            print(f"{case.name}: out of memory, skipped")
            skipped.append(case.name)
            gc.collect()
        else:
            runners[case] = runner
    wall, cpu = harness.time_interleaved({c.name: r for c, r in runners.items()}, FLAGS.repeats)
    per_example = harness.train_flops_per_example(arch, workload)
    default = harness.default_case(arch, backend)
    rows = []
    for case, runner in runners.items():
        work = runner.model_steps * workload.batch_size
        memory = {}
        if FLAGS.memory == "all" or (FLAGS.memory == "default" and case == default):
            memory = harness.case_peak_memory(case, workload, model_steps, FLAGS.loop_models, FLAGS.augment,
                                            FLAGS.torch_omp_wait_policy)  # fmt: skip
        getattr(runner, "close", lambda: None)()
        rows.append({
            "arch": arch, "backend": backend, "method": case.method, "models_per_step": case.models_per_step,
            "conv_impl": case.conv_impl, "dtype": case.dtype, "name": case.name, "default": case == default,
            "model_examples_per_s": work / statistics.median(wall[case.name]),
            "model_examples_per_cpu_s": work / statistics.median(cpu[case.name]),
            "peak_mem_mb": memory.get("rss_mb"), "peak_anon_mb": memory.get("anon_mb"),
            "peak_device_mb": memory.get("device_mb"), "compile_s": compile_s[case],
            "times_s": wall[case.name], "cpu_times_s": cpu[case.name], "model_steps_per_run": runner.model_steps,
            "batch_size": workload.batch_size, "models_trained": getattr(runner, "num_models", None),
            "xla_flops_per_step": runner.flops_per_step(),
            "train_gflops_per_s": per_example * work / statistics.median(wall[case.name]) / 1e9 if per_example else None,
        })  # fmt: skip
    ratios = arch_ratios(rows, wall, runners, default)
    ratios.update(
        {
            f"{k}_cpu": v
            for k, v in arch_ratios(rows, cpu, runners, default).items()
            if "_vs_" in k and not k.endswith("_case")
        }
    )
    return rows, ratios, per_example, skipped


def arch_ratios(rows, times, runners, default) -> dict:
    """Throughput ratios, each the median over repeats of a ratio taken within one repeat;
    "best" (of the JAX cases) and the loop and torch cases compared against are the fastest by
    wall-clock; default_vs_torch_<layout> compares with each PyTorch layout."""
    by_name = {c.name: c for c in runners}
    speed = {r["name"]: r["model_examples_per_s"] for r in rows}

    def ratio(a, b):
        ca, cb = by_name[a], by_name[b]
        return harness.paired_ratio(times[a], runners[ca].model_steps, times[b], runners[cb].model_steps)

    fastest = lambda method: max(
        (n for n in speed if by_name[n].method == method), key=speed.get, default=None
    )
    ours = [n for n in speed if by_name[n].method != "torch"]
    out = {
        "default": default.name if default.name in speed else None,
        "best": max(ours, key=speed.get, default=None),
    }
    for label, name in (("default", out["default"]), ("best", out["best"])):
        for other in ("loop", "torch"):
            if name and fastest(other):
                out[f"{label}_vs_{other}"] = ratio(name, fastest(other))
                out[f"{label}_vs_{other}_case"] = fastest(other)
    torch_cases = [n for n in speed if by_name[n].method == "torch"]
    for name in torch_cases if len(torch_cases) > 1 and out["default"] else []:
        case = by_name[name]
        suffix = "_thp" if case.malloc == "thp" else ""
        out[f"default_vs_torch_{case.conv_impl or 'nchw'}{suffix}"] = ratio(out["default"], name)
    for name, case in by_name.items():
        if case.method == "vmap" and case.conv_impl == "im2col":
            twin = bench_cases.Case(case.arch, "vmap", case.models_per_step, "xla", case.dtype).name
            if twin in speed:
                out[f"im2col_vs_xla_x{case.models_per_step}"] = ratio(name, twin)
    return out


def print_table(rows, ratios, roofline, projection) -> None:
    print(f"\n{'case':32s} {'model-ex/s':>11s} {'per CPU-s':>10s} {'GFLOP/s':>8s} {'%peak':>6s} "
          f"{'compile s':>9s} {'peak MB':>8s}")  # fmt: skip
    for r in rows:
        mem = f"{r['peak_mem_mb']:8.0f}" if r["peak_mem_mb"] is not None else f"{'-':>8s}"
        comp = f"{r['compile_s']:9.1f}" if r["compile_s"] is not None else f"{'-':>9s}"
        gflops = r.get("train_gflops_per_s")
        perf = f"{gflops:8.1f} {100 * r['fraction_of_peak']:6.1f}" if gflops else f"{'-':>8s} {'-':>6s}"
        star = " *" if r["default"] else ""
        print(f"{r['name'] + star:32s} {r['model_examples_per_s']:11,.0f} {r['model_examples_per_cpu_s']:10,.0f} "
              f"{perf} {comp} {mem}")  # fmt: skip
    print("(* = the trainer's default on this backend)")
    for arch, values in ratios.items():
        print(
            f"{arch}: "
            + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        )
    peaks = ", ".join(f"{d} {v:,.0f}" for d, v in roofline["peak_matmul_gflops_by_dtype"].items())
    print(f"roofline: matmul peak GFLOP/s ({roofline['matmul_size']}^2): {peaks}")
    print(
        f"the LiRA paper's CIFAR-10 experiment ({projection['models']} models x {projection['epochs']} epochs x "
        f"{projection['examples_in']:,} examples, {projection['model_examples']:,} model-examples) would take:"
    )
    for arch, value in projection["archs"].items():
        times = ", ".join(f"{value[f'{k}_hours']:,.2f} h at {k} ({value[f'{k}_case']})"
                          for k in ("default", "best") if f"{k}_hours" in value)  # fmt: skip
        print(f"  {arch}: {times}")


def train_main(backend: str) -> dict:
    if FLAGS.quick:
        FLAGS.arch = FLAGS.arch or ["mlp-tiny", "cnn-tiny"]
        FLAGS.models_per_step, FLAGS.repeats, FLAGS.steps = [], min(FLAGS.repeats, 2), FLAGS.steps or 4
        FLAGS.conv_impls = ["xla"]  # the loop's native conv gives the FLOP count; the default adds im2col
        FLAGS.batch_size, FLAGS.num_examples = 32, 256
        FLAGS.memory = "default" if FLAGS.memory == "all" else FLAGS.memory
    archs = FLAGS.arch or (["mlp", "cnn32"] + ([] if backend == "cpu" else ["wrn28-2"]))
    size = FLAGS.matmul_size or (512 if FLAGS.quick else 2048)
    dtypes = sorted({"float32", *FLAGS.dtypes})
    # The matmul peak is sampled before and after every arch, as the load on a shared machine drifts.
    sample = lambda: {dtype: harness.matmul_peak_flops(size, dtype=dtype) / 1e9 for dtype in dtypes}
    samples = [sample()]
    per_example, rows, ratios, skipped = {}, [], {}, {}
    for arch in archs:
        arch_rows, ratios[arch], per_example[arch], skipped[arch] = run_arch(arch, backend)
        samples.append(sample())
        rows += arch_rows
    peaks = {dtype: statistics.median(s[dtype] for s in samples) for dtype in dtypes}
    roofline = {"matmul_size": size, "peak_matmul_gflops": peaks["float32"], "peak_matmul_gflops_by_dtype": peaks,
                "peak_matmul_gflops_samples": [s["float32"] for s in samples], "train_flops_per_example": per_example,
                "flops_source": "XLA cost analysis of one model's real training step (native conv): "
                                "forward, backward and optimizer, about 3x the forward"}  # fmt: skip
    for r in rows:  # against the matmul peak of the case's own dtype (PyTorch's: float32)
        r["fraction_of_peak"] = (r["train_gflops_per_s"] or 0) / peaks[r["dtype"]]
    roofline["best_fraction_of_peak"] = {
        arch: max(r["fraction_of_peak"] for r in rows if r["arch"] == arch) for arch in archs
    }
    projection = lira_paper_projection(rows, FLAGS.batch_size)
    print_table(rows, ratios, roofline, projection)
    return {"cases": rows, "ratios": ratios, "roofline": roofline, "projection": projection,
            "out_of_memory": skipped}  # fmt: skip


def lira_paper_projection(rows, batch_size: int) -> dict:
    """Hours the LiRA paper's CIFAR-10 experiment (harness.LIRA_PAPER_CIFAR10) would take at each
    arch's measured rates, for the trainer's default and the fastest JAX case; compilation, once
    per slice of models, is not included. The paper's models are WRN-28-2; the other archs say
    what the same number of model-examples would cost with them."""
    work = harness.model_examples(batch_size, **harness.LIRA_PAPER_CIFAR10)
    out = {**harness.LIRA_PAPER_CIFAR10, "batch_size": batch_size, "model_examples": work, "archs": {}}
    for arch in dict.fromkeys(r["arch"] for r in rows):
        ours = [r for r in rows if r["arch"] == arch and r["method"] != "torch"]
        picks = {"default": next((r for r in ours if r["default"]), None),
                 "best": max(ours, key=lambda r: r["model_examples_per_s"], default=None)}  # fmt: skip
        for label, row in picks.items():
            if row is not None:
                out["archs"].setdefault(arch, {})[f"{label}_hours"] = (
                    work / row["model_examples_per_s"] / 3600
                )
                out["archs"][arch][f"{label}_case"] = row["name"]
    return out


def inference_main() -> dict:
    models, examples = FLAGS.inference_models, FLAGS.inference_examples
    if FLAGS.quick:
        models, examples = min(models, 8), min(examples, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        result = harness.inference_memory(FLAGS.workdir or tmp, models, examples, FLAGS.inference_queries)
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
            result = harness.whitebox_query(Path(FLAGS.workdir or tmp) / arch, models, examples, 1 if len(shape) == 1
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


def main(argv):
    del argv
    for name, valid in (
        ("torch_layouts", bench_cases.TORCH_LAYOUTS),
        ("torch_malloc", bench_cases.TORCH_MALLOCS),
    ):
        unknown = sorted(set(FLAGS[name].value) - set(valid))
        if unknown:
            raise app.UsageError(f"--{name}: unknown {unknown}; valid: {', '.join(valid)}.")
    backend = jax.default_backend()
    started = time.time()
    # A fresh compilation cache: the figures here still include compiling, while the peak-memory
    # processes load the programs compiled here instead of compiling them again (faster, and
    # their peak is then the training's, not the compiler's).
    cache = tempfile.mkdtemp(prefix="lira-bench-cache-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    load = os.getloadavg()
    out = {
        "train": lambda: train_main(backend),
        "inference_memory": inference_main,
        "whitebox_query": whitebox_main,
    }[FLAGS.case]()
    out["environment"] = {
        "backend": backend, "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
        "cpu_count": os.cpu_count(), "loadavg_start": load, "loadavg_end": os.getloadavg(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "transparent_hugepage": _thp_mode(),
        "xla_flags": os.environ.get("XLA_FLAGS"), "wall_s": time.time() - started, "quick": FLAGS.quick,
    }  # fmt: skip
    shutil.rmtree(cache, ignore_errors=True)
    if FLAGS.json:
        layout.save_json(Path(FLAGS.json), out)
        print(f"Wrote {FLAGS.json}")


if __name__ == "__main__":
    cli.run(main)
