"""What bench/training.py derives from its timed cases: the ratios between them, the projection
of the LiRA paper's experiment, and the printed table."""

from __future__ import annotations

import dataclasses

from bench import cases as bench_cases
from bench import harness


def arch_ratios(rows, times, runners, default) -> dict:
    """Throughput ratios, each the median over repeats of a ratio taken within one repeat.
    "best" (of the JAX cases) and the loop and torch cases compared against are the fastest by
    wall-clock; default_vs_torch_<layout> compares with each PyTorch layout. The default of
    another dtype than float32 is held against the loop of its own dtype, under keys that
    start with the dtype (bfloat16_default_vs_loop); grad_in_vmap_x<k> is the trainer's step
    over the step with the gradient inside the vmap, at k models a step."""
    by_name = {c.name: c for c in runners}
    speed = {r["name"]: r["model_examples_per_s"] for r in rows}

    def ratio(a, b):
        ca, cb = by_name[a], by_name[b]
        return harness.paired_ratio(times[a], runners[ca].model_steps, times[b], runners[cb].model_steps)

    def fastest(method, dtype=None):
        names = [n for n in speed if by_name[n].method == method and dtype in (None, by_name[n].dtype)]
        return max(names, key=speed.get, default=None)

    ours = [n for n in speed if by_name[n].method != "torch"]
    out = {
        "default": default.name if default.name in speed else None,
        "best": max(ours, key=speed.get, default=None),
    }
    for label, name in (("default", out["default"]), ("best", out["best"])):
        for other in ("loop", "torch"):
            dtype = default.dtype if (label, other) == ("default", "loop") else None  # a loop of its dtype
            if name and fastest(other, dtype):
                out[f"{label}_vs_{other}"] = ratio(name, fastest(other, dtype))
                out[f"{label}_vs_{other}_case"] = fastest(other, dtype)
    for name, case in by_name.items():
        if (
            case.method == "vmap"
            and case.dtype != "float32"
            and case == dataclasses.replace(default, dtype=case.dtype)
        ):
            if fastest("loop", case.dtype):
                out[f"{case.dtype}_default_vs_loop"] = ratio(name, fastest("loop", case.dtype))
        old = dataclasses.replace(case, method="grad_in_vmap").name
        if case.method == "vmap" and old in speed:
            out[f"vmap_vs_grad_in_vmap_x{case.models_per_step}{_suffix(case, 'xla')}"] = ratio(name, old)
    torch_cases = [n for n in speed if by_name[n].method == "torch"]
    for name in torch_cases if len(torch_cases) > 1 and out["default"] else []:
        case = by_name[name]
        suffix = ("_thp" if case.malloc == "thp" else "") + (
            "" if case.dtype == "float32" else f"_{case.dtype}"
        )
        out[f"default_vs_torch_{case.conv_impl or 'nchw'}{suffix}"] = ratio(out["default"], name)
    for name, case in by_name.items():
        if case.method == "vmap" and case.conv_impl == "im2col":
            twin = bench_cases.Case(case.arch, "vmap", case.models_per_step, "xla", case.dtype).name
            if twin in speed:
                out[f"im2col_vs_xla_x{case.models_per_step}{_suffix(case, 'im2col')}"] = ratio(name, twin)
    return out


def _suffix(case: bench_cases.Case, usual_impl: str) -> str:
    """What tells a ratio's key apart from the plain case's: _<impl> unless the case's lowering
    is the usual one (or none), then _<dtype> unless float32."""
    parts = [case.conv_impl] if case.conv_impl not in (None, usual_impl) else []
    return "".join(f"_{p}" for p in parts + ([] if case.dtype == "float32" else [case.dtype]))


def print_table(rows, ratios, peaks, projection) -> None:
    print(f"\n{'case':36s} {'model-ex/s':>11s} {'per CPU-s':>10s} {'GFLOP/s':>8s} {'%peak':>6s} "
          f"{'compile s':>9s} {'peak MB':>8s}")  # fmt: skip
    for r in rows:
        mem = f"{r['peak_mem_mb']:8.0f}" if r["peak_mem_mb"] is not None else f"{'-':>8s}"
        comp = f"{r['compile_s']:9.1f}" if r["compile_s"] is not None else f"{'-':>9s}"
        share = f"{100 * r['fraction_of_peak']:6.1f}" if r["fraction_of_peak"] is not None else f"{'-':>6s}"
        star = " *" if r["default"] else ""
        print(f"{r['name'] + star:36s} {r['model_examples_per_s']:11,.0f} {r['model_examples_per_cpu_s']:10,.0f} "
              f"{r['train_gflops_per_s']:8.1f} {share} {comp} {mem}")  # fmt: skip
    print("(* = the trainer's default on this backend)")
    for arch, values in ratios.items():
        print(
            f"{arch}: "
            + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        )
    print_peaks(peaks)
    print(
        f"the LiRA paper's CIFAR-10 experiment ({projection['models']} models x {projection['epochs']} epochs x "
        f"{projection['examples_in']:,} examples, {projection['model_examples']:,} model-examples) would take:"
    )
    for arch, value in projection["archs"].items():
        times = ", ".join(f"{value[f'{k}_hours']:,.2f} h at {k} ({value[f'{k}_case']})"
                          for k in ("default", "best") if f"{k}_hours" in value)  # fmt: skip
        print(f"  {arch}: {times}")


def print_peaks(peaks: dict) -> None:
    measured = ", ".join(f"{p} {v:,.0f}" for p, v in (peaks["measured_matmul_gflops"] or {}).items())
    sheet = ", ".join(f"{p} {v:,.0f}" for p, v in (peaks["datasheet_gflops"] or {}).items())
    measured = f"measured {peaks['matmul_size']}^2 matmul: {measured}" if measured else "no matmul measured"
    print(f"% of peak: FLOPs counted from the architecture against the {peaks['peak_source']} (GFLOP/s); "
          f"datasheet: {sheet or 'none for ' + peaks['device_kind']}; {measured}")  # fmt: skip


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
