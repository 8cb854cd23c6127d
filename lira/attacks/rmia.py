"""RMIA (Zarifzadeh, Liu, Shokri 2024, "Low-Cost High-Power Membership Inference Attacks").

    LR_q(u) = p_q(u | target) / p_q(u),   score(x) = fraction of population z with a majority of
                                                     queries q where LR_q(x) / LR_q(z) >= gamma

p must be a probability: a ratio of numbers outside [0, 1] (or of two signs) ranks nothing. The
default is p_y = softmax(z / 2)_y. The authors' signal (`signal="taylor"`: soft-margin Taylor
softmax, temperature 2, margin 0.6, 4 terms) is a cubic in z / 2, negative for logits below about
-3.2, which models that memorize produce in bulk; `terms=5` is a quartic, positive, so in [0, 1].
The choice is measured in docs/results/rmia_signal. Every call warns once
(`InvalidProbabilityWarning`) when the signal leaves [0, 1], and reports the fraction in its info.

The rest is the authors' CIFAR-10 configuration (ml_privacy_meter, research/2024_rmia: its
attack_configs for CIFAR-10, signals.py, main.py):
- p_q(u) is the 20% trimmed mean of p_q over the reference models of u; online over its IN and
  OUT references (equal numbers), offline over its OUT references, corrected to
  ((1 + a) p_out + (1 - a)) / 2 with a = 0.3 (their CIFAR-10 value; 0.6 for CIFAR-100, 0.2 for
  Purchase-100), or `offline_a="auto"`: the a under which the offline attack best finds the
  members of reference models attacked in the target's place (lira/attacks/rmia_offline_a.py);
- gamma = 2; with Q queries, the pairwise test per query and a majority vote over queries;
- the population is the target's non-members (all of them, as their code; `num_population`
  draws a subsample), the same for every x (`vote_fractions`). Their code then rescales
  non-members' fractions with a line that credits each one comparison it never won (with
  gamma > 1 the self-pair is never counted), which drives the AUC of saturated models below 0.5.

Many examples tie on the vote fraction; the query-mean LR(x) breaks ties, keeping every
fraction's order, so low FPRs are resolvable. Our earlier configuration stays as options:
`temperature=1` (plain p_y), `trim=0` (plain mean), `aggregation="mean"` (one test on the mean p).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from lira.attacks.common import EXAMPLE_CHUNK, AttackInputs
from lira.attacks.options import Option
from lira.attacks.rmia_offline_a import fit_offline_a
from lira.signals import RMIA_SIGNALS, ProbabilitySignal

AGGREGATIONS = ("vote", "mean")
DEFAULT_GAMMA = 2.0
DEFAULT_OFFLINE_A = 0.3
DEFAULT_NUM_POPULATION = None  # every non-member of the target, as the authors' code
DEFAULT_TRIM = 0.2
DEFAULT_AGGREGATION = "vote"
PAIR_BLOCK = 256  # examples x ...
POPULATION_BLOCK = 8192  # ... compared with this many z in one compiled call


class InvalidProbabilityWarning(UserWarning):
    """RMIA's probability signal has values outside [0, 1]."""


def check_options(gamma: float, trim: float, aggregation: str, offline_a=None) -> None:
    if not gamma > 0:
        raise ValueError(f"RMIA's gamma must be positive, got {gamma}.")
    if not 0 <= trim < 0.5:
        raise ValueError(f"RMIA's trim must lie in [0, 0.5), got {trim}.")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"Unknown RMIA aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}.")
    if offline_a is not None and offline_a != "auto" and not 0.0 <= float(offline_a) <= 1.0:
        raise ValueError(f"RMIA's offline a must lie in [0, 1] or be 'auto', got {offline_a}.")


def choose_population(population: np.ndarray, num_population: int | None, seed: int) -> np.ndarray:
    """A reproducible subsample (sorted indices) of at most `num_population` population examples."""
    population = np.asarray(population)
    if num_population and len(population) > num_population:
        rng = np.random.default_rng(seed)
        population = np.sort(rng.choice(population, size=num_population, replace=False))
    return population


@jax.jit
def _trimmed_mean_chunk(values, mask, cut):
    """values [M, c, Q]; mask bool [T, M, c]; cut int [T, c] -> [T, c, Q]: per target, example and
    query, the mean of the selected values after dropping the `cut` smallest and largest."""
    order = jnp.argsort(values, axis=0)
    ordered = jnp.take_along_axis(values, order, axis=0)

    def one_target(mask_t, cut_t):
        selected = jnp.take_along_axis(jnp.broadcast_to(mask_t[..., None], values.shape), order, axis=0)
        rank = jnp.cumsum(selected, axis=0)  # 1-based rank among the selected
        size = rank[-1]  # [c, Q]
        kept = selected & (rank > cut_t[:, None]) & (rank <= size - cut_t[:, None])
        total = jnp.sum(jnp.where(kept, ordered, 0.0), axis=0)
        return total / jnp.maximum(size - 2 * cut_t[:, None], 1)

    return jax.vmap(one_target)(mask, cut)


def trimmed_reference_mean(values: np.ndarray, mask: np.ndarray, trim: float,
                           chunk: int = EXAMPLE_CHUNK) -> np.ndarray:  # fmt: skip
    """Per target, the `trim`-trimmed mean over its selected references, as scipy.stats.trim_mean
    cuts (int(trim * n) from each end): values [M, N, Q], mask bool [T, M, N] -> [T, N, Q].

    The targets' selections differ from one shared set (the models any target selects for that
    example) by a few models each: the target itself and the reference that equal counts drop,
    or one OUT reference offline. So each chunk of examples sorts the shared set once, and a
    target's trimmed sum is a difference of two prefix sums of the sorted values with its few
    removed ones zeroed, at the sorted positions of its kept ranks (`_trimmed_by_removal`). A selection that removes more than
    MAX_REMOVED models from the shared set takes the general path (`_trimmed_mean_chunk`).
    """
    count = mask.sum(axis=1)  # [T, N]
    cut = np.array([[int(trim * n) for n in row] for row in count], dtype=np.int32)
    num_examples = values.shape[1]
    out = np.empty((mask.shape[0], num_examples, values.shape[-1]))
    for start in range(0, num_examples, chunk):
        stop = min(start + chunk, num_examples)
        block, block_mask = values[:, start:stop], mask[:, :, start:stop]
        removed = block_mask.any(axis=0)[None] & ~block_mask  # [T, M, c]
        if removed.sum(axis=1).max() <= MAX_REMOVED:
            out[:, start:stop] = _trimmed_by_removal(
                block, block_mask.any(axis=0), removed, cut[:, start:stop]
            )
            continue
        pad = chunk - (stop - start)  # one compiled shape for every chunk
        padded = np.pad(block, ((0, 0), (0, pad), (0, 0)))
        padded_mask = np.pad(block_mask, ((0, 0), (0, 0), (0, pad)))
        padded_cut = np.pad(cut[:, start:stop], ((0, 0), (0, pad)))
        result = _trimmed_mean_chunk(jnp.asarray(padded, jnp.float32), padded_mask, padded_cut)
        out[:, start:stop] = np.asarray(result)[:, : stop - start]
    return out


MAX_REMOVED = 8


def _sorted_position(rank: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The 0-based position in the shared sorted order of the rank-th (1-based) selected model:
    rank [c, 1]; removed [c, Q, r] the removed models' positions, ascending -> [c, Q]. Walking
    the removed positions in order, each one at or before the index pushes it one further."""
    index = np.broadcast_to(rank - 1, removed.shape[:2]).copy()
    for r in range(removed.shape[-1]):
        index += removed[..., r] <= index
    return index


def _trimmed_by_removal(
    values: np.ndarray, shared: np.ndarray, removed: np.ndarray, cut: np.ndarray
) -> np.ndarray:
    """values [M, c, Q]; shared bool [M, c]: the models some target selects; removed bool
    [T, M, c]: those a target does not (at most MAX_REMOVED); cut int [T, c] -> [T, c, Q]."""
    num_models, num_examples, num_queries = values.shape
    layout = np.ascontiguousarray(np.where(shared[..., None], values, np.inf).transpose(1, 2, 0))  # [c, Q, M]
    order = np.argsort(layout, axis=-1).astype(np.int32)
    ordered = np.take_along_axis(layout, order, axis=-1)
    position = np.empty_like(order)  # position[c, q, m]: where model m sits in the sorted order
    np.put_along_axis(position, order, np.arange(num_models)[None, None], axis=-1)
    finite = np.where(np.isfinite(ordered), ordered, 0.0).astype(np.float64)  # non-shared models: 0
    shared_count = shared.sum(axis=0)  # [c]
    out = np.empty((len(removed), num_examples, num_queries))
    examples = np.arange(num_examples)[:, None, None]
    queries = np.arange(num_queries)[None, :, None]
    for row, (gone, row_cut) in enumerate(zip(removed, cut)):
        # Up to MAX_REMOVED removed models per example, as sorted positions [c, Q, r] (padding: past the end).
        width = max(int(gone.sum(axis=0).max()), 1)
        slots = np.argsort(~gone, axis=0, kind="stable")[:width].T  # [c, r] model indices, removed first
        present = np.take_along_axis(gone.T, slots, axis=1)  # [c, r]
        where = np.where(present[:, None, :], position[examples, queries, slots[:, None, :]], num_models)
        where = np.sort(where, axis=-1)  # [c, Q, r], ascending
        # The removed values are zeroed before summing (a write, not arithmetic), so a target's
        # own value never enters its sums, not even as rounding (tested with a poisoned target).
        own = finite.copy()
        at = np.minimum(where, num_models - 1)
        np.put_along_axis(
            own, at, np.where(where < num_models, 0.0, np.take_along_axis(own, at, axis=-1)), axis=-1
        )
        prefix = np.concatenate([np.zeros((num_examples, num_queries, 1)), np.cumsum(own, axis=-1)], axis=-1)
        size = (shared_count - present.sum(axis=1))[:, None]  # [c, 1] models selected
        keep_low, keep_high = row_cut[:, None], size - row_cut[:, None]  # kept ranks (1-based) low+1 .. high

        low, high = _sorted_position(keep_low + 1, where), _sorted_position(keep_high, where)
        total = (
            np.take_along_axis(prefix, (high + 1)[..., None], -1)[..., 0]
            - np.take_along_axis(prefix, low[..., None], -1)[..., 0]
        )
        out[row] = total / np.maximum(keep_high - keep_low, 1)
    return out


@functools.partial(jax.jit, static_argnames="num_queries")
def _vote_counts(ratio_x, inverse_ratio_z, valid_z, gamma, num_queries):
    """ratio_x [Q, B], inverse_ratio_z [Q, P], valid_z bool [P] -> int [B]: how many z win the
    majority of the Q per-query tests LR_q(x) * (1 / LR_q(z)) >= gamma.

    Queries are the outer loop, adding one int8 [B, P] of passes at a time: the pass counts stay
    in cache and every comparison runs along the contiguous population axis (faster on the CPU
    than reducing over the short query axis of a [B, P, Q] block:
    docs/results/implementation_choices/README.md)."""

    dtype = jnp.int8 if num_queries < 128 else jnp.int16  # 162 queries overflow int8

    def add_query(q, count):
        passed = ratio_x[q][:, None] * inverse_ratio_z[q][None, :] >= gamma
        return count + passed.astype(dtype)

    shape = (ratio_x.shape[1], inverse_ratio_z.shape[1])
    count = jax.lax.fori_loop(0, num_queries, add_query, jnp.zeros(shape, dtype))
    return jnp.sum((2 * count.astype(jnp.int32) > num_queries) & valid_z[None, :], axis=-1)


def vote_fractions(ratio: np.ndarray, population: np.ndarray, gamma: float) -> np.ndarray:
    """For every pool example x, the fraction of population z with LR_q(x) / LR_q(z) >= gamma
    on a majority of the Q queries: one function of x's ratios, member or not.

    A non-member x is compared with itself like any z (LR_q(x) / LR_q(x) being 1: a loss for
    gamma > 1, a win otherwise, as a member's comparison with a non-member twin of equal ratios). Leaving it out, dividing a non-member's wins by P - 1 and a member's by P, ranks a
    non-member above every member with as many wins; where many examples beat the same few z
    (models that fit every example) that inverts the attack (on the digits demo, AUC below 0.5).

    ratio: float [N, Q], LR_q of every pool example; population: int [P] -> float [N]. The
    division is made as the authors' code makes it, LR_q(x) * (1 / LR_q(z)), in float32.
    """
    if not gamma > 0:
        raise ValueError(f"RMIA's gamma must be positive, got {gamma}.")
    if len(population) == 0:
        raise ValueError("RMIA needs at least one population example (a pool example outside the target).")
    num_examples, num_queries = ratio.shape
    ratio = ratio.astype(np.float32)
    with np.errstate(divide="ignore"):
        inverse = (1.0 / ratio[population]).astype(np.float32)
    # Blocks of PAIR_BLOCK examples x against POPULATION_BLOCK z: one compiled shape, and a pass
    # count block that fits the cache. The population is padded with invalid z.
    block = min(POPULATION_BLOCK, 1 << max(8, int(np.ceil(np.log2(len(population))))))  # few shapes
    padding = -len(population) % block
    valid = np.arange(len(population) + padding) < len(population)
    inverse = np.ascontiguousarray(np.pad(inverse, ((0, padding), (0, 0)), constant_values=1.0).T)  # [Q, P]
    padded = np.ascontiguousarray(
        np.pad(ratio, ((0, -num_examples % PAIR_BLOCK), (0, 0)), constant_values=1.0).T
    )
    counts = np.zeros(num_examples, np.int64)
    for z in range(0, inverse.shape[1], block):
        block_z = jnp.asarray(inverse[:, z : z + block])
        valid_z = jnp.asarray(valid[z : z + block])
        for start in range(0, num_examples, PAIR_BLOCK):
            stop = min(start + PAIR_BLOCK, num_examples)
            votes = _vote_counts(jnp.asarray(padded[:, start : start + PAIR_BLOCK]), block_z, valid_z, gamma,
                                 num_queries)  # fmt: skip
            counts[start:stop] += np.asarray(votes)[: stop - start]
    return counts / len(population)


def break_ties(fraction: np.ndarray, tie_breaker: np.ndarray) -> np.ndarray:
    """fraction [N] plus less than half the smallest gap between two distinct fractions, in the
    order of tie_breaker [N]: distinct fractions keep their order, equal ones are ordered."""
    distinct = np.unique(fraction)
    gap = np.min(np.diff(distinct)) if len(distinct) > 1 else 1.0
    rank = np.argsort(np.argsort(tie_breaker, kind="stable"), kind="stable") / len(fraction)
    return fraction + 0.5 * gap * rank


def outside_unit_interval(probability: np.ndarray) -> tuple[int, int]:
    """(values not in [0, 1], values) of a probability signal [M, N, Q]; NaN counts as outside."""
    inside = np.count_nonzero((probability >= 0) & (probability <= 1))
    return int(probability.size - inside), int(probability.size)


def _probability(inputs: AttackInputs, name: str, aggregation: str, signal: str, temperature: float,
                 margin: float, terms: int) -> tuple[np.ndarray, dict]:  # fmt: skip
    """-> (p [M, N, Q], or [M, N, 1] averaged over queries for aggregation="mean"; info for the
    report: {"signal_outside_unit_interval": fraction}). Checks that the signals hold the
    probability asked for, and warns once if it leaves [0, 1]."""
    computed = inputs.signals.probability_signal
    wanted = (signal, float(temperature), float(margin), int(terms))
    if computed is None or inputs.signals.probability is None:
        raise ValueError("RMIA needs the probability signal: load signals with probability_signal set.")
    have = (computed.kind, float(computed.temperature), float(computed.margin), int(computed.terms))
    if have != wanted:
        raise ValueError(f"RMIA was asked for signal {wanted} but the signals hold {have}.")
    outside, total = outside_unit_interval(inputs.signals.probability)
    if outside:
        warnings.warn(
            f"{name}: {outside} of the {total} values ({outside / total:.2%}) of its signal lie outside [0, 1] "
            f"(--rmia_signal={signal} --rmia_temperature={temperature:g}"
            + (f" --rmia_margin={margin:g} --rmia_terms={terms})" if signal == "taylor" else ")")
            + ", so its likelihood ratios are not ratios of probabilities (--rmia_signal=softmax is always in "
            "[0, 1]).", InvalidProbabilityWarning, stacklevel=3,
        )  # fmt: skip
    probability = inputs.signals.probability
    probability = probability.mean(axis=-1, keepdims=True) if aggregation == "mean" else probability
    return probability, {"signal_outside_unit_interval": outside / total}


def attack_scores(ratio: np.ndarray, population: np.ndarray, gamma: float, num_population: int | None,
                  seed: int) -> np.ndarray:  # fmt: skip
    """ratio [N, Q] of one target, population int [P] -> scores [N]: vote fractions, ties broken."""
    fraction = vote_fractions(ratio, choose_population(population, num_population, seed), gamma)
    return break_ties(fraction, ratio.mean(axis=-1))


def _rmia(inputs, probability, reference_mask, gamma, trim, num_population, offline_a=None):
    reference = trimmed_reference_mean(probability, reference_mask, trim)  # [T, N, Q]
    if offline_a is not None:
        reference = (1.0 + offline_a)[:, None, None] / 2 * reference + (1.0 - offline_a)[:, None, None] / 2
    target = probability[inputs.targets].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = target / reference
    return np.stack([
        attack_scores(ratio[row], inputs.populations[row], gamma, num_population, inputs.seeds[row])
        for row in range(inputs.num_targets)
    ])  # fmt: skip


def rmia_online(inputs: AttackInputs, gamma: float = DEFAULT_GAMMA, num_population: int | None = DEFAULT_NUM_POPULATION,
                trim: float = DEFAULT_TRIM, aggregation: str = DEFAULT_AGGREGATION,
                signal: str = ProbabilitySignal.kind, temperature: float = ProbabilitySignal.temperature,
                margin: float = ProbabilitySignal.margin, terms: int = ProbabilitySignal.terms):  # fmt: skip
    """-> (scores [T, N], info); p(u) over each example's IN and OUT references (equal numbers)."""
    check_options(gamma, trim, aggregation)
    probability, info = _probability(inputs, "rmia_online", aggregation, signal, temperature, margin, terms)
    return _rmia(inputs, probability, inputs.is_in | inputs.is_out, gamma, trim, num_population), info


def rmia_offline(inputs: AttackInputs, gamma: float = DEFAULT_GAMMA, offline_a: float | str = DEFAULT_OFFLINE_A,
                 num_population: int | None = DEFAULT_NUM_POPULATION, trim: float = DEFAULT_TRIM,
                 aggregation: str = DEFAULT_AGGREGATION, signal: str = ProbabilitySignal.kind,
                 temperature: float = ProbabilitySignal.temperature, margin: float = ProbabilitySignal.margin,
                 terms: int = ProbabilitySignal.terms):  # fmt: skip
    """-> (scores [T, N], info: the a per target, whether fitted, and on which models);
    OUT references only, with p(u) = ((1 + a) p_out(u) + (1 - a)) / 2, a given or fitted ("auto")."""
    check_options(gamma, trim, aggregation, offline_a)
    probability, info = _probability(inputs, "rmia_offline", aggregation, signal, temperature, margin, terms)
    if offline_a == "auto":
        a, info["offline_a_models"] = fit_offline_a(
            inputs, probability, lambda mask: trimmed_reference_mean(probability, mask, trim),
            lambda ratio, population, seed: attack_scores(ratio, population, gamma, num_population, seed),
        )  # fmt: skip
    else:
        a = np.full(inputs.num_targets, float(offline_a))
    scores = _rmia(inputs, probability, inputs.offline_out, gamma, trim, num_population, a)
    return scores, {"offline_a": [float(v) for v in a], "offline_a_fitted": offline_a == "auto", **info}


def _offline_a_problem(value: str) -> str | None:
    if value == "auto":
        return None
    try:
        a = float(value)
    except ValueError:
        a = -1.0
    return None if 0 <= a <= 1 else "must be a number in [0, 1] or 'auto'"


# The attack stage's flags (lira.attacks.options): one set for both attacks, so that they read
# the one probability signal the signals were loaded with (lira.attacks.probability_signal).
GAMMA = Option("rmia_gamma", "gamma", DEFAULT_GAMMA, "RMIA: LR(x) / LR(z) threshold.",
               check=lambda gamma: None if gamma > 0 else "must be > 0")  # fmt: skip
NUM_POPULATION = Option(
    "rmia_num_population", "num_population", 0, "RMIA: population examples z (0 = every non-member, as the authors).",
    check=lambda count: None if count >= 0 else "must be >= 0", convert=lambda count: count or None,
)  # fmt: skip
TRIM = Option("rmia_trim", "trim", DEFAULT_TRIM, "RMIA: fraction trimmed from each end of the reference mean.",
              check=lambda trim: None if 0 <= trim < 0.5 else "must be in [0, 0.5)")  # fmt: skip
AGGREGATION = Option(
    "rmia_aggregation", "aggregation", DEFAULT_AGGREGATION,
    "RMIA: a test per query and a majority vote, or p averaged over queries.", choices=AGGREGATIONS,
)  # fmt: skip
SIGNAL = Option(
    "rmia_signal", "signal", ProbabilitySignal.kind, "RMIA: p_y of softmax(z / T), always in [0, 1] "
    "(docs/results/rmia_signal), or taylor: the authors' Taylor soft-margin softmax (with --rmia_terms=4 a cubic "
    "that leaves [0, 1]).", choices=RMIA_SIGNALS,
)  # fmt: skip
TEMPERATURE = Option(
    "rmia_temperature", "temperature", ProbabilitySignal.temperature,
    "RMIA: T, logits are divided by this before the signal.", check=lambda t: None if t > 0 else "must be > 0",
)  # fmt: skip
MARGIN = Option("rmia_margin", "margin", ProbabilitySignal.margin, "RMIA: the Taylor signal's soft margin m.")
TERMS = Option(
    "rmia_terms", "terms", ProbabilitySignal.terms, "RMIA: terms of the Taylor signal's truncated exponential "
    "(4, the authors': a cubic; 5: a quartic, always in [0, 1]).",
    check=lambda terms: None if terms >= 1 else "must be >= 1",
)  # fmt: skip
OFFLINE_A = Option(
    "rmia_offline_a", "offline_a", str(DEFAULT_OFFLINE_A), "RMIA offline: a in p = ((1 + a) p_out + (1 - a)) / 2, "
    "in [0, 1], or 'auto': the a under which the offline attack best finds a reference model's members (needs 2 "
    "OUT references per example).",
    check=_offline_a_problem, convert=lambda a: a if a == "auto" else float(a),
)  # fmt: skip
ONLINE_OPTIONS = (GAMMA, NUM_POPULATION, TRIM, AGGREGATION, SIGNAL, TEMPERATURE, MARGIN, TERMS)
OFFLINE_OPTIONS = (GAMMA, OFFLINE_A, NUM_POPULATION, TRIM, AGGREGATION, SIGNAL, TEMPERATURE, MARGIN, TERMS)
