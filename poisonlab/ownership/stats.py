"""The tests behind a verdict, and the checks of their null distributions.

Taggants (Bouaziz et al. 2024): with K keys whose labels are uniform and independent of the suspect, the
number of keys whose label is among the suspect's top-k answers is Binomial(K, k / C) for any model that
did not learn the keys. The p-value P(X >= hits) is computed exactly (scipy.stats.binom).

Rank-sum variant (an addition, not in the paper): the rank of a key's label among the suspect's answers is
uniform on 1..C for such a model, independently across keys, so the sum of the ranks has an exact null (the
K-fold convolution of a discrete uniform). It uses every answer, not only whether the label is in the top k,
which matters at few classes (C = 10: a top-1 hit has chance 10%, the paper's top-10 of 1000 classes 1%).
A label-only black box gives ranks up to its k answers; ranks beyond are censored at k + 1, whose null
probability is (C - k) / C, so the test stays exact (k = 1 gives back the binomial test).

Reference rank-sum (an addition): the same test on ranks taken after subtracting, class by class, the
log-probabilities the owner's clean surrogate gives each key image (stored in the key file at marking time).
Part of what a suspect answers on a key is the "natural" answer any model trained on that data gives a
grating; whether the key label happens to be that answer is luck of the key draw, shared by marked and clean
models alike (measured: the rank of a key label in marked victims correlates 0.72 with its rank in clean
models). The difference keeps what the marking added. The surrogate never saw the key labels (it is trained
on the clean data before they matter), so for a suspect that did not learn the keys the key label is still
uniform and independent of the differences: its rank is uniform on 1..C and the exact null is unchanged.

Backdoor watermark (DVBW, Li et al. 2022): on m benign images, P_b = the suspect's probability of the target
class, P_w = the same on the triggered copies; a one-sided paired t-test of H0: P_w <= P_b + tau against
H1: P_w > P_b + tau (tau = margin, 0.2 in the paper).

Discrete p-values are conservative (P(p <= a) <= a) but not uniform, so a KS test of them against U(0, 1)
would reject even a perfect null. `randomized_pvalue` spreads each atom uniformly (P(X > h) + U * P(X = h)),
which is exactly U(0, 1) under the null: that is what the null checks test.
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from .. import PoisonlabError


@dataclass
class TestResult:
    statistic: float  # hits (taggants) or t (backdoor)
    p_value: float
    name: str  # "binomial top-k" | "paired t-test"
    detail: dict


def binomial_test(hits: int, trials: int, top_k: int, num_classes: int) -> TestResult:
    """One-sided exact binomial test: p = P(Binomial(trials, top_k / num_classes) >= hits)."""
    if trials < 1 or not 0 <= hits <= trials:
        raise PoisonlabError(f"binomial test needs trials >= 1 and 0 <= hits <= trials, got {hits}/{trials}")
    if not 1 <= top_k < num_classes:
        raise PoisonlabError(f"top_k must be in [1, {num_classes - 1}], got {top_k}")
    p0 = top_k / num_classes
    p = float(_st.binom.sf(hits - 1, trials, p0))
    return TestResult(float(hits), min(1.0, p), "binomial top-k",
                      {"hits": int(hits), "trials": int(trials), "top_k": int(top_k), "null_rate": p0,
                       "expected_hits": trials * p0})


def _censored_rank_pmf(num_classes: int, censor: int | None) -> np.ndarray:
    """pmf of one null rank on 1..c+1: ranks 1..c have 1/C each, the last value is "beyond c" (the suspect
    answered only c labels) or rank C itself when nothing is censored."""
    c = num_classes - 1 if censor is None or censor >= num_classes else int(censor)
    one = np.full(c + 1, 1.0 / num_classes)
    one[c] = (num_classes - c) / num_classes
    return one


def rank_sum_null(trials: int, num_classes: int, censor: int | None = None) -> np.ndarray:
    """pmf of the sum of `trials` independent null ranks (index i is the sum trials + i)."""
    one, pmf = _censored_rank_pmf(num_classes, censor), np.ones(1)
    for _ in range(int(trials)):
        pmf = np.convolve(pmf, one)
    return pmf


def rank_sum_test(ranks, num_classes: int, censor: int | None = None) -> TestResult:
    """One-sided exact test that the key labels rank better (smaller) than chance: p = P(S_null <= sum).
    ranks: 1 = the suspect's first answer; with `censor` = c answers known, an unknown rank is c + 1."""
    r = np.asarray(ranks, dtype=np.int64).reshape(-1)
    one = _censored_rank_pmf(num_classes, censor)
    if len(r) < 1 or r.min() < 1 or r.max() > len(one):
        raise PoisonlabError(f"ranks must be in [1, {len(one)}], got {r.min()}..{r.max()}")
    total = int(r.sum())
    p = float(rank_sum_null(len(r), num_classes, censor)[:total - len(r) + 1].sum())
    return TestResult(float(total), min(1.0, p), "rank-sum",
                      {"rank_sum": total, "trials": int(len(r)), "num_classes": int(num_classes),
                       "censor": len(one) - 1 if len(one) < num_classes else None, "mean_rank": float(r.mean()),
                       "expected_mean_rank": float(np.arange(1, len(one) + 1) @ one), "hits": int((r == 1).sum()),
                       "ranks": r.tolist()})


def randomized_rank_pvalue(rank_sum: int, trials: int, num_classes: int, u: float, censor=None) -> float:
    """P(S < s) + u * P(S = s) under the rank-sum null: exactly U(0, 1) under the null."""
    pmf = rank_sum_null(trials, num_classes, censor)
    i = int(rank_sum) - int(trials)
    return float(pmf[:i].sum() + u * pmf[i])


def randomized_pvalue(hits: int, trials: int, p0: float, u: float) -> float:
    """P(X > hits) + u * P(X = hits), X ~ Binomial(trials, p0), u ~ U(0,1): exactly uniform under the null."""
    return float(_st.binom.sf(hits, trials, p0) + u * _st.binom.pmf(hits, trials, p0))


def paired_t_test(p_watermarked, p_benign, margin: float = 0.2) -> TestResult:
    """One-sided paired t-test of H1: mean(P_w - P_b) > margin. Degenerate (zero-variance) differences
    give p = 0 or 1 by the sign of mean - margin."""
    pw = np.asarray(p_watermarked, dtype=np.float64).reshape(-1)
    pb = np.asarray(p_benign, dtype=np.float64).reshape(-1)
    if pw.shape != pb.shape or len(pw) < 2:
        raise PoisonlabError(f"paired t-test needs two equal-length samples of >= 2, got {len(pw)} and {len(pb)}")
    d = pw - pb - margin
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd < 1e-12:
        t, p = (np.inf, 0.0) if mean > 0 else (-np.inf if mean < 0 else 0.0, 1.0)
    else:
        t = mean / (sd / np.sqrt(len(d)))
        p = float(_st.t.sf(t, len(d) - 1))
    return TestResult(float(t), p, "paired t-test",
                      {"m": int(len(d)), "margin": float(margin), "mean_p_watermarked": float(pw.mean()),
                       "mean_p_benign": float(pb.mean()), "mean_increase": float((pw - pb).mean())})


def uniformity(pvalues) -> dict:
    """KS test of p-values against U(0, 1) plus their false-positive rates at 0.05 and 0.01."""
    p = np.asarray(pvalues, dtype=np.float64)
    if len(p) < 2:
        raise PoisonlabError("need at least 2 p-values")
    ks = _st.kstest(p, "uniform")
    return {"n": int(len(p)), "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "fpr_0.05": float((p <= 0.05).mean()), "fpr_0.01": float((p <= 0.01).mean()),
            "mean": float(p.mean())}


def hits_goodness_of_fit(hits, trials: int, p0: float) -> dict:
    """Compare the observed hit counts with Binomial(trials, p0): counts per value and a chi-square test
    (bins pooled from the upper tail until each expects >= 5)."""
    h = np.asarray(hits, dtype=np.int64)
    n = len(h)
    pmf = _st.binom.pmf(np.arange(trials + 1), trials, p0)
    observed = np.bincount(h, minlength=trials + 1)[:trials + 1].astype(np.float64)
    expected = pmf * n
    # pool adjacent bins from the top until each expected count is >= 5 (the usual chi-square rule)
    obs_b, exp_b, o, e = [], [], 0.0, 0.0
    for i in range(trials + 1):
        o, e = o + observed[i], e + expected[i]
        if e >= 5 and expected[i + 1:].sum() >= 5:
            obs_b.append(o), exp_b.append(e)
            o = e = 0.0
    if e > 0 or o > 0:
        if exp_b:
            obs_b[-1] += o
            exp_b[-1] += e
        else:
            obs_b.append(o), exp_b.append(e)
    if len(exp_b) >= 2:
        chi = _st.chisquare(obs_b, exp_b)
        chi_stat, chi_p = float(chi.statistic), float(chi.pvalue)
    else:
        chi_stat, chi_p = float("nan"), float("nan")
    return {"n": int(n), "trials": int(trials), "null_rate": float(p0),
            "observed": observed.astype(int).tolist(), "expected": [round(float(x), 3) for x in expected],
            "mean_hits": float(h.mean()) if n else float("nan"), "expected_mean": trials * p0,
            "chi2": chi_stat, "chi2_bins": len(exp_b), "chi2_pvalue": chi_p}
