"""Reading the diagnostics a model-based method records (SurrogateMethod.record_diagnostics) back to a
person: what `poisonlab protect` prints at the end, and where held-out images come from."""

from .. import PoisonlabError
from ..data import load_dataset

HOLDOUT_SIZE = 1000


def holdout_for(source, size=HOLDOUT_SIZE, resize=None):
    """A class-balanced sample of the source's test split for the held-out diagnostics, or None when the
    source has none (the figures are then left out, the protection is the same)."""
    try:
        test = load_dataset(source, "test", resize=resize)
    except PoisonlabError:
        return None
    return test.stratified(size, seed=0) if len(test) else None


def summary_lines(d) -> list:
    """Human lines for a diagnostics dict (empty for methods that record none)."""
    if not d:
        return []
    if "edge_fraction" not in d:  # another method's own measurements (e.g. unlearnable clusters): as recorded
        return ["diagnostics: " + ", ".join(f"{k} {v}" for k, v in d.items())]
    lines = [f"noise: {d['edge_fraction'] * 100:.1f}% of pixels at +-eps; final surrogate on the protected "
             f"training images: loss {d['noise_train_loss']:.3f}, accuracy {d['noise_train_acc']:.1f}% "
             f"(clean images: loss {d['clean_train_loss']:.3f}, accuracy {d['clean_train_acc']:.1f}%)"]
    curve = d.get("heldout_curve") or []
    if curve:
        key = "step" if "step" in curve[0] else "round"
        points = ", ".join(f"{r[key]}: {r['heldout_clean_acc']:.1f}/{r['heldout_adv_acc']:.1f}" for r in curve)
        lines.append(f"surrogate on {d['heldout_size']} held-out images, clean/adversarial accuracy (%) by {key}: {points}")
    return lines
