"""One registry mechanism (timm style) for protection methods, poisoning attacks, defenses and models.

    from poisonlab.registry import METHODS
    @METHODS.register(aliases=("mm",), label="min-max-min")
    class MinMaxMin(Protection): name = "minmaxmin"; ...
    METHODS.create("minmaxmin", eps=8/255)       # unknown options are a PoisonlabError, not a TypeError

Third-party packages add entries without editing poisonlab: an entry point in the group
`poisonlab.plugins` (pyproject: [project.entry-points."poisonlab.plugins"] myplug = "mypkg.plugin")
names a module (imported; its decorators register) or a callable (called with no arguments). Plugins load
lazily, once, the first time a registry is listed or asked for a name it does not know; a plugin that
fails to load is reported as a warning and skipped, so one broken package cannot break poisonlab.
"""

import importlib
import inspect
import warnings
from importlib.metadata import entry_points

from .errors import PoisonlabError
from .options import coerce_options

PLUGIN_GROUP = "poisonlab.plugins"
_plugins_loaded = False


def load_plugins(force: bool = False) -> list:
    """Import every `poisonlab.plugins` entry point once. Returns the names of the entry points loaded."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.isclass(obj):
                obj()
            loaded.append(ep.name)
        except Exception as e:  # a broken third-party package must not take the library down
            warnings.warn(f"poisonlab plugin {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)
    return loaded


class Registry:
    """Named constructors of one kind. `builtins` is the module whose import registers poisonlab's own
    entries; it is imported on first use, so a registry is complete however it is reached."""

    def __init__(self, kind: str, builtins: str | None = None, default_label=None):
        self.kind, self._builtins, self._default_label = kind, builtins, default_label or (lambda n: n)
        self._entries = {}  # canonical name -> object
        self._aliases = {}  # alias -> canonical name
        self._labels = {}

    # ----- registration ----------------------------------------------------------------------------
    def register(self, obj=None, *, name=None, aliases=(), label=None):
        """Decorator, bare (@R.register) or with options (@R.register(name=..., aliases=..., label=...)).

        The name defaults to the object's `name` class attribute, else its __name__; aliases add to the
        object's `aliases` attribute; the display label defaults to the object's `label`, else the name.
        Registering a name (or alias) that another object holds replaces it with a warning."""
        def deco(o):
            key = name or _own_name(o)
            for n in (key, *getattr(o, "aliases", ()), *aliases):
                old = self._entries.get(self._aliases.get(n, n))
                if old is not None and old is not o and not _same_definition(old, o):
                    warnings.warn(f"overwriting {self.kind} {n!r} ({_qualname(old)} -> {_qualname(o)})", stacklevel=3)
                if n != key:
                    self._aliases[n] = key
            self._aliases.pop(key, None)
            self._entries[key] = o
            self._labels[key] = label or getattr(o, "label", None) or self._default_label(key)
            return o
        return deco if obj is None else deco(obj)

    def unregister(self, name: str):
        key = self._aliases.get(name, name)
        self._entries.pop(key, None)
        self._labels.pop(key, None)
        for a in [a for a, k in self._aliases.items() if k == key]:
            del self._aliases[a]

    # ----- look-up ---------------------------------------------------------------------------------
    def _ready(self, plugins=True):
        if self._builtins:
            importlib.import_module(self._builtins)
        if plugins:
            load_plugins()

    def resolve(self, name: str) -> str:
        """The canonical name of `name` (which may be an alias)."""
        self._ready(plugins=False)
        name = str(name)
        if name not in self._entries and name not in self._aliases:
            self._ready()
        key = self._aliases.get(name, name)
        if key not in self._entries:
            raise PoisonlabError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")
        return key

    def get(self, name: str):
        return self._entries[self.resolve(name)]

    def label(self, name: str) -> str:
        """The display label used in tables and plots (e.g. 'min-max-min' for minmaxmin)."""
        try:
            return self._labels[self.resolve(name)]
        except PoisonlabError:
            return str(name)

    def names(self) -> list:
        """Canonical names, sorted (aliases not repeated)."""
        self._ready()
        return sorted(self._entries)

    def aliases(self, name: str) -> list:
        key = self.resolve(name)
        return sorted(a for a, k in self._aliases.items() if k == key)

    def __contains__(self, name) -> bool:
        try:
            self.resolve(name)
            return True
        except PoisonlabError:
            return False

    def __iter__(self):
        return iter(self.names())

    def __repr__(self):
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    # ----- construction ------------------------------------------------------------------------------
    def param_names(self, name: str) -> set | None:
        """The keyword options `name` takes, or None when it takes any (**kwargs without param_names)."""
        return option_names(self.get(name))

    def create(self, name: str, **kw):
        """Build `name` with keyword options; an unknown option or a refused value is a PoisonlabError."""
        obj = self.get(name)
        allowed = option_names(obj)
        if allowed is not None:
            unknown = sorted(set(kw) - allowed)
            if unknown:
                raise PoisonlabError(f"{name}: unknown option(s) {unknown}; it takes {sorted(allowed)}")
        kw = coerce_options(obj, kw, name)  # "abc", -3 or nan for a count: one clear error here
        try:
            return obj(**kw)
        except (TypeError, ValueError) as e:
            raise PoisonlabError(f"{name}: {e}") from None


def option_names(obj) -> set | None:
    """Keyword options of a class or function: its `param_names()` if it defines one, else the signature
    (of __init__ through the class hierarchy); None if it takes **kwargs it does not declare."""
    if hasattr(obj, "param_names"):
        return set(obj.param_names())
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(target).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _own_name(o) -> str:
    n = vars(o).get("name") if inspect.isclass(o) else None
    return n or getattr(o, "__name__", None) or str(o)


def _qualname(o) -> str:
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', o)}"


def _same_definition(a, b) -> bool:
    """A module imported twice (e.g. by a test runner) re-registers its own classes: no warning then."""
    return _qualname(a) == _qualname(b)


# The registries. Entries: METHODS - Protection subclasses (callable on images, labels -> PoisonResult);
# ATTACKS - poisoning attacks (may change labels too; same result type); DEFENSES - countermeasures;
# MODELS - functions (num_classes, in_channels, width) -> nn.Module.
METHODS = Registry("method", "poisonlab.protect", default_label=str.upper)  # acronyms: EM, TAP, REM, ...
ATTACKS = Registry("attack", "poisonlab.attacks")
DEFENSES = Registry("defense", "poisonlab.defenses")
MODELS = Registry("model", "poisonlab.models")

__all__ = ["Registry", "METHODS", "ATTACKS", "DEFENSES", "MODELS", "PLUGIN_GROUP", "load_plugins", "option_names"]
