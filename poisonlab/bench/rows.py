"""A grid row's method behind one interface: a protection (METHODS) or a poisoning attack ("attack:NAME",
ATTACKS). `row(name)` resolves the kind once from the name; the grid, its config and its labels ask the row
(budget norm, options, code hash, label, how its training set is made, how a victim is scored) instead of
branching on the kind. The unprotected baseline ("clean") is a row too, with a label and no budget; it is
never made or scored (cells without protection never ask).

Rows look their registry up on each question, not when made, so an unknown name fails where it is used
(with the registry's message) and a plugin registered later is seen.
"""

import inspect
from pathlib import Path

from .. import PoisonlabError
from ..hashing import bytes_hash
from ..protect.pipeline import protect
from ..registry import ATTACKS, METHODS
from .poisoning import attack_name, is_attack, poison_training_set, score

CLEAN = "clean"  # the unprotected baseline's name in configs and cells


class Row:
    """What every row answers: label(), code_hash(), score(), norm and whether the grid's budgets apply; each
    kind adds options() and make() (how its training set is made) and overrides what differs."""

    registry = None  # where the row's class is registered
    norm = None  # the norm of the row's budget (None: no budget, the clean baseline)
    verb = ""  # what the grid's log says it does to the training set
    scored = False  # the victim model is needed afterwards to score the row (score())

    def __init__(self, method: str):
        self.method = method  # the name as the grid spells it

    @property
    def name(self) -> str:
        """The registry name."""
        return self.method

    def cls(self):
        return self.registry.get(self.name)

    def label(self) -> str:
        """The name in tables and plots: the registry's display label (a plugin's own)."""
        return self.registry.label(self.name)

    @property
    def grid_budget(self) -> bool:
        """The grid's budgets (L-inf) apply to the row: its cells are one per budget. Only L-inf protections."""
        return self.norm == "linf"

    @property
    def own_budget(self) -> bool:
        """The row keeps a budget of its own (its default or the eps in protect.methods), not the grid's."""
        return self.norm is not None and not self.grid_budget

    def code_hash(self) -> str:
        """Hash of the source files the row's class is built from (its class hierarchy). Recorded beside each
        cached protected set (not part of its key, so a comment edit does not force hours of regeneration); a
        mismatch is reported as a warning."""
        try:
            cls = self.cls()
        except PoisonlabError:
            return "unavailable"
        sources = []
        for klass in cls.__mro__:
            if klass.__module__.startswith("poisonlab."):
                try:
                    sources.append(Path(inspect.getsourcefile(klass)).read_bytes())
                except (OSError, TypeError):
                    pass
        return bytes_hash(*sources, length=16)

    def score(self, model, manifest: dict, folder, test, defense) -> dict | None:
        """The row's own metric for a victim trained on its set (None: clean accuracy says it all)."""
        return None


class CleanRow(Row):
    """The unprotected baseline: a label and no budget (cells without protection ask nothing else)."""

    def label(self) -> str:
        return "Clean"


class ProtectionRow(Row):
    """A registered protection method: the grid's L-inf budgets apply to it when its norm is L-inf; its options
    are protect.defaults overlaid with protect.methods[name]; `poisonlab protect` makes its training set and
    victims are judged by clean accuracy alone."""

    registry = METHODS
    verb = "protect"

    @property
    def norm(self) -> str:
        """The norm of the method's budget: the grid's budgets (L-inf) apply to L-inf methods only (grid_budget).
        Others (AR's L2, CUDA's filters) keep their own default or the eps given in protect.methods."""
        return self.cls().norm

    def options(self, protect_cfg: dict, budget: float | None) -> dict:
        """The method's options from a config's `protect` mapping, at a grid budget (None: its own)."""
        opts = dict(protect_cfg.get("defaults", {}))
        if budget is None:  # a method with its own kind of budget (see norm)
            opts.pop("eps", None)
        opts.update(protect_cfg.get("methods", {}).get(self.method, {}))
        if budget is not None:
            opts["eps"] = budget
        return opts

    def make(self, opts: dict, train, test, folder, *, device, progress):
        """Generate the row's training set from `train` and publish it to folder (resuming a partial one)."""
        protect(self.method, train, folder, resume=True, progress=progress, device=device, **opts)


class AttackRow(Row):
    """A registered poisoning attack as "attack:NAME" (poisonlab.bench.poisoning): its budget is always its
    own, its options are protect.methods["attack:NAME"] alone (protect.defaults are protections'), and
    victims are scored by the attack's own metric beside clean accuracy."""

    registry = ATTACKS
    verb = "poison"
    scored = True

    @property
    def name(self) -> str:
        return attack_name(self.method)

    @property
    def norm(self) -> str:
        return "attack"

    def label(self) -> str:
        return f"{super().label()} (attack)"

    def options(self, protect_cfg: dict, budget: float | None) -> dict:
        """protect.methods["attack:NAME"] alone; the grid's budget never applies."""
        return dict(protect_cfg.get("methods", {}).get(self.method, {}))

    def make(self, opts: dict, train, test, folder, *, device, progress):
        """Poison `train` (targets drawn from `test` for a targeted attack) and publish it to folder."""
        poison_training_set(self.method, dict(opts, device=device), train, test, folder)

    def score(self, model, manifest: dict, folder, test, defense) -> dict | None:
        """ASR for a backdoor, hits for a targeted attack, None for a label attack (read against clean)."""
        return score(model, manifest, folder, test, defense)


def row(method) -> Row:
    """The row of a grid method name ("clean" included)."""
    if method == CLEAN:
        return CleanRow(method)
    return AttackRow(method) if is_attack(method) else ProtectionRow(method)
