"""Trust the numbers: subsample intervals, permutation tests, the consistency ladder, compression.

Statistical tests here run on fixed seeds, so each is a deterministic check; the margins are
chosen so that the property, not luck, decides the outcome (each test says its rate and margin).
"""

import math

import numpy as np
import pytest
import torch

import infolens as il
from infolens.trust import ladder as ladders
from infolens.trust import permutation

from conftest import gaussian_pair, requires_gpu

MI_RHO_05 = 0.143841


# ---- the ladder's arithmetic ---------------------------------------------------------------------

def test_t_quantiles_match_tables():
    assert ladders.t_quantile(0.975, 10) == pytest.approx(2.228139, abs=2e-3)
    assert ladders.t_quantile(0.975, 26) == pytest.approx(2.055529, abs=2e-4)
    assert ladders.t_quantile(0.95, 1000) == pytest.approx(1.646379, abs=1e-5)


def test_extrapolation_is_exact_on_a_line_in_one_over_n():
    n, truth, slope = 4096, 0.7, -30.0
    levels = []
    for level in (1, 2, 3, 4):
        size = n / 2 ** level
        blocks = [truth + slope / size + d for d in (-0.01, 0.01)] * (2 ** (level - 1))
        levels.append((size, blocks))
    lad = ladders.build(truth + slope / n, n, levels)
    assert lad.extrapolated == pytest.approx(truth, abs=1e-12)
    assert lad.drift == pytest.approx(-slope / n, abs=1e-12)
    # pooled variance: every block deviates by 0.01 from its level mean
    dof = sum(2 ** l - 1 for l in (1, 2, 3, 4))
    expected = sum(size * len(b) * 1e-4 for size, b in levels) / dof / n
    assert lad.stderr == pytest.approx(math.sqrt(expected), rel=1e-12)
    assert lad.dof == dof


# ---- intervals -----------------------------------------------------------------------------------

def test_interval_covers_the_truth_at_its_nominal_rate(fast_engine):
    """95% intervals on 1-D Gaussians (rho = 0.5, N = 1000) over 120 seeds.

    Expected coverage 0.95 (binomial sd 0.02 over 120 trials); KSG's bias here is far below its
    spread. The window [0.87, 1.0) is 4 sd below nominal, and an interval that ignored the
    sampling variance (the pointwise stderr is 2-3x too small for KSG) covers well under 0.8.
    The ladder's standard error must also match the spread of the estimates across seeds.
    """
    hits, values, stderrs = 0, [], []
    for seed in range(120):
        x, y = gaussian_pair(1000, 0.5, seed)
        mi = il.mutual_info(x, y, ci=0.95, backend=fast_engine, seed=seed)
        lo, hi = mi.interval
        hits += lo <= MI_RHO_05 <= hi
        values.append(float(mi))
        stderrs.append(mi.stderr)
        assert lo < float(mi) < hi
    assert 0.87 <= hits / 120 < 1.0
    assert np.mean(stderrs) == pytest.approx(np.std(values), rel=0.3)


def test_interval_narrows_as_one_over_sqrt_n(fast_engine):
    widths = []
    for n in (2000, 8000):
        x, y = gaussian_pair(n, 0.5, 11)
        lo, hi = il.mutual_info(x, y, ci=0.9, backend=fast_engine).interval
        widths.append(hi - lo)
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.35)


# ---- permutation tests --------------------------------------------------------------------------

def test_permutation_p_values_are_uniform_under_independence(fast_engine):
    """100 independent pairs, 19 permutations each: p takes the values 1/20 .. 20/20 with equal
    probability. Mean 0.525 (sd of the mean 0.03); the share at p <= 0.1 is 0.1 (sd 0.03)."""
    ps = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        x, y = rng.standard_normal(300), rng.standard_normal(300)
        ps.append(il.mutual_info(x, y, n_permutations=19, backend=fast_engine, seed=seed).p_value)
    ps = np.array(ps)
    assert set(np.round(ps * 20)).issubset(set(range(1, 21)))
    assert ps.mean() == pytest.approx(0.525, abs=0.1)
    assert (ps <= 0.1).mean() <= 0.22


def test_permutation_p_value_is_minimal_under_strong_dependence(fast_engine):
    x, y = gaussian_pair(2000, 0.9, 3)
    mi = il.mutual_info(x, y, n_permutations=49, backend=fast_engine)
    assert mi.p_value == pytest.approx(1 / 50)
    assert mi.n_permutations == 49


def test_large_inputs_test_on_a_subsample(fast_engine):
    x, y = gaussian_pair(20000, 0.3, 4)
    mi = il.mutual_info(x, y, n_permutations=9, backend=fast_engine)
    assert mi.details["permutation_size"] == 5000
    assert mi.p_value == pytest.approx(0.1)
    full = il.mutual_info(x[:3000], y[:3000], n_permutations=9, permutation_size=10 ** 6, backend=fast_engine)
    assert full.details["permutation_size"] == 3000


def test_two_sample_test_of_a_divergence(fast_engine):
    rng = np.random.default_rng(5)
    p, q = rng.standard_normal((1500, 2)), rng.standard_normal((1200, 2))
    same = il.kl_divergence(p, q, n_permutations=19, backend=fast_engine)
    shifted = il.kl_divergence(p, q + 0.5, n_permutations=19, backend=fast_engine)
    assert same.p_value > 0.05
    assert shifted.p_value == pytest.approx(1 / 20)


def test_local_permutation_stays_within_neighbourhoods():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(500, 1, dtype=torch.float64)
    neighbours = permutation.local_neighbours(z, "reference")
    taken = permutation.local_permutation(neighbours, gen)
    assert bool((neighbours == taken[:, None]).any(1).all())
    assert taken.unique().numel() >= 0.9 * 500  # nearly a permutation


def test_conditional_independence_test(fast_engine):
    rng = np.random.default_rng(6)
    z = rng.standard_normal(1500)
    x = z + 0.5 * rng.standard_normal(1500)
    y_given_z = z + 0.5 * rng.standard_normal(1500)   # x and y independent given z
    y_dep = y_given_z + 0.5 * x                        # dependent given z
    ind = il.conditional_mutual_info(x, y_given_z, z, n_permutations=19, backend=fast_engine)
    dep = il.conditional_mutual_info(x, y_dep, z, n_permutations=19, backend=fast_engine)
    assert ind.p_value > 0.05
    assert dep.p_value == pytest.approx(1 / 20)


def test_labels_and_kernel_estimators_are_tested(fast_engine):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 900)
    x = labels[:, None] + 0.8 * rng.standard_normal((900, 2))
    ross = il.mutual_info(x, labels, ci=0.95, n_permutations=19, backend=fast_engine)
    assert ross.p_value == pytest.approx(1 / 20) and ross.interval[0] > 0
    a = rng.standard_normal((300, 2))
    dep = il.matrix_mutual_info(a, a + 0.3 * rng.standard_normal((300, 2)), n_permutations=19)
    ind = il.matrix_mutual_info(a, rng.standard_normal((300, 2)), n_permutations=19)
    assert dep.p_value == pytest.approx(1 / 20) and ind.p_value > 0.05
    tc = il.total_correlation([a[:, 0], a[:, 0] + 0.2 * a[:, 1], a[:, 1]], n_permutations=9)
    assert tc.p_value == pytest.approx(0.1)
    dsmi = il.diffusion_spectral_mutual_info(x[:400], labels[:400], n_permutations=9)
    assert dsmi.p_value == pytest.approx(0.1)


# ---- the consistency ladder ----------------------------------------------------------------------

def test_ladder_flags_ksg_in_high_dimension_at_high_mi(fast_engine):
    """10-D x 10-D, every coordinate pair at rho = 0.95: MI = 11.6 nats, where KSG at N = 4000
    reports a fraction of that and grows with N. The flag must be raised; the 1-D case at
    rho = 0.5 is the easy one, and must not."""
    x, y = gaussian_pair(4000, 0.95, 8, dims=10)
    hard = il.mutual_info(x, y, ladder=4, backend=fast_engine)
    assert hard.settled is False
    assert hard.ladder.means[0] > hard.ladder.means[-1] + 10 * hard.ladder.stderr
    x, y = gaussian_pair(4000, 0.5, 8)
    easy = il.mutual_info(x, y, ladder=4, backend=fast_engine)
    assert easy.settled is True
    assert easy.ladder.sizes == (4000, 2000, 1000, 500, 250)


def test_default_ladder_shortens_for_small_n_and_refuses_too_small(fast_engine):
    x, y = gaussian_pair(100, 0.5, 9)
    mi = il.mutual_info(x, y, ci=0.95, backend=fast_engine)
    assert len(mi.ladder.sizes) == 3  # 100 -> 50 -> 25: blocks of 12 would be under 16
    with pytest.raises(ValueError, match="ladder"):
        il.mutual_info(x, y, ladder=4, backend=fast_engine)
    with pytest.raises(ValueError, match="ladder"):
        il.mutual_info(x[:40], y[:40], ci=0.95, backend=fast_engine)


# ---- results ---------------------------------------------------------------------------------------

def test_trusted_result_keeps_the_plain_value_and_reads_well(fast_engine):
    x, y = gaussian_pair(3000, 0.5, 10)
    plain = il.mutual_info(x, y, backend=fast_engine)
    mi = il.mutual_info(x, y, ci=0.95, n_permutations=19, backend=fast_engine)
    assert float(mi) == float(plain)
    assert mi.details["pointwise_stderr"] == plain.stderr
    assert mi.tie_fraction == plain.tie_fraction
    text = str(mi)
    for part in ("95% interval", "p = 0.05", "ladder", "settled", "extrapolated"):
        assert part in text
    again = il.mutual_info(x, y, ci=0.95, n_permutations=19, backend=fast_engine)
    assert again.interval == mi.interval and again.p_value == mi.p_value


def test_lists_of_results_each_get_their_interval(fast_engine):
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 2, 1200)
    xs = [labels + rng.standard_normal(1200), rng.standard_normal(1200)]
    dep, ind = il.mutual_info_batch(xs, labels, ci=0.95, n_permutations=19, backend=fast_engine)
    assert dep.p_value == pytest.approx(1 / 20) and ind.p_value > 0.05
    assert dep.interval[0] > ind.interval[1]
    s1, s2 = il.matrix_entropy(rng.standard_normal((400, 3)), [1, 2], ci=0.9)
    assert s1.interval != s2.interval and s1.ladder.sizes == s2.ladder.sizes


def test_kernel_ladder_pins_the_bandwidth():
    """Subsamples keep the full data's kernel: a rule would pick another bandwidth at another N."""
    x = np.random.default_rng(13).standard_normal((512, 3)) * [1.0, 3.0, 0.2]
    median = il.matrix_entropy(x, sigma="median", ladder=2)
    explicit = il.matrix_entropy(x, sigma=median.details["sigma"][0], ladder=2)
    assert median.ladder.means == pytest.approx(explicit.ladder.means, abs=1e-12)
    silverman = il.matrix_entropy(x, ladder=2)  # standardises with the full data's spread
    standardised = (x - x.mean(0)) / x.std(0)
    explicit = il.matrix_entropy(standardised, sigma=silverman.details["sigma"][0], ladder=2)
    assert silverman.ladder.means == pytest.approx(explicit.ladder.means, abs=1e-9)


# ---- compression --------------------------------------------------------------------------------

def _low_rank(seed, n=3000, width=40):
    rng = np.random.default_rng(seed)
    z, zy = gaussian_pair(n, 0.75, seed, dims=3)
    mix = rng.standard_normal((3, width))
    return z, zy, z @ mix, zy @ rng.standard_normal((3, width))


def test_compression_recovers_the_subspace_and_is_rotation_invariant(fast_engine):
    z, zy, x, y = _low_rank(14)
    mi = il.mutual_info(x, y, compress=0.999, backend=fast_engine)
    assert mi.compression["x"].dims_in == 40 and mi.compression["x"].dims_out == 3
    assert mi.compression["x"].explained_variance >= 0.999
    truth = 3 * -0.5 * math.log(1 - 0.75 ** 2)
    assert float(mi) == pytest.approx(truth, abs=0.15)
    rotation, _ = np.linalg.qr(np.random.default_rng(15).standard_normal((40, 40)))
    rotated = il.mutual_info(x @ rotation, y, compress=3, backend=fast_engine)
    assert float(rotated) == pytest.approx(float(il.mutual_info(x, y, compress=3, backend=fast_engine)), abs=1e-9)
    projected = il.mutual_info(x, y, compress=("random", 8), backend=fast_engine)
    assert str(projected.compression["y"]) == "random projection 40 -> 8 dims"
    assert "compressed: x pca 40 -> 3 dims" in str(mi)


def test_compression_leaves_labels_and_narrow_variables_alone(fast_engine):
    z, _, x, _ = _low_rank(16, n=600)
    labels = (z[:, 0] > 0).astype(int)
    mi = il.mutual_info(x, labels, compress=5, backend=fast_engine)
    assert set(mi.compression) == {"x"}
    assert il.entropy(z, compress=5, backend=fast_engine).compression == {}
    kl = il.kl_divergence(x[:300], x[300:], compress=3, backend=fast_engine)
    assert set(kl.compression) == {"p_samples+q_samples"}


# ---- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(ci=1.5), "ci must be a confidence level"),
    (dict(ci=0), "ci must be a confidence level"),
    (dict(ci=True), "ci must be a confidence level"),
    (dict(n_permutations=0), "n_permutations must be a positive integer"),
    (dict(n_permutations=2.5), "n_permutations must be a positive integer"),
    (dict(ladder=0), "ladder must be a positive integer"),
    (dict(permutation_size=-3, n_permutations=5), "permutation_size must be a positive integer"),
    (dict(compress=0), "compress must be"),
    (dict(compress=1.5), "compress must be"),
    (dict(compress=("svd", 3)), "compress: method must be"),
])
def test_bad_trust_arguments_are_named(kwargs, match):
    x, y = gaussian_pair(200, 0.5, 0)
    with pytest.raises(ValueError, match=match):
        il.mutual_info(x, y, **kwargs)


def test_tests_that_do_not_apply_are_refused():
    x = np.random.default_rng(1).standard_normal((200, 2))
    with pytest.raises(ValueError, match="n_permutations: entropy"):
        il.entropy(x, n_permutations=10)
    with pytest.raises(ValueError, match="n_permutations: vendi_score"):
        il.vendi_score(x, n_permutations=10)
    k = np.exp(-((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    with pytest.raises(ValueError, match="compress: a precomputed kernel"):
        il.matrix_entropy(k, kernel="precomputed", compress=2)
    ranked = il.matrix_entropy(k, kernel="precomputed", ladder=2)  # square matrices subsample both axes
    assert ranked.ladder.sizes == (200, 100, 50)


# ---- GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@requires_gpu
def test_cuda_inputs_give_the_cpu_answers():
    x, y = gaussian_pair(4000, 0.5, 17)
    cpu = il.mutual_info(x, y, ci=0.95, n_permutations=19)
    gpu = il.mutual_info(torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda"), ci=0.95,
                         n_permutations=19)
    assert float(gpu) == pytest.approx(float(cpu), abs=1e-12)
    assert gpu.interval == pytest.approx(cpu.interval, abs=1e-12)
    assert gpu.p_value == cpu.p_value


@pytest.mark.parametrize("method, labels", [("ksg1", False), ("ksg2", False), ("mixed", False), ("ross", True)])
def test_shared_permutations_equal_the_generic_path(fast_engine, method, labels, monkeypatch):
    """The fast path reuses each variable's index across permutations; the statistics must not change."""
    import dataclasses
    rng = np.random.default_rng(18)
    x = rng.standard_normal((700, 2))
    y = rng.integers(0, 3, 700) if labels else x[:, :1] + rng.standard_normal((700, 1))
    if method == "mixed":
        x, y = np.maximum(x, 0), np.maximum(y, 0)
    fast = il.mutual_info(x, y, method=method, n_permutations=15, backend=fast_engine)
    generic = il.trust.trusted(dataclasses.replace(il.mutual_info.design, shared_null=None))
    slow = generic(il.mutual_info.__wrapped__)(x, y, method=method, n_permutations=15, backend=fast_engine)
    assert fast.details["null_statistics"] == slow.details["null_statistics"]
    assert len(set(fast.details["null_statistics"])) > 5  # distinct permutations, not one repeated
    assert fast.p_value == slow.p_value
