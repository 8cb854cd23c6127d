"""Times the attack stage at the papers' scale: every attack, many targets, augmented queries.

    python -m bench.attacks --workdir=../runs/bench_attacks     # M=256, N=50,000, Q=18, T=16
    python -m bench.attacks --quick --json=/tmp/bench.json      # seconds; what the tests run

LiRA's and RMIA's CIFAR-10 setting is M = 256 models, N = 50,000 examples and Q = 18 queries,
and an auditor attacks several targets. A synthetic run of that shape (lira.run.synthetic: a planted
membership signal, one logits file per model, as the inference stage writes them) is built once
in --workdir (kept, so a re-run skips building it), then one process does what
experiments/attack.py does: load the signals, run every attack against T targets, compute the
metrics with their bootstrap intervals. Each phase and each attack is timed; peak RSS is the
process's. Target: the whole stage within 10 minutes and 16 GiB on the 2-core CPU.
The first attack that reads a reference statistic pays for it (the LiRA attacks share their
moments), so attacks are timed in the order `--attacks=all` runs them.
"""

import json
import resource
import shutil
import sys
import time
from pathlib import Path

from absl import flags

from lira import cli
from lira.attacks import ATTACKS, probability_signal, protocol
from lira.run import layout, synthetic
from lira.run.reader import read_run
from lira.stages import attack

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_models", 256, "M.")
flags.DEFINE_integer("num_examples", 50_000, "N.")
flags.DEFINE_integer("num_queries", 18, "Q.")
flags.DEFINE_integer("num_classes", 10, "C.")
flags.DEFINE_integer("num_targets", 16, "T: targets attacked.")
flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples in the metrics.")
flags.DEFINE_list("attacks", ["all"], "Attacks to time, or 'all'.")
flags.DEFINE_bool("quick", False, "A tiny run (M=16, N=500, Q=2, T=4) to check the benchmark itself.")
flags.DEFINE_string(
    "workdir", None, "Where the synthetic run is built and kept (default: a folder under /tmp)."
)
flags.DEFINE_string("json", None, "Also write the results here.")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def build_run(logdir: Path, shape: dict) -> float:
    """Builds the synthetic run unless a complete one of this shape is there; returns seconds."""
    marker = logdir / "bench_shape.json"
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return 0.0
    shutil.rmtree(logdir, ignore_errors=True)
    start = time.perf_counter()
    synthetic.make_synthetic_rundir(logdir, signal=0.5, **shape)
    layout.save_json(marker, shape)
    return time.perf_counter() - start


def measure(logdir: Path, attacks: list[str], num_targets: int, bootstrap: int) -> dict:
    """Seconds to load the signals, run each attack against `num_targets` targets, and compute
    the metrics; peak RSS; pooled AUCs."""
    start = time.perf_counter()
    run = read_run(logdir).with_signals(probability_signal(attacks))
    keep, signals = run.keep, run.signals
    loaded = time.perf_counter()
    targets = list(range(min(num_targets, keep.shape[0])))
    selection_start = time.perf_counter()
    selection = protocol.check_references(keep, targets, attacks, None, 0)
    inputs = protocol.attack_inputs(run, targets, selection)
    selection_s = time.perf_counter() - selection_start
    attack_s, results = {}, {}
    for name in attacks:  # in one AttackInputs: statistics computed by one attack serve the next
        begin = time.perf_counter()
        output = ATTACKS[name].fn(inputs)
        scores = output[0] if isinstance(output, tuple) else output
        attack_s[name] = time.perf_counter() - begin
        results[name] = protocol.AttackResult(scores, targets)
        print(f"  {name}: {attack_s[name]:.1f} s", flush=True)
    attacked = time.perf_counter()
    metrics = attack.audit_metrics(results, keep, signals.num_queries, bootstrap)
    done = time.perf_counter()
    return {
        "load_s": loaded - start,
        "selection_s": selection_s,
        "attack_s": attack_s,
        "attacks_total_s": attacked - loaded,
        "metrics_s": done - attacked,
        "total_s": done - start,
        "peak_rss_gib": peak_rss_gib(),
        "auc": {name: figures["auc"] for name, figures in metrics["attacks"].items()},
    }


def main(argv):
    del argv
    attacks = protocol.check_attack_names(FLAGS.attacks)
    if FLAGS.quick:
        FLAGS.num_models, FLAGS.num_examples, FLAGS.num_queries, FLAGS.num_targets = 16, 500, 2, 4
    shape = dict(num_models=FLAGS.num_models, num_examples=FLAGS.num_examples,
                 num_queries=FLAGS.num_queries, num_classes=FLAGS.num_classes)  # fmt: skip
    workdir = Path(FLAGS.workdir or "/tmp/lira_bench_attacks")
    logdir = workdir / "run_M{num_models}_N{num_examples}_Q{num_queries}_C{num_classes}".format(**shape)
    built = build_run(logdir, shape)
    print(
        f"Synthetic run {shape} in {logdir} ({f'built in {built:.0f} s' if built else 'reused'})", flush=True
    )
    result = measure(logdir, attacks, FLAGS.num_targets, FLAGS.bootstrap)
    print(f"\nM={FLAGS.num_models} N={FLAGS.num_examples:,} Q={FLAGS.num_queries} C={FLAGS.num_classes}, "
          f"T={FLAGS.num_targets} targets, bootstrap {FLAGS.bootstrap}")  # fmt: skip
    print(f"{'phase':<26}{'seconds':>9}{'AUC':>8}")
    print(f"{'load signals':<26}{result['load_s']:>9.1f}")
    print(f"{'reference selection':<26}{result['selection_s']:>9.1f}")
    for name, seconds in result["attack_s"].items():
        print(f"{name:<26}{seconds:>9.1f}{result['auc'][name]:>8.3f}")
    print(f"{'metrics and intervals':<26}{result['metrics_s']:>9.1f}")
    print(f"{'total':<26}{result['total_s']:>9.1f}   peak RSS {result['peak_rss_gib']:.2f} GiB")
    if FLAGS.json:
        environment = {"python": sys.version.split()[0], "attacks": list(ATTACKS)}
        layout.save_json(Path(FLAGS.json), {"shape": shape, "num_targets": FLAGS.num_targets,
                                            "bootstrap": FLAGS.bootstrap, "environment": environment, **result})  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
