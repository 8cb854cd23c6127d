"""The GPU check's report (bench/gpu_check.py): its parts' results merged into one JSON, and the
summary it prints at the end.

The merged JSON (docs/bench/bench_gpu.json) keeps one list, `cases`, of every timed case of every
part (each with its arch, dtype, models_per_step, batch_size and model_examples_per_s, the part
that timed it, and for the JAX steps their optimized HLO's convolutions), the probe's peaks,
each part's ratios, one projection of the LiRA paper's experiment, the end-to-end rows, the
check, and the white-box and DP parts' figures.
"""

from __future__ import annotations


def merge(results: dict, statuses: list[dict], options, wall_s: float, versions: dict) -> dict:
    """One report from the parts' results ({part name: its JSON}, in the parts' order)."""
    probe = results.get("probe", {})
    peaks = probe.get("peaks")
    timed = [name for name, result in results.items() if "cases" in result]
    cases = []
    for name in timed:
        for row in results[name]["cases"]:
            row = {**row, "part": name}
            peak = (peaks or {}).get("peak_gflops", {}).get(row.get("precision"))
            if row.get("train_gflops_per_s") and peak:  # the probe's peak: one for every part
                row["fraction_of_peak"] = row["train_gflops_per_s"] / peak
            cases.append(row)
    flops = {
        arch: f for name in timed for arch, f in results[name].get("roofline", {}).get("flops", {}).items()
    }
    with_ratios = [name for name in timed if results[name].get("ratios")]
    return {
        "smoke": options.smoke, "budget_s": options.budget_s, "wall_s": wall_s, "parts": statuses,
        "device": probe.get("device"), "versions": {**versions, **probe.get("versions", {})},
        "torch": {**probe.get("torch", {}), "baseline": results.get("torch", {}).get("torch_baseline")},
        "cases": cases,
        "roofline": {"peaks": peaks, "flops": flops, "train_flops_per_example": {a: f["train"] for a, f in flops.items()}},
        "ratios": {name: results[name]["ratios"] for name in with_ratios},
        "out_of_memory": {name: results[name].get("out_of_memory") for name in with_ratios},
        "environment": {name: results[name].get("environment") for name in timed},
        "projection": merge_projections([results[n]["projection"] for n in timed if results[n].get("projection")]),
        "end_to_end": results.get("end_to_end", {}).get("end_to_end"),
        "hlo_convolutions": {f"{row['part']}: {row['name']}": row["hlo_convolutions"] for row in cases
                             if row.get("hlo_convolutions")},
        "check": results.get("check"),
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
            if "default_hours" in values and "default_hours" not in merged:
                merged.update(default_hours=values["default_hours"], default_case=values["default_case"])
            if values.get("best_hours", float("inf")) < merged.get("best_hours", float("inf")):
                merged.update(best_hours=values["best_hours"], best_case=values["best_case"])
    return out


def summarize(merged: dict, log) -> None:
    device = merged["device"] or {}
    log(f"\n=== GPU check summary: {device.get('kind', 'unknown device')} x{device.get('count', '?')}, "
        f"jax {merged['versions'].get('jax', '?')}, {merged['wall_s']:.0f} s of {merged['budget_s']} ===")  # fmt: skip
    for part in merged["parts"]:
        log(f"{part['name']:26s} {part['status']:24s} {part['wall_s']:6.1f} s of {part['timeout_s']:.0f}")
    peaks = (merged["roofline"] or {}).get("peaks")
    if peaks:
        measured = ", ".join(f"{p} {v:,.0f}" for p, v in peaks["measured_matmul_gflops"].items())
        sheet = ", ".join(f"{p} {v:,.0f}" for p, v in (peaks["datasheet_gflops"] or {}).items())
        log(f"\nPeaks, GFLOP/s: datasheet (dense) {sheet or 'none for ' + peaks['device_kind']}; measured "
            f"{peaks['matmul_size']}^2 matmul {measured}. % of peak: against the {peaks['peak_source']}.")  # fmt: skip
    for arch, flops in merged["roofline"]["flops"].items():
        log(f"{arch}: {flops['train'] / 1e6:,.1f} MFLOP per training example counted from the architecture "
            f"({flops['train_vs_forward']:.2f}x the forward pass)")  # fmt: skip
    summarize_cases([r for r in merged["cases"] if r["method"] != "end_to_end"], log)
    for arch, ratios in merged["ratios"].items():
        picked = {k: v for k, v in ratios.items() if isinstance(v, float) and not k.endswith("_cpu")}
        if picked:
            log(f"{arch}: " + ", ".join(f"{k}={v:.2f}" for k, v in picked.items()))
    projection = merged["projection"]
    if projection:
        log(f"\nThe LiRA paper's CIFAR-10 experiment ({projection['models']} models x {projection['epochs']} "
            f"epochs x {projection['examples_in']:,} examples) would take, compiling apart:")  # fmt: skip
        for arch, values in projection["archs"].items():
            at = [f"{values[f'{k}_hours']:,.2f} h at {k} ({values[f'{k}_case']})" for k in ("default", "best")
                  if f"{k}_hours" in values]  # fmt: skip
            log(f"  {arch}: {', '.join(at)}")
    for row in merged["end_to_end"] or []:
        log(f"\nEnd to end, {row['name']}: train_models on {row['num_models']} models ({row['slices']} slices), "
            f"{row['epochs']} epochs of {row['steps_per_epoch']} steps, evaluation and checkpoints included: "
            f"{row['model_examples_per_s']:,.0f} model-ex/s; its step alone {row['step_model_examples_per_s']:,.0f}: "
            f"{row['end_to_end_vs_step']:.2f}x")  # fmt: skip
    torch = merged["torch"]
    if torch.get("status") and torch["status"] != "ok":
        log(f"\nPyTorch baseline: {torch['status']}")
    summarize_check((merged["check"] or {}).get("check"), log)
    for arch, result in (merged["whitebox_query"] or {}).items():
        log(f"\nWhite-box query stage, {result['num_models']} {arch} x {result['num_examples']:,} examples x "
            f"{result['queries']} queries, compiling included: {result['whitebox']['model_examples_per_s']:,.0f} "
            f"model-ex/s, {result['whitebox_vs_logits_time']:.2f}x the logits-only stage's time "
            f"({result['logits']['model_examples_per_s']:,.0f} model-ex/s)")  # fmt: skip
    for arch, result in (merged["dp_step"] or {}).items():
        log(f"DP-SGD step, {arch}, {result['models']} models a step, batch {result['batch_size']}: "
            f"{result['dp_per_example_vs_sgd_time']:.2f}x the ordinary step's time with per-example "
            f"clipping, {result['dp_ghost_vs_sgd_time']:.2f}x with ghost clipping")  # fmt: skip


def summarize_cases(rows: list[dict], log) -> None:
    """The table of timed cases: each against the jitted loop of its arch and dtype, its share
    of the peak, and its weight gradients that reach cuDNN's backward-filter kernels."""
    loops = {(r["arch"], r["dtype"]): r["model_examples_per_s"] for r in rows if r["method"] == "loop"}
    log(
        f"\n{'case':40s} {'model-ex/s':>12s} {'vs loop':>8s} {'% peak':>7s} {'compile s':>9s} {'bwd filter':>10s}"
    )
    for row in rows:
        loop = loops.get((row["arch"], row["dtype"]))
        ratio = f"{row['model_examples_per_s'] / loop:8.2f}" if loop else f"{'-':>8s}"
        share = row.get("fraction_of_peak")
        share = f"{100 * share:7.1f}" if share is not None else f"{'-':>7s}"
        compile_s = f"{row['compile_s']:9.1f}" if row.get("compile_s") is not None else f"{'-':>9s}"
        filters = (row.get("hlo_convolutions") or {}).get("cudnn$convBackwardFilter")
        filters = f"{filters:10d}" if filters is not None else f"{'-':>10s}"
        log(f"{row['name'] + (' *' if row['default'] else ''):40s} {row['model_examples_per_s']:12,.0f} {ratio} "
            f"{share} {compile_s} {filters}")  # fmt: skip
    log("(* the trainer's default; vs loop: the jitted single-model loop of the same arch and dtype; bwd filter: "
        "cudnn$convBackwardFilter calls in the optimized HLO, 0 on the CPU)")  # fmt: skip


def summarize_check(check: dict | None, log) -> None:
    if not check:
        return
    first, second = check["models"][:2]
    log(f"\nCheck {'PASSED' if check['passed'] else 'FAILED'}: precision {check['precision']}, float32, largest "
        f"difference of models {check['models']} from their single runs {check['worst_rel_diff']:.1e} (params "
        f"{check['params_rel_diff']:.1e}, logits {check['logits_rel_diff']:.1e}; same argmax "
        f"{100 * check['same_argmax']:.1f}%), at most {check['rtol']:.0e} x the {check['between_models_rel_diff']:.1e} "
        f"between models {first} and {second}")  # fmt: skip
