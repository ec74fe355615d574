"""How a grid names things in tables and plots: methods by their registry label, countermeasures by their
own display(), budgets as k/255."""

from ..budget import budget_text
from ..defenses import parse_defense
from .rows import row

__all__ = ["method_label", "budget_note", "defense_label", "at_radius_label", "metric_for", "budget_text"]


def method_label(m):
    """The registry's display label (a plugin method's own; an attack's marked as one); the unprotected
    baseline is 'Clean'."""
    return row(m).label()


def budget_note(methods):
    """Methods whose budget is not the grid's L-inf budget (their own default or configured eps)."""
    other = [m for m in methods if row(m).own_budget]
    return f" ({', '.join(method_label(m) for m in other)}: own budget, see the protection manifests)" if other else ""


def defense_label(spec: str) -> str:
    return parse_defense(spec).display()


def at_radius_label(spec: str) -> str:
    d = parse_defense(spec)
    if d.name == "none":
        return "0"
    if d.name == "at":
        return budget_text(d.eps)
    return defense_label(spec)


def metric_for(exp, spec):
    return exp.metric or parse_defense(spec).report
