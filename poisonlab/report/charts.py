"""Line charts of diagnostics series (matplotlib, Agg) as PNG bytes for the report."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

X_KEYS = ("step", "steps", "epoch", "round", "iteration", "iter", "pass")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def series_of(value):
    """Numeric series in a diagnostics value, as {name: (xs, ys)}; {} when it holds none.

    Accepted forms: [1.0, 0.8, ...]; [{"step": 10, "acc": 0.3, ...}, ...] (one series per numeric key, x from
    a step-like key); {"name": [...], ...} (each list as above)."""
    if isinstance(value, list) and len(value) >= 2 and all(is_number(v) for v in value):
        return {"": (list(range(len(value))), list(value))}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        xkey = next((k for k in X_KEYS if all(is_number(v.get(k)) for v in value)), None)
        xs = [v[xkey] for v in value] if xkey else list(range(len(value)))
        keys = [k for k in value[0] if k != xkey and all(is_number(v.get(k)) for v in value)]
        return {k: (xs, [v[k] for v in value]) for k in keys} if len(value) >= 2 else {}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            for name, s in series_of(v).items() if isinstance(v, list) else ():
                out[f"{k} {name}".strip()] = s
        return out
    return {}


def line_chart(series: dict, title: str, xlabel: str = "step") -> bytes:
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    for name, (xs, ys) in list(series.items())[:10]:
        ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=name or title)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(alpha=0.3)
    if len(series) > 1 or next(iter(series), ""):
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
