"""Counts and summaries over the ownership bench's verdicts and accuracy pairs."""

import numpy as np
from scipy.stats import t as student_t

from ownership_cache import log
from ownership_settings import TESTS


def below(verdicts, level=0.01) -> dict:
    """Per test, how many of the verdicts (checks() results) have a p-value below level."""
    return {t: sum(v[t]["p_value"] < level for v in verdicts) for t in TESTS}


def mean_sd(values):
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0:.2f}"


def mean_se(values):
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None


def harmlessness(out: dict):
    """The declared harmlessness test over every draw's pairs: 90% interval inside +-1 point (TOST at 5%)."""
    diff = [d for r in out["draws"].values() for d in r["acc_diff"]]
    if len(diff) > 1:
        mean, se = mean_se(diff)
        half = float(student_t.ppf(0.95, len(diff) - 1) * se)
        out["harmlessness"] = {"pairs": len(diff), "mean": mean, "se": se, "interval90": [mean - half, mean + half],
                               "lower": sum(d < 0 for d in diff)}
        log(f"  harmlessness over {len(diff)} pairs: {mean:+.2f} ± {se:.2f}, 90% {mean - half:+.2f} to {mean + half:+.2f}")
