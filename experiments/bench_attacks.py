"""Times each attack and measures peak memory on a synthetic run of the paper's size.

    python experiments/bench_attacks.py                    # M=256, N=50,000, Q=2, C=10
    python experiments/bench_attacks.py --quick --json=/tmp/bench.json

Each attack runs in a fresh process (so its peak RSS is its own): signals are loaded, the attack
is run against --num_targets targets, and metrics (with --bootstrap resamples) are computed; the
three are timed apart. A last process runs --attacks=all end to end, as experiments/attack.py
would, to check the whole stage fits in memory. Targets: each attack <= 60 s, all <= 8 GiB.
"""

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from lira import audit, rundir, synthetic
from lira.attacks import ATTACKS
from lira.signals import run_signals

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_models", 256, "M.")
flags.DEFINE_integer("num_examples", 50_000, "N.")
flags.DEFINE_integer("num_queries", 2, "Q.")
flags.DEFINE_integer("num_classes", 10, "C.")
flags.DEFINE_integer("num_targets", 1, "Targets attacked (each attack's time covers all of them).")
flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples in the metrics.")
flags.DEFINE_list("attacks", ["all"], "Attacks to time, or 'all'.")
flags.DEFINE_bool("quick", False, "A tiny run (M=16, N=500) to check the benchmark itself.")
flags.DEFINE_bool("isolate", True, "One process per attack (own peak RSS); off: in-process, RSS cumulative.")
flags.DEFINE_string("json", None, "Also write the results here.")
flags.DEFINE_string("workdir", None, "Where to build the synthetic run (default: a temporary folder).")
flags.DEFINE_string(
    "worker", None, "Internal: time these comma-separated attacks on --workdir and print JSON."
)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def measure(logdir: Path, attacks: list[str]) -> dict:
    """Seconds to load signals, run `attacks`, and compute metrics; peak RSS; pooled AUCs."""
    start = time.perf_counter()
    signals = run_signals(logdir, with_softmax=any(ATTACKS[a].needs_softmax for a in attacks))
    keep, labels = rundir.load_keep(logdir), rundir.load_labels(logdir)
    loaded = time.perf_counter()
    targets = list(range(min(FLAGS.num_targets, keep.shape[0])))
    results = audit.run_attacks(signals, keep, labels, attacks, targets)
    attacked = time.perf_counter()
    metrics = audit.audit_metrics(results, keep, signals.phi.shape[-1], FLAGS.bootstrap)
    done = time.perf_counter()
    return {
        "load_s": loaded - start,
        "attack_s": attacked - loaded,
        "metrics_s": done - attacked,
        "peak_rss_gib": peak_rss_gib(),
        "auc": {name: figures["auc"] for name, figures in metrics["attacks"].items()},
    }


def run_measurement(logdir: Path, attacks: list[str]) -> dict:
    if not FLAGS.isolate:
        return measure(logdir, attacks)
    command = [sys.executable, __file__, f"--workdir={logdir}", f"--worker={','.join(attacks)}",
               f"--num_targets={FLAGS.num_targets}", f"--bootstrap={FLAGS.bootstrap}"]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(measure(Path(FLAGS.workdir), FLAGS.worker.split(","))))
        return
    attacks = audit.check_attack_names(FLAGS.attacks)
    if FLAGS.quick:
        FLAGS.num_models, FLAGS.num_examples = 16, 500
    shape = dict(num_models=FLAGS.num_models, num_examples=FLAGS.num_examples,
                 num_queries=FLAGS.num_queries, num_classes=FLAGS.num_classes)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=FLAGS.workdir) as folder:
        logdir = Path(folder) / "run"
        start = time.perf_counter()
        synthetic.make_synthetic_rundir(logdir, signal=0.5, **shape)
        print(f"Built a synthetic run {shape} in {time.perf_counter() - start:.1f} s")
        rows = {}
        for name in attacks:
            rows[name] = run_measurement(logdir, [name])
            print(f"  {name}: {rows[name]['attack_s']:.2f} s", flush=True)
        everything = run_measurement(logdir, attacks)
    print(f"\nM={FLAGS.num_models} N={FLAGS.num_examples} Q={FLAGS.num_queries} C={FLAGS.num_classes}, "
          f"{FLAGS.num_targets} target(s), bootstrap {FLAGS.bootstrap}; times in seconds")  # fmt: skip
    print(f"{'attack':<24}{'load':>8}{'attack':>9}{'metrics':>9}{'peak GiB':>10}{'AUC':>8}")
    for name, row in [*rows.items(), ("(all together)", everything)]:
        auc = row["auc"].get(name, float("nan"))
        print(f"{name:<24}{row['load_s']:>8.2f}{row['attack_s']:>9.2f}{row['metrics_s']:>9.2f}"
              f"{row['peak_rss_gib']:>10.2f}{auc:>8.3f}")  # fmt: skip
    if FLAGS.json:
        rundir.save_json(Path(FLAGS.json), {"shape": shape, "num_targets": FLAGS.num_targets,
                                            "bootstrap": FLAGS.bootstrap, "attacks": rows, "all": everything})  # fmt: skip


if __name__ == "__main__":
    app.run(main)
