"""Imports flow one way (RULES.md, issue 10): core <- methods <- attacks <- ownership <- defenses <- experiments
<- clients, with no import loop, and no import hidden in a function without a reason (a comment on its line).

An AST reading of every module (module-level and function-level imports alike), so it needs no tool; the
layers below are the contract."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "poisonlab"

# Lowest first. A module may import from its own layer or lower ones. Names are module paths below poisonlab
# (a package name covers its submodules; the longest match wins, e.g. ownership.cli is a client).
LAYERS = [
    ("core", ["errors", "options", "registry", "budget", "fileio", "hashing", "pairing", "data", "pgd", "augment",
              "runtime", "models", "result", "publishing", "train", "progress", "checks", "kmeans", "distributed"]),
    ("methods", ["protect"]),
    ("attacks", ["attacks"]),
    ("marks", ["ownership"]),
    ("defenses", ["defenses"]),
    ("experiments", ["bench", "demo", "report"]),
    ("clients", ["cli", "__main__", "web", "ownership.cli", "attacks.cli"]),
]
ROOT_NAMES = {"PoisonlabError": "errors", "__version__": None}  # what `from poisonlab import X` resolves to


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(mod: str):
    best, rank = None, None
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and (best is None or len(n) > len(best)):
                best, rank = n, i
    return rank


def is_package(mod: str) -> bool:
    return (ROOT / mod.replace(".", "/") / "__init__.py").exists() if mod else True


def imports(path: Path):
    """(line, target module, inside a function, source line) for every poisonlab import of a file."""
    mod = module_name(path)
    pkg = mod if is_package(mod) else mod.rpartition(".")[0]
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(n) for n in ast.walk(node) if n is not node}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".") if pkg else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                base = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "poisonlab" or node.module.startswith("poisonlab.")):
                base = node.module.removeprefix("poisonlab").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if is_package(sub) or (ROOT / (sub.replace(".", "/") + ".py")).exists():
                    targets.append(sub)
                elif not base:
                    targets.append(ROOT_NAMES.get(alias.name, ""))
                else:
                    targets.append(base)
        elif isinstance(node, ast.Import):
            targets = [a.name.removeprefix("poisonlab").lstrip(".") for a in node.names
                       if a.name == "poisonlab" or a.name.startswith("poisonlab.")]
        for t in targets:
            if t:  # "" / None: the package's constants (poisonlab.__version__)
                yield node.lineno, t, id(node) in in_function, lines[node.lineno - 1]


def all_modules():
    return [p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts]


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in all_modules() if module_name(p) and layer_of(module_name(p)) is None]
    assert not missing, f"modules outside the layer contract (add them to LAYERS): {missing}"


def test_imports_flow_one_way():
    bad = []
    for p in all_modules():
        mod = module_name(p)
        if not mod:  # poisonlab/__init__.py: the facade re-exports every layer
            continue
        for line, target, _, _ in imports(p):
            if layer_of(target) is not None and layer_of(target) > layer_of(mod):
                bad.append(f"{p.relative_to(ROOT.parent)}:{line}: {LAYERS[layer_of(mod)][0]} {mod} imports "
                           f"{LAYERS[layer_of(target)][0]} {target}")
    assert not bad, "imports against the layer direction:\n" + "\n".join(bad)


def test_no_import_loop_at_module_level():
    graph = {}
    for p in all_modules():
        mod = module_name(p)
        if mod:
            graph[mod] = {t for _, t, inside, _ in imports(p) if not inside and t != mod and t}
    state, loops = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                loops.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_function_level_imports_say_why():
    hidden = [f"{p.relative_to(ROOT.parent)}:{line}: {src.strip()}" for p in all_modules()
              for line, _, inside, src in imports(p) if inside and "#" not in src]
    assert not hidden, ("imports inside functions without a reason (import at the top, or say why in a "
                        "comment on the line):\n" + "\n".join(hidden))
