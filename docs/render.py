"""The README's and the docs' tables of measured figures, rendered from the JSON that holds them.

    .venv/bin/python docs/render.py           # rewrite every block in place
    .venv/bin/python docs/render.py --check   # exit 1 naming each block that is out of sync

A measured figure lives in one file (docs/bench/*.json, docs/results/<topic>/*.json). The
Markdown (README.md, docs/**/*.md) shows it between two marker comments

    <!-- render:NAME -->
    (written by this script)
    <!-- /render -->

where NAME is a key of RENDERERS. A renderer reads only the JSON files it names, so a JSON that
changes without a re-render fails `--check` (tests/test_render.py, so CI fails too). A new
table: a renderer below, the two markers where the table goes, then this script. Its numbers are
formatted by the report's own lira.report.tables.percent, so a rendered table rounds as the
report does; run it with the project's environment (.venv/bin/python docs/render.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from lira.report.tables import percent  # the report's own rounding: one rule for every table

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- render:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /render -->", re.DOTALL)
RENDERERS: dict[str, tuple[tuple[str, ...], object]] = {}


def renderer(name: str, *sources: str):
    """Registers `function(*jsons) -> Markdown` as block NAME, reading `sources` (repository paths)."""

    def register(function):
        RENDERERS[name] = (sources, function)
        return function

    return register


# ---- formatting ----


def count(value: float) -> str:
    """A rate or a count, rounded: 64,364."""
    return f"{round(value):,}"


def times(value: float) -> str:
    """A ratio: 2.57x, 86.5x."""
    return f"{value:.3g}x" if abs(value) >= 10 else f"{value:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---- attack results (a run's report/metrics.json) ----


def _level_name(level: str) -> str:
    return f"TPR @ {100 * float(level):g}% FPR"


def attack_table(metrics: dict, attacks: list[str], levels: list[str]) -> str:
    """AUC and TPR at each FPR level with their 95% intervals (targets and examples resampled)."""
    rows = []
    for name in attacks:
        entry = metrics["attacks"][name]
        ci = (entry.get("ci95") or {}).get("both") or {}
        auc = f"{entry['auc']:.3f}"
        if ci.get("auc"):
            auc += f" [{ci['auc'][0]:.3f}, {ci['auc'][1]:.3f}]"
        tpr_ci = ci.get("tpr_at_fpr") or {}
        rows.append(
            [name, auc, *[percent(entry["tpr_at_fpr"][level], tpr_ci.get(level)) for level in levels]]
        )
    return table(["attack", "AUC", *map(_level_name, levels)], rows)


def run_summary(metrics: dict) -> str:
    models, first = metrics["models"], next(iter(metrics["attacks"].values()))
    queries = metrics["num_queries"]
    return (
        f"{metrics['num_models']} models ({100 * models['train_acc']:.1f}% accuracy on their own training "
        f"examples, {100 * models['test_acc']:.1f}% test accuracy), {queries} "
        f"{'query' if queries == 1 else 'queries'} an example; {metrics['num_targets']} targets pooled "
        f"({first['num_nonmembers']:,} non-member and {first['num_members']:,} member scores). Brackets: 95% "
        "bootstrap intervals over targets and examples."
    )


@renderer("demo", "docs/results/demo/metrics.json")
def demo(metrics):
    attacks = ["loss", "lira_online", "lira_online_fixed_var", "rmia_online"]
    return run_summary(metrics) + "\n\n" + attack_table(metrics, attacks, ["0.001", "0.01"])


@renderer("cifar10_cpu", "docs/results/cifar10_cpu/metrics.json")
def cifar10_cpu(metrics):
    attacks = ["loss", "shokri", "lira_online", "lira_online_fixed_var", "rmia_online"]
    return run_summary(metrics) + "\n\n" + attack_table(metrics, attacks, ["0.0001", "0.001", "0.01"])


DP_MNIST_1K = ("batch32_ordinary", "batch32_sigma1", "batch256_sigma1", "batch256_eps68.51")


@renderer(
    "dp_mnist_1k",
    *[f"docs/results/dp_mnist_1k/{run}/{name}.json" for run in DP_MNIST_1K for name in ("config", "metrics")],
)
def dp_mnist_1k(*files):
    """One row a run: how it trained (its config.json), and from its metrics.json the accuracy,
    the accounted epsilon, the largest empirical bound and the best TPR at 0.1% FPR over the attacks."""
    rows = []
    for config, metrics in zip(files[::2], files[1::2]):
        flags, dp = config["flags"], config.get("dp")
        training = f"batch {flags['batch_size']}, lr {flags['lr']:g}"
        if dp is None:
            training, epsilon = f"ordinary, {training}", "none"
        else:
            training = f"DP-SGD, {training}, sigma {dp['noise_multiplier']:.3g}"
            if flags.get("dp_target_epsilon"):
                training += f" (`--dp_target_epsilon={flags['dp_target_epsilon']:g}`)"
            epsilon = f"{dp['epsilon']:.3g}"
        attacks = metrics["attacks"]
        bound = max(attacks, key=lambda name: attacks[name]["epsilon_lower_bound"])
        best = max(attacks, key=lambda name: attacks[name]["tpr_at_fpr"]["0.001"])
        bound_value = attacks[bound]["epsilon_lower_bound"]
        rows.append(
            [training, f"{100 * metrics['models']['test_acc']:.1f}%", f"{100 * metrics['models']['train_acc']:.1f}%",
             epsilon,
             f"{bound_value:.2f} ({bound})" if bound_value > 0 else "0 (every attack)",
             f"{percent(attacks[best]['tpr_at_fpr']['0.001'])} ({best})"]
        )  # fmt: skip
    header = ["training", "test accuracy", "accuracy on own training examples", "accounted epsilon",
              "empirical lower bound (attack)",
              "best TPR at 0.1% FPR, every pool example (attack)"]  # fmt: skip
    return table(header, rows)


# ---- benchmarks (docs/bench/) ----


def _default_ratio(ratios: dict, key: str, per_cpu_second: bool = False) -> str:
    value = ratios.get(f"default_vs_{key}")
    if value is None:
        return "(no convolutions)"
    if per_cpu_second:
        return f"{times(value)} ({times(ratios[f'default_vs_{key}_cpu'])} per CPU-second)"
    return times(value)


def _case(bench: dict, name: str) -> dict:
    return next(case for case in bench["cases"] if case["name"] == name)


@renderer("bench_cpu_default", "docs/bench/bench_cpu.json")
def bench_cpu_default(bench):
    rows = []
    for arch, ratios in bench["ratios"].items():
        rate = _case(bench, ratios["default"])["model_examples_per_s"]
        rows.append(
            [f"{arch} (`{ratios['default']}`)", count(rate), times(ratios["default_vs_loop"]),
             _default_ratio(ratios, "torch_nchw"), _default_ratio(ratios, "torch_channels_last")]
        )  # fmt: skip
    header = [
        "arch (default case)",
        "model-ex/s",
        "vs jitted loop",
        "vs PyTorch NCHW",
        "vs PyTorch channels_last",
    ]
    return table(header, rows)


@renderer("bench_cpu_ratios", "docs/bench/bench_cpu.json")
def bench_cpu_ratios(bench):
    rows = []
    for arch, ratios in bench["ratios"].items():
        rows.append(
            [arch, f"{times(ratios['default_vs_loop'])} ({times(ratios['default_vs_loop_cpu'])} per CPU-second)",
             _default_ratio(ratios, "torch_nchw", True), _default_ratio(ratios, "torch_channels_last", True),
             _default_ratio(ratios, "torch_nchw_thp"), _default_ratio(ratios, "torch_channels_last_thp")]
        )  # fmt: skip
    header = ["", "vs jitted loop", "vs PyTorch NCHW", "vs PyTorch channels_last", "vs NCHW with huge pages",
              "vs channels_last with huge pages"]  # fmt: skip
    return table(header, rows)


@renderer("bench_cpu_cases", "docs/bench/bench_cpu.json")
def bench_cpu_cases(bench):
    rows = []
    for case in bench["cases"]:
        compile_s = "-" if case["compile_s"] is None else f"{case['compile_s']:.1f}"
        rows.append(
            [case["name"] + (" *" if case["default"] else ""), count(case["model_examples_per_s"]),
             count(case["model_examples_per_cpu_s"]), count(case["train_gflops_per_s"]),
             f"{100 * case['fraction_of_peak']:.0f}%", compile_s, count(case["peak_mem_mb"])]
        )  # fmt: skip
    header = [
        "case",
        "model-examples/s",
        "per CPU-second",
        "GFLOP/s",
        "% of matmul peak",
        "compile s",
        "peak MB",
    ]
    return table(header, rows)


@renderer("bench_inference", "docs/bench/bench_inference_cpu.json")
def bench_inference(bench):
    run = bench["inference_memory"]
    row = [
        f"{run['num_models']} x {run['num_examples']:,} x {run['queries']}", run["arch"],
        f"{count(run['logits_mb'])} MB", f"+{count(run['rss_mb'])} MB", f"{count(run['anon_mb'])} MB",
        f"{count(run['file_mb'])} MB", f"{run['wall_s']:.0f} s",
    ]  # fmt: skip
    header = ["models x examples x queries", "arch", "logits written", "peak RSS growth", "of it anonymous",
              "of it output-file pages", "wall"]  # fmt: skip
    return table(header, [row])


@renderer("bench_dp", "docs/bench/bench_dp_cpu.json")
def bench_dp(bench):
    rows, settings = [], set()
    for arch, run in bench["dp_step"].items():
        settings.add((run["models"], run["batch_size"], run["physical_dp_batch"]))
        rows.append(
            [arch, count(run["sgd"]["model_examples_per_s"]),
             f"{count(run['dp_per_example']['model_examples_per_s'])} model-ex/s, {times(run['dp_per_example_vs_sgd_time'])} the time",
             f"{count(run['dp_ghost']['model_examples_per_s'])} model-ex/s, {times(run['dp_ghost_vs_sgd_time'])}"]
        )  # fmt: skip
    lines = [f"{m} models a step, expected batch {b}, physical DP batch {p}" for m, b, p in sorted(settings)]
    header = ["model", "ordinary, model-ex/s", "per_example clipping", "ghost clipping"]
    return "; ".join(lines) + ":\n\n" + table(header, rows)


def _gpu_rows(bench: dict, loops: dict, note: str = "") -> list[list[str]]:
    rows = []
    for case in bench["cases"]:
        loop = loops.get(case["arch"])
        name = case["name"] + (" (default then)" if case["default"] else "") + note
        rows.append([name, count(case["model_examples_per_s"]), f"{case['model_examples_per_s'] / loop:.2f}"])
    return rows


@renderer("bench_gpu", "docs/bench/bench_gpu.json", "docs/bench/bench_gpu_im2col.json")
def bench_gpu(check, im2col):
    loops = {c["arch"]: c["model_examples_per_s"] for c in check["cases"] if c["method"] == "loop"}
    rows = _gpu_rows(check, loops) + _gpu_rows(im2col, loops, ", run 2")
    return table(["case", "model-ex/s", "vs the loop (run 1)"], rows)


@renderer(
    "headlines",
    "docs/bench/bench_whitebox_cpu.json",
    "docs/bench/bench_dp_cpu.json",
    "docs/results/end_to_end_cpu/end_to_end_cpu.json",
    "docs/bench/bench_gpu_im2col.json",
    "docs/bench/bench_gpu.json",
)
def headlines(whitebox, dp, end_to_end, gpu_im2col, gpu_check):
    """The README's one-line figures of the other stages (its links are relative to the README)."""
    cnn32 = whitebox["whitebox_query"]["cnn32"]
    calls = {case["arch"]: case["end_to_end_vs_step"] for case in end_to_end["cases"]}
    best = max(gpu_im2col["cases"], key=lambda case: case["model_examples_per_s"])
    loop = next(c for c in gpu_check["cases"] if c["arch"] == best["arch"] and c["method"] == "loop")
    mlp, conv = dp["dp_step"]["mlp"], dp["dp_step"]["cnn32"]
    rows = [
        ["white-box query stage, cnn32: time against the logits-only stage", times(cnn32["whitebox_vs_logits_time"]),
         "[performance.md](docs/performance.md#the-white-box-query-stage)"],
        [f"DP-SGD step against the ordinary step ({mlp['models']} models a step): mlp with ghost clipping, "
         "mlp with per-example gradients, cnn32",
         f"{times(mlp['dp_ghost_vs_sgd_time'])}, {times(mlp['dp_per_example_vs_sgd_time'])}, "
         f"{times(conv['dp_ghost_vs_sgd_time'])}", "[dp.md](docs/dp.md#cost)"],
        ["a training call (evaluation and checkpoints included) against its step alone: mlp, cnn32",
         f"{times(calls['mlp'])}, {times(calls['cnn32'])}",
         "[results/end_to_end_cpu](docs/results/end_to_end_cpu/README.md)"],
        [f"GPU ({gpu_check['device']['kind']}): `{best['name']}`, model-ex/s and against the jitted loop",
         f"{count(best['model_examples_per_s'])}, {times(best['model_examples_per_s'] / loop['model_examples_per_s'])}",
         "[performance.md](docs/performance.md#gpu-the-first-figures)"],
    ]  # fmt: skip
    return table(["measured", "figure", "details"], rows)


# ---- the blocks ----


def load_sources(root: Path, name: str) -> list:
    sources, _ = RENDERERS[name]
    return [json.loads((root / source).read_text()) for source in sources]


def render_text(text: str, root: Path) -> str:
    """`text` with every block re-rendered from the JSON under `root`."""

    def replace(match):
        name = match["name"]
        if name not in RENDERERS:
            raise KeyError(f"unknown block {name!r}; known: {', '.join(sorted(RENDERERS))}")
        _, function = RENDERERS[name]
        return f"<!-- render:{name} -->\n\n{function(*load_sources(root, name))}\n\n<!-- /render -->"

    return BLOCK.sub(replace, text)


def markdown_files(root: Path) -> list[Path]:
    docs = root / "docs"
    return [root / "README.md", *(sorted(docs.rglob("*.md")) if docs.is_dir() else [])]


def blocks(text: str) -> list[str]:
    return [match["name"] for match in BLOCK.finditer(text)]


def out_of_sync(root: Path = REPO) -> list[str]:
    """'PATH: NAME' for each block whose text differs from its rendering."""
    stale = []
    for path in markdown_files(root):
        text = path.read_text()
        for match in BLOCK.finditer(text):
            if match["name"] not in RENDERERS:
                stale.append(f"{path.relative_to(root)}: {match['name']} (no such block in docs/render.py)")
            elif render_text(match[0], root) != match[0]:
                stale.append(f"{path.relative_to(root)}: {match['name']}")
    return stale


def rewrite(root: Path = REPO) -> list[str]:
    """Re-renders every block in place; returns the files changed."""
    changed = []
    for path in markdown_files(root):
        text = path.read_text()
        rendered = render_text(text, root)
        if rendered != text:
            path.write_text(rendered)
            changed.append(str(path.relative_to(root)))
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a block differs from its rendering")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    if args.check:
        stale = out_of_sync(args.root)
        for entry in stale:
            print(f"out of sync: {entry} (run: python docs/render.py)")
        return 1 if stale else 0
    for path in rewrite(args.root):
        print(f"rendered {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
