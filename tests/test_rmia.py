"""RMIA's probability signal stays a probability, and `--rmia_offline_a=auto` is an offline fit.

The votes, trimmed means and the authors' computation are tested in tests/test_attacks.py.
"""

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from lira import signals
from lira.attacks import ATTACKS, options_from_flags, probability_signal, protocol, rmia, rmia_offline_a
from lira.run import masks
from lira.run.reader import Run

NUM_CLASSES = 10


def extreme_logits(seed=0, shape=(6, 40, 2)):
    """Logits [*shape, C] anywhere in -50..+50, true classes [N]: a model that memorizes, and worse."""
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-50, 50, (*shape, NUM_CLASSES))
    labels = rng.integers(0, NUM_CLASSES, shape[1])
    logits[0, 0, 0] = -50.0  # every logit at the bottom, and the true one alone at either end
    logits[0, 1, 0] = np.where(np.arange(NUM_CLASSES) == labels[1], 50.0, -50.0)
    logits[0, 2, 0] = np.where(np.arange(NUM_CLASSES) == labels[2], -50.0, 50.0)
    return logits, labels


def truncated_exp(v, terms):
    return sum(v**i / math.factorial(i) for i in range(terms))


def test_the_default_signal_is_a_probability_for_every_logit():
    assert options_from_flags()["rmia_online"]["signal"] == "softmax" == signals.ProbabilitySignal().kind
    logits, labels = extreme_logits()
    for signal in (signals.ProbabilitySignal(), signals.ProbabilitySignal("softmax", 1.0),
                   signals.ProbabilitySignal("taylor", terms=5)):  # fmt: skip
        values = signal(logits, labels[:, None])
        assert rmia.outside_unit_interval(values.astype(np.float32)) == (0, values.size), signal


def test_the_cubic_leaves_the_unit_interval_where_its_formula_says():
    logits, labels = extreme_logits(shape=(1, 40, 1))
    cubic = signals.ProbabilitySignal("taylor", terms=4)(logits, labels[:, None])
    expected = 0
    for n, row in enumerate(logits[0, :, 0]):  # the authors' formula, one example at a time
        u = row / 2.0
        own = truncated_exp(u[labels[n]] - 0.6, 4)
        p = own / (own + sum(truncated_exp(u[c], 4) for c in range(NUM_CLASSES) if c != labels[n]))
        expected += not 0 <= p <= 1
    assert rmia.outside_unit_interval(cubic) == (expected, 40) and expected > 0


def run_rmia(logits, labels, keep, signal, **options):
    """Both RMIA attacks through the driver, with warnings recorded: (results, warnings)."""
    every = signals.signals_from_logits(logits, labels, signal)
    chosen = {"signal": signal.kind, "temperature": signal.temperature, "margin": signal.margin,
              "terms": signal.terms, **options}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = protocol.run_attacks(Run(keep, labels, every), ["rmia_online", "rmia_offline"], [0, 1],
            attack_options={"rmia_online": chosen, "rmia_offline": chosen},
        )  # fmt: skip
    return results, [w for w in caught if issubclass(w.category, rmia.InvalidProbabilityWarning)]


def test_the_attack_warns_once_per_attack_with_the_fraction_outside_and_never_for_the_default():
    logits, labels = extreme_logits(shape=(8, 40, 2))
    keep = masks.make_keep(8, 40, 0.5, 0)
    defaults = options_from_flags()["rmia_online"]
    default = signals.ProbabilitySignal(
        defaults["signal"], defaults["temperature"], defaults["margin"], defaults["terms"]
    )
    results, caught = run_rmia(logits, labels, keep, default)
    assert caught == [] and results["rmia_online"].info["signal_outside_unit_interval"] == 0.0

    cubic = signals.ProbabilitySignal("taylor", terms=4)
    outside, total = rmia.outside_unit_interval(cubic(logits, labels[:, None]).astype(np.float32))
    results, caught = run_rmia(logits, labels, keep, cubic)
    assert [str(w.message).split(":")[0] for w in caught] == ["rmia_online", "rmia_offline"]
    assert all(f"{outside} of the {total} values ({outside / total:.2%})" in str(w.message) for w in caught)
    for name in ("rmia_online", "rmia_offline"):
        assert results[name].info["signal_outside_unit_interval"] == pytest.approx(outside / total)


def planted_run(num_models=12, num_examples=80, seed=3):
    """Logits [M, N, 2, C] whose true logit rises when the model trained on the example."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num_examples)
    keep = masks.make_keep(num_models, num_examples, 0.5, seed)
    logits = rng.normal(0, 2, (num_models, num_examples, 2, NUM_CLASSES))
    hardness = rng.normal(0, 2, num_examples)[None, :, None]
    true = labels[None, :, None, None] == np.arange(NUM_CLASSES)
    logits += true * (hardness + 1.5 * keep[..., None])[..., None]
    return logits, labels, keep


def inputs_of(logits, labels, keep, targets, num_shadows_used=None, seed=0, canaries=None):
    every = signals.signals_from_logits(logits, labels, signals.ProbabilitySignal())
    selection = protocol.select_references(keep, targets, num_shadows_used, seed, canaries=canaries)
    independent = np.asarray([] if canaries is None else canaries, int)
    return protocol.attack_inputs(Run(keep, labels, every, independent), targets, selection, seed)


def loop_pseudo_target(keep, target, order, num_shadows_used, rank):
    """(model, usable [N], references per example) from keep.npy directly: the target's reference
    number `rank`, and per example the first c - 1 OUT models of the others, c the target's
    offline count; usable: the target's non-members where c >= max(2, rank + 1)."""
    rest = [m for m in order if m != target]
    model, usable, references = rest[rank], [], []
    for n in range(keep.shape[1]):
        count = (~keep[:, n]).sum() - 1
        count = min(count, num_shadows_used) if num_shadows_used else count
        usable.append(count >= max(2, rank + 1) and not keep[target, n])
        references.append([m for m in rest if m != model and not keep[m, n]][: count - 1])
    return model, np.array(usable), references


@pytest.mark.parametrize("num_shadows_used", [None, 3])
def test_the_pseudo_targets_are_reference_models_with_equal_count_out_references(num_shadows_used):
    logits, labels, keep = planted_run()
    inputs = inputs_of(logits, labels, keep, [0, 5], num_shadows_used)
    for row, target in enumerate([0, 5]):
        for rank in range(4):
            fit = rmia_offline_a.pseudo_target(inputs, row, rank)
            model, usable, references = loop_pseudo_target(keep, target, inputs.order, num_shadows_used, rank)
            assert fit.model == model != target
            np.testing.assert_array_equal(fit.usable, usable)
            np.testing.assert_array_equal(fit.is_member[usable], keep[model, usable])
            chosen = [sorted(np.flatnonzero(column)) for column in fit.references.T[usable]]
            assert chosen == [sorted(r) for r, ok in zip(references, usable) if ok]
            counts = fit.references.sum(axis=0)[usable]
            assert (
                len(set(counts[keep[model, usable]]) | set(counts[~keep[model, usable]])) <= 1
            )  # equal counts
        attacked = [fit.model for fit in rmia_offline_a.pseudo_targets(inputs, row)]
        assert len(attacked) == (4 if num_shadows_used is None else 3)  # K = 3: the 4th has no usable example


def loop_offline_auc(p, model, usable, references, is_member, a, gamma, trim):
    """AUC against `model` of the offline attack with correction a, on its usable examples, pair
    by pair: scipy's trimmed mean, float32 ratios as the attack divides them, vote fractions over
    its non-members, ties broken by the query-mean ratio."""
    num_queries = p.shape[-1]
    examples = np.flatnonzero(usable)
    ratio = np.array([
        [np.float32(p[model, n, q] / ((1 + a) / 2 * stats.trim_mean(p[references[n], n, q], trim) + (1 - a) / 2))
         for q in range(num_queries)]
        for n in examples
    ])  # fmt: skip
    member = is_member[examples]
    population = np.flatnonzero(~member)
    key = []
    for x in range(len(examples)):
        wins = [2 * sum(ratio[x, q] * np.float32(1 / ratio[z, q]) >= gamma for q in range(num_queries)) > num_queries
                for z in population]  # fmt: skip
        key.append((np.mean(wins), ratio[x].mean()))
    members, others = [key[i] for i in np.flatnonzero(member)], [key[j] for j in population]
    return np.mean([1.0 if i > j else 0.5 if i == j else 0.0 for i in members for j in others])


def fit(inputs, probability, gamma=2.0, trim=0.2):
    """fit_offline_a as rmia_offline runs it."""
    return rmia_offline_a.fit_offline_a(
        inputs, probability, lambda mask: rmia.trimmed_reference_mean(probability, mask, trim),
        lambda ratio, population, seed: rmia.attack_scores(ratio, population, gamma, None, seed),
    )  # fmt: skip


def test_the_fitted_offline_a_is_the_best_on_the_pseudo_targets_by_a_loop():
    logits, labels, keep = planted_run(num_examples=40)
    inputs = inputs_of(logits, labels, keep, [2])
    p = inputs.signals.probability.astype(np.float64)
    fitted, attacked = fit(inputs, inputs.signals.probability)
    fits = [loop_pseudo_target(keep, 2, inputs.order, None, rank) for rank in range(4)]
    assert attacked == [[model for model, *_ in fits]]

    def mean_auc(a):
        return np.mean([loop_offline_auc(p, *fit[:3], keep[fit[0]], a, 2.0, 0.2) for fit in fits])

    aucs = [mean_auc(a) for a in rmia_offline_a.OFFLINE_A_GRID]
    assert mean_auc(fitted[0]) == pytest.approx(max(aucs), abs=1e-12)
    assert max(aucs) > min(aucs) + 0.005  # a matters here, so the choice was made


def test_the_fit_reads_neither_the_target_nor_any_in_reference_nor_a_guessed_example():
    """The references are attacked as the target is, with OUT references only, on the target's
    population. Rewriting the target's values, every other model's values on the examples it
    trained on, and every value of the target's members and of the canaries changes nothing."""
    logits, labels, keep = planted_run()
    canaries = np.arange(0, 80, 9)
    targets = [0, int(protocol.reference_order(len(keep), 0)[0])]  # the second is another's first reference
    inputs = inputs_of(logits, labels, keep, targets, canaries=canaries)
    fitted, attacked = fit(inputs, inputs.signals.probability)
    assert attacked[0] != attacked[1]
    rng = np.random.default_rng(9)
    for row, target in enumerate(targets):
        noise = rng.uniform(0, 1, inputs.signals.probability.shape)
        rewritten = np.where(keep[..., None], noise, inputs.signals.probability)
        rewritten[attacked[row]] = inputs.signals.probability[attacked[row]]
        rewritten[target] = noise[target]
        rewritten[:, keep[target]] = noise[:, keep[target]]
        rewritten[:, canaries] = noise[:, canaries]
        after = fit(inputs, rewritten.astype(np.float32))
        assert after[0][row] == fitted[row] and after[1] == attacked


@pytest.mark.parametrize("num_models, num_shadows_used", [(12, 1), (4, None)])
def test_auto_refuses_a_single_out_reference_per_example(num_models, num_shadows_used):
    logits, labels, keep = planted_run(num_models=num_models)
    every = signals.signals_from_logits(logits, labels, probability_signal(["rmia_offline"]))
    with pytest.raises(ValueError, match=r"--rmia_offline_a=auto .* needs 2 OUT references per example"):
        protocol.run_attacks(Run(keep, labels, every), ["rmia_offline"], [0], num_shadows_used,
                             attack_options={"rmia_offline": {"offline_a": "auto"}})  # fmt: skip


def test_auto_reports_its_fit_and_uses_it():
    logits, labels, keep = planted_run()
    inputs = inputs_of(logits, labels, keep, [0, 1])
    scores, info = ATTACKS["rmia_offline"].fn(inputs, offline_a="auto")
    assert info["offline_a_fitted"] and len(info["offline_a"]) == 2 and len(info["offline_a_models"]) == 2
    for row, a in enumerate(info["offline_a"]):
        alone = inputs_of(logits, labels, keep, [row])
        np.testing.assert_array_equal(ATTACKS["rmia_offline"].fn(alone, offline_a=a)[0][0], scores[row])


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
def test_the_vote_fraction_is_one_function_of_the_ratios_for_members_and_non_members(gamma):
    """Examples 0 (in the population: a non-member) and 1 (a member) have the same ratios, and
    beat the same few z, as in a model that fits every example: they must score the same."""
    rng = np.random.default_rng(1)
    parts = [
        np.full((2, 3), 1.0),
        rng.uniform(0.9, 1.1, (30, 3)),
        rng.uniform(0.01, 0.2, (8, 3)),
        rng.uniform(3, 5, (8, 3)),
    ]
    ratio = np.concatenate(parts)  # x = 0, 1; ties; a few z they beat; a few they cannot beat
    population = np.array([0, *range(2, 48, 2)])
    fractions = rmia.vote_fractions(ratio, population, gamma)
    assert fractions[0] == fractions[1]
    wins = [2 * sum(ratio[1, q] / ratio[z, q] >= gamma for q in range(3)) > 3 for z in population]
    assert fractions[1] == pytest.approx(np.mean(wins)) and 0 < np.mean(wins) < 1


@pytest.mark.parametrize("name", ["rmia_online", "rmia_offline"])
def test_rmia_finds_nothing_where_there_is_nothing(name):
    """A null run with the ties of models that fit every example: most true-class probabilities
    are one float32 value, a few examples are hard for every model. Membership changes nothing,
    so the pooled AUC must be 0.5 up to sampling noise (0.485-0.512 over 7 seeds; dividing a
    non-member's wins by P - 1 and a member's by P gave 0.455 here)."""
    rng = np.random.default_rng(11)
    num_models, num_examples = 16, 600
    keep = masks.make_keep(num_models, num_examples, 0.5, 2)
    labels = np.zeros(num_examples, int)
    logits = np.zeros((num_models, num_examples, 1, 2))
    logits[..., 0, 0] = np.where(
        rng.random(num_examples) < 0.05, rng.normal(-2, 1, (num_models, num_examples)), 40.0
    )
    every = signals.signals_from_logits(logits, labels, signals.ProbabilitySignal("softmax", 1.0))
    targets = list(range(8))
    results = protocol.run_attacks(Run(keep, labels, every), [name], targets,
        attack_options={name: {"signal": "softmax", "temperature": 1.0}},
    )  # fmt: skip
    scores = results[name].scores
    assert abs(roc_auc_score(keep[targets].ravel(), scores.ravel()) - 0.5) < 0.025
