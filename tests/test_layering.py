"""The package's modules import only downward, and never in a circle.

Every module of plugin/ue_dpo is parsed with `ast`; every `import` of one of our modules, at the top of a module or
inside a function, is an edge of the import graph. The test fails on (a) a cycle of that graph and (b) an edge that
does not go down the layer order below, and names the offending edges.

Layers, bottom to top. A module belongs to the longest entry naming it or a package above it. A module may import
the modules of its own entry and those of the entries of lower layers; entries of one layer are independent of
each other (`benchmarks` never imports `llamafactory`, and the reverse).

0. Foundations, which import none of our other modules: `core` (the method as tensor functions), `versions` (the
   supported releases), `model_paths`, `images` (strict image loading), `statistics` (the intervals),
   `yaml_errors` (one-line YAML syntax errors), `synthetic.vocabulary` (the shapes world's words, which the
   metric and the drawing code share), `argument_checks` (one key's value checked, and the user-error class),
   `model_families` (each vision-language family described once) and `machine` (the machine a number was measured
   on, which `experiment` and the bench record).
1. `methods`: one module per preference method and their registry, over `core`; they see the step's forward only
   through the calls it answers, never LLaMA-Factory.
2. `config`: the stage's keys (`UEDPOArguments`), built from the stage's own keys and the methods' key groups.
3. Libraries over those: `llamafactory` (the stage), `benchmarks` (the official metrics and the judge),
   `synthetic` (the worlds and tiny models), `datasets` (`ue-dpo data`'s converters) and `recipes` (the training
   YAMLs rendered from one table).
4. The harness adapters: `evaluation` (lmms-eval's tasks and model) and `inspection` (`ue-dpo inspect`'s report,
   built on the stage).
5. `experiment`: `ue-dpo run`, which drives LLaMA-Factory and lmms-eval (so it reads `evaluation`'s settings).
6. `commands`: one module per subcommand.
7. Entry points: `cli`, the import hooks (`_autoload`) and the package itself (`ue_dpo/__init__.py`, whose one
   import, of the integration, happens when it is called).

A package's `__init__` runs whenever any module inside it is imported, so one whose modules lie in several layers
(`ue_dpo`, `synthetic`) imports none of our modules at its top.

A new module inherits the layer of its package; a new top-level module or package fails the test until LAYERS
places it. An import of our own modules inside a function is kept only where the imported module loads something
heavy (LLaMA-Factory, lmms-eval, torch, openai) that the importing module's other users need not, and says so.

Imports by name (`importlib.import_module`: `cli`'s subcommands, `_autoload`'s hooks) are not edges; both live in
the top layer, so they can only point down.
"""

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "plugin" / "ue_dpo"
PACKAGE = "ue_dpo"

LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "core",
        "versions",
        "model_paths",
        "images",
        "statistics",
        "yaml_errors",
        "synthetic.vocabulary",
        "argument_checks",
        "model_families",
        "machine",
    ),
    ("methods",),
    ("config",),
    ("llamafactory", "benchmarks", "synthetic", "datasets", "recipes"),
    ("evaluation", "inspection"),
    ("experiment",),
    ("commands",),
    ("cli", "_autoload", ""),  # "": the package's own __init__
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, at module level) of every import statement in `path`."""
    name = module_name(path)
    package = name if is_package(path) else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, not in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                # `from ue_dpo.llamafactory import reference_cache` imports ue_dpo.llamafactory.reference_cache
                found.extend(
                    (
                        f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target,
                        child.lineno,
                        not in_function,
                    )
                    for alias in child.names
                )
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return [(target, line, top) for target, line, top in found if target == PACKAGE or target.startswith(PACKAGE + ".")]


PATHS = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
MODULES = set(PATHS)


def entry_of(module: str) -> tuple[int, str] | None:
    """(layer, entry) of `module`: the longest entry that names it or a package above it."""
    relative = "" if module == PACKAGE else module.removeprefix(PACKAGE + ".")
    best = None
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            matches = relative == entry if entry == "" else relative == entry or relative.startswith(entry + ".")
            if matches and (best is None or len(entry) > len(best[1])):
                best = (layer, entry)
    return best


def import_graph() -> dict[str, dict[str, str]]:
    """module -> {imported module: where (path:line)}."""
    graph: dict[str, dict[str, str]] = {}
    for module, path in PATHS.items():
        graph[module] = {}
        for target, line, _ in imports_of(path):
            if target != module:
                graph[module].setdefault(target, f"{path.relative_to(PACKAGE_DIR.parent)}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, {}):
            if target not in graph:
                continue
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(set(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    found = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats
            target = next(target for target in sorted(graph[path[-1]]) if target in component)
            if target in seen:
                found.append(path[path.index(target) :] + [target])
                break
            path.append(target)
            seen.add(target)
    return found


def describe(path: list[str], graph: dict[str, dict[str, str]]) -> str:
    return (
        " -> ".join(path) + "  (" + "; ".join(f"{graph[a][b]}: {a} imports {b}" for a, b in zip(path, path[1:])) + ")"
    )


def test_every_module_has_a_layer():
    unplaced = sorted(module for module in MODULES if entry_of(module) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_every_entry_of_the_layers_is_a_module():
    stale = [entry for layer in LAYERS for entry in layer if entry and f"{PACKAGE}.{entry}" not in MODULES]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_there_is_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(cycle, graph) for cycle in found)


def test_imports_only_go_down_the_layers():
    graph = import_graph()
    wrong = []
    for module, targets in sorted(graph.items()):
        layer, entry = entry_of(module)
        for target, where in sorted(targets.items()):
            if target not in MODULES:
                wrong.append(f"{where}: {module} imports {target}, which is not a module of the package")
                continue
            target_layer, target_entry = entry_of(target)
            if target_entry != entry and target_layer >= layer:
                direction = "up" if target_layer > layer else "sideways"
                wrong.append(
                    f"{where}: {module} (layer {layer}, {entry or PACKAGE}) imports {target} "
                    f"(layer {target_layer}, {target_entry or PACKAGE}): {direction}"
                )
    assert not wrong, "imports that do not go down the layers:\n" + "\n".join(wrong)


def test_a_package_spanning_layers_imports_nothing_of_ours_at_its_top():
    wrong = []
    for module, path in PATHS.items():
        if not is_package(path):
            continue
        layers = {entry_of(other)[0] for other in MODULES if other == module or other.startswith(module + ".")}
        if len(layers) > 1:
            wrong += [
                f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: {module} imports {target}"
                for target, line, top in imports_of(path)
                if top
            ]
    assert not wrong, (
        "packages whose modules lie in several layers run these imports for every one of them:\n" + "\n".join(wrong)
    )


def test_the_checker_sees_cycles_and_function_level_imports():
    graph = {
        "ue_dpo.a": {"ue_dpo.b": "a.py:1"},
        "ue_dpo.b": {"ue_dpo.c": "b.py:2"},
        "ue_dpo.c": {"ue_dpo.a": "c.py:3"},
        "ue_dpo.d": {"ue_dpo.a": "d.py:4"},
    }
    assert cycles(graph) == [["ue_dpo.a", "ue_dpo.b", "ue_dpo.c", "ue_dpo.a"]]
    source = PACKAGE_DIR / "__init__.py"
    assert ("ue_dpo.llamafactory.integration", True) not in [(target, top) for target, _, top in imports_of(source)]
    assert "ue_dpo.llamafactory.integration" in [target for target, _, top in imports_of(source) if not top]
