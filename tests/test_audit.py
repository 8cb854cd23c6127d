"""The driver: leave-one-out, num_shadows_used, checks before work, and the metrics it returns."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import audit_run
from scipy import stats

from lira import attacks, signals
from lira.attacks import ATTACKS, AttackSpec, protocol, rmia
from lira.run import reader, synthetic


@pytest.fixture
def run(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=10, num_examples=40, signal=1.0, seed=0)
    return tmp_path


def spy(monkeypatch, references_kind):
    """Registers an attack "spy" that records what it is given (and scores 0): the reference
    masks and the reference statistics every attack family builds on."""
    seen = []

    def fn(inputs):
        seen.append(
            {
                "targets": inputs.targets.copy(),
                "masks": {kind: inputs.mask(kind).copy() for kind in ("in", "out", "offline_out")},
                "moments": [inputs.moments(name, kind) for name in ("phi", "ce") for kind in ("in", "out")],
                "trimmed": rmia.trimmed_reference_mean(inputs.signals.ce, inputs.is_in | inputs.is_out, 0.2),
            }
        )
        return np.zeros((inputs.num_targets, len(inputs.labels)))

    monkeypatch.setitem(ATTACKS, "spy", AttackSpec(fn, references_kind, 0, 1))
    return seen


def load(logdir):
    return reader.read_run(logdir).with_signals()


def test_target_outputs_never_reach_its_references(run, monkeypatch):
    seen = spy(monkeypatch, "in_and_out")
    clean_run = load(run)
    protocol.run_attacks(clean_run, ["spy"], targets=[0, 3])
    poisoned = signals.Signals(clean_run.signals.phi.copy(), clean_run.signals.ce.copy())
    poisoned.phi[0], poisoned.ce[0] = 1e30, -1e30  # only target 0's outputs change
    protocol.run_attacks(
        dataclasses.replace(clean_run, signals=poisoned), ["spy"], targets=[0, 3]
    )  # (same shapes: same summation order)
    clean, dirty = seen
    for kind, mask in clean["masks"].items():
        assert not mask[0, 0].any() and not mask[1, 3].any(), kind  # never the target's own row
    for before, after in zip(clean["moments"], dirty["moments"]):
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a[0], b[0])  # target 0's statistics, bit for bit
    np.testing.assert_array_equal(clean["trimmed"][0], dirty["trimmed"][0])
    assert not np.array_equal(clean["moments"][0][0][1], dirty["moments"][0][0][1])  # target 3 reads model 0


def test_lira_scores_equal_the_attack_on_hand_built_equal_count_references(run):
    loaded = load(run)
    keep = loaded.keep
    result = protocol.run_attacks(loaded, ["lira_online", "lira_offline"], targets=[3], seed=2)
    order = protocol.reference_order(10, seed=2)
    references = [m for m in order if m != 3]
    phi = loaded.signals.phi.astype(np.float64)
    for n in range(keep.shape[1]):
        ins = [m for m in references if keep[m, n]][:4]  # 10 models, 5 IN: M/2 - 1 = 4 of each kind
        outs = [m for m in references if not keep[m, n]][:4]
        x = phi[3, n]
        online = stats.norm.logpdf(x, phi[ins, n].mean(0), phi[ins, n].std(0, ddof=1)) - stats.norm.logpdf(
            x, phi[outs, n].mean(0), phi[outs, n].std(0, ddof=1)
        )
        offline = stats.norm.logcdf(x, phi[outs, n].mean(0), phi[outs, n].std(0, ddof=1))
        assert result["lira_online"].scores[0, n] == pytest.approx(online.mean(), rel=1e-7)
        assert result["lira_offline"].scores[0, n] == pytest.approx(offline.mean(), rel=1e-7)


def test_equal_counts_and_num_shadows_used_follow_the_fixed_order(run, monkeypatch):
    loaded = load(run)
    keep = loaded.keep
    order = protocol.reference_order(10, seed=5)
    seen = spy(monkeypatch, "in_and_out")
    protocol.run_attacks(loaded, ["spy"], targets=[2], num_shadows_used=6, seed=5)
    chosen = order[order != 2][:6]
    masks = seen[0]["masks"]
    for n in range(keep.shape[1]):
        ins = [m for m in chosen if keep[m, n]]
        outs = [m for m in chosen if not keep[m, n]]
        count = min(len(ins), len(outs))  # equal counts among the first K, in the order
        assert sorted(np.flatnonzero(masks["in"][0, :, n])) == sorted(ins[:count])
        assert sorted(np.flatnonzero(masks["out"][0, :, n])) == sorted(outs[:count])
        rows = [m for m in order if m != 2]
        first_out = [m for m in rows if not keep[m, n]][:4]  # offline: min(K, M/2 - 1) = 4 OUT references
        assert sorted(np.flatnonzero(masks["offline_out"][0, :, n])) == sorted(first_out)
    seen = spy(monkeypatch, "out")
    protocol.run_attacks(loaded, ["spy"], targets=[2], num_shadows_used=3, seed=5)
    assert (seen[0]["masks"]["offline_out"].sum(axis=1) == 3).all()


def test_num_shadows_used_changes_online_scores_reproducibly(run):
    loaded = load(run)
    full = protocol.run_attacks(loaded, ["lira_online"], [0])["lira_online"].scores
    part = protocol.run_attacks(loaded, ["lira_online"], [0], num_shadows_used=8, seed=1)
    again = protocol.run_attacks(loaded, ["lira_online"], [0], num_shadows_used=8, seed=1)
    assert not np.allclose(full, part["lira_online"].scores)
    np.testing.assert_array_equal(part["lira_online"].scores, again["lira_online"].scores)


def test_errors_come_before_work_and_name_the_problem(run, monkeypatch):
    def fail(*_, **__):
        raise AssertionError("signals were read before the checks")

    monkeypatch.setattr(reader.Run, "with_signals", fail)
    with pytest.raises(ValueError, match="choose from"):
        audit_run(run, ["lira_online", "lira_onlien"])
    with pytest.raises(ValueError, match="num_shadows_used=10"):
        audit_run(run, ["loss"], num_shadows_used=10)
    with pytest.raises(
        ValueError, match=r"too large for offline attack lira_offline: example \d+ has only 4"
    ):
        audit_run(run, ["lira_offline"], num_shadows_used=5)
    with pytest.raises(
        ValueError, match=r"lira_online needs >= 2 (IN|OUT) references per example, but for target"
    ):
        audit_run(run, ["lira_online"], num_shadows_used=2)
    # one OUT reference an example: offline LiRA's pooled variance is then taken around the overall
    # mean (the RMIA paper's one-reference case), so K = 1 passes the checks and reaches the signals
    with pytest.raises(AssertionError, match="signals were read"):
        audit_run(run, ["lira_offline_fixed_var"], num_shadows_used=1)
    with pytest.raises(ValueError, match="Unknown attack options --lira_gamma=2.0; valid: --"):
        audit_run(run, ["lira_online"], options={"lira_gamma": 2.0})
    with pytest.raises(ValueError, match=r"--rmia_trim must be in \[0, 0.5\), got 0.5"):
        audit_run(run, ["rmia_online"], options={"rmia_trim": 0.5})
    with pytest.raises(ValueError, match="takes"):
        protocol.check_options(["lira_online"], {"lira_online": {"gamma": 2.0}})


def test_run_audit_returns_metrics_for_every_attack(run):
    options = {"rmia_offline_a": "auto", "rmia_gamma": 1.5, "shokri_classifier": "logreg"}
    metrics, results = audit_run(run, ["all"], num_targets=20, bootstrap=20, options=options)
    # A black-box run: 'all' is every attack but the white-box ones (tests/test_whitebox_attacks.py).
    assert set(results) == set(attacks.BLACK_BOX) and set(metrics["attacks"]) == set(attacks.BLACK_BOX)
    assert metrics["num_models"] == 10 and metrics["num_targets"] == 10 and metrics["num_queries"] == 2
    assert results["loss"].scores.shape == (10, 40) and results["loss"].targets == list(range(10))
    figures = metrics["attacks"]["lira_online"]
    assert len(figures["per_target"]["auc"]) == 10 and set(figures["ci95"]) == {"examples", "targets", "both"}
    fitted = metrics["attacks"]["rmia_offline"]
    assert (
        fitted["offline_a_fitted"]
        and len(fitted["offline_a"]) == 10
        and all(0 <= a <= 1 for a in fitted["offline_a"])
    )
    given = metrics["attack_options"]  # the flags reach the attacks' keywords, the others at their defaults
    assert given["shokri"] == {"classifier": "logreg"} and given["rmia_online"]["gamma"] == 1.5
    assert given["rmia_offline"]["offline_a"] == "auto" and given["rmia_offline"]["trim"] == rmia.DEFAULT_TRIM
    assert figures["tpr_at_fpr"]["1e-05"] is None  # 200 non-members cannot resolve 1e-5


REPO = Path(__file__).resolve().parents[1]


def run_script(*args):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=environment)


@pytest.mark.slow
def test_attack_script_end_to_end(run):
    finished = run_script(
        "experiments/attack.py", f"--logdir={run}", "--attacks=loss,lira_online,rmia_offline,shokri",
        "--shokri_classifier=logreg", "--num_targets=2", "--bootstrap=20",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["num_targets"] == 2 and set(metrics["attacks"]) == {
        "loss",
        "lira_online",
        "rmia_offline",
        "shokri",
    }
    assert set(metrics["attacks"]["loss"]["tpr_at_fpr"]) == {"1e-05", "0.0001", "0.001", "0.01", "0.1"}
    assert np.load(run / "report" / "scores" / "lira_online.npy").shape == (2, 40)
    assert (run / "report" / "roc_log.png").exists() and "roc_log.png" in finished.stdout


def test_attack_script_rejects_unknown_attacks_before_work(run):
    finished = run_script("experiments/attack.py", f"--logdir={run}", "--attacks=lira_online,lria")
    assert finished.returncode != 0 and "choose from" in finished.stderr and "rmia_offline" in finished.stderr
    assert not (run / "report").exists()


@pytest.mark.slow
def test_benchmark_quick(tmp_path):
    finished = run_script(
        "-m", "bench.attacks", "--quick", "--attacks=loss,lira_online,rmia_offline",
        "--bootstrap=10", f"--json={tmp_path / 'bench.json'}", f"--workdir={tmp_path}",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (
        set(result["attack_s"]) == {"loss", "lira_online", "rmia_offline"}
        and result["shape"]["num_models"] == 16
    )
    assert result["peak_rss_gib"] > 0 and result["total_s"] > 0 and "lira_online" in finished.stdout
    assert all(auc > 0.55 for auc in result["auc"].values())  # the planted signal is found


# --- Canaries: independent keep columns, references and population from the references alone --------


def _flip_changes(keep, columns, canaries, num_shadows_used=None):
    """For every target t and column c of `columns`: does flipping keep[t, c] change t's reference
    masks or RMIA population when the protocol is told `canaries`? (The one-run audit's premise, for
    canaries: it must not.) -> list of (t, c) that do."""
    targets = list(range(keep.shape[0]))
    independent = protocol.canary_columns(keep.shape[1], canaries)

    def view(mask):
        selection = protocol.select_references(mask, targets, num_shadows_used, seed=3, canaries=canaries)
        return selection, [protocol.population(mask, t, independent) for t in targets]

    (base, populations), changed = view(keep), []
    for t in targets:
        for c in columns:
            flipped = keep.copy()
            flipped[t, c] = ~flipped[t, c]
            selection, flipped_populations = view(flipped)
            same = all(
                np.array_equal(getattr(base, kind)[t], getattr(selection, kind)[t])
                for kind in ("is_in", "is_out", "offline_out")
            )
            if not same or not np.array_equal(populations[t], flipped_populations[t]):
                changed.append((t, c))
    return changed


@pytest.mark.parametrize("num_shadows_used", [None, 4])
def test_a_canarys_references_and_population_ignore_the_targets_membership(num_shadows_used):
    from lira.run import masks

    canaries = np.arange(0, 40, 2)
    keep = masks.make_keep(8, 40, 0.5, seed=1, canaries=canaries)
    assert _flip_changes(keep, canaries, canaries, num_shadows_used) == []
    for t in range(8):
        assert not np.isin(
            protocol.population(keep, t, protocol.canary_columns(40, canaries)), canaries
        ).any()
    # The balanced rule on the same columns reads the target's own entry: the check can fail.
    assert len(_flip_changes(keep, canaries, None, num_shadows_used)) > 20


def test_canary_reference_counts_come_from_the_references_alone():
    from lira.run import masks

    canaries = np.arange(30)
    keep = masks.make_keep(9, 60, 0.5, seed=2, canaries=canaries)
    selection = protocol.select_references(keep, [4], seed=0, canaries=canaries)
    references = np.delete(np.arange(9), 4)
    for n in canaries:
        num_in = keep[references, n].sum()
        num_out = len(references) - num_in
        assert selection.is_in[0, :, n].sum() == selection.is_out[0, :, n].sum() == min(num_in, num_out)
        assert selection.offline_out[0, :, n].sum() == num_out  # every OUT reference
    for n in range(30, 60):  # balanced columns: the equal-count rule as before, M/2 - 1 (M = 9: 4 IN of 9)
        assert selection.is_in[0, :, n].sum() == selection.is_out[0, :, n].sum() == 3


def test_canaries_short_of_references_get_the_targets_lowest_score(tmp_path):
    from lira.run import masks

    canaries = np.arange(12)
    keep = masks.make_keep(8, 80, 0.5, seed=4, canaries=canaries)
    keep[:, 0] = True  # no OUT reference for any target
    keep[:, 1] = False  # no IN reference
    keep[:6, 2], keep[6:, 2] = True, False  # two OUT models: each sees one OUT reference
    synthetic.make_synthetic_rundir(tmp_path, num_models=8, num_examples=80, seed=4, keep=keep)
    names = ["loss", "lira_online", "lira_offline", "rmia_online", "lira_online_fixed_var"]
    loaded = reader.read_run(tmp_path).with_signals(attacks.probability_signal(names))
    results = protocol.run_attacks(dataclasses.replace(loaded, canaries=canaries), names, list(range(8)))
    selection = protocol.select_references(keep, list(range(8)), canaries=canaries)
    for name, result in results.items():
        short = protocol.unscored(selection, name)
        assert np.isfinite(result.scores).all(), name
        assert result.info.get("unscored_canaries", 0) == short.sum(), name
        assert not short[:, 12:].any()  # only canaries are ever short
        for row in range(8):
            lowest = result.scores[row, ~short[row]].min()
            np.testing.assert_array_equal(result.scores[row, short[row]], lowest)
    short_offline = protocol.unscored(selection, "lira_offline")
    assert short_offline[:, 0].all() and not short_offline[:, 1].any()
    assert short_offline[6:, 2].all() and not short_offline[:6, 2].any()
    online = protocol.unscored(selection, "lira_online")
    assert online[:, :2].all() and online[6:, 2].all() and not online[:6, 2].any()
    # The same short column outside the canaries is the user's error, named before any work.
    with pytest.raises(ValueError, match="lira_offline needs >= 2 OUT references"):
        protocol.run_attacks(dataclasses.replace(loaded, canaries=canaries[3:]), ["lira_offline"], [0])
