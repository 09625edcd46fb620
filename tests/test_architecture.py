"""The architecture, checked by parsing every import of coconav/: dependencies flow one way up LAYERS (a module
imports only from its own floor or those below), there is no import cycle between files, and the layer text in
the README and the docs is generated from LAYERS. Every import counts, those under ``if TYPE_CHECKING:`` too: an
annotation is a dependency like any other.

    python tests/test_architecture.py        # rewrite the layer text in README.md and docs/ from LAYERS
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "coconav"
# The floors, from the ground up: each a room (a folder of coconav/) or a module (a file), by name.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "config", "tokens", "distributed", "common"),  # the ground floor
    ("data",),
    ("model",),
    ("io",),  # checkpoints and the Hub: they save and load models
    ("decode",),
    ("rl", "eval"),  # siblings: neither imports the other
    ("inference",),
    ("harness",),
    ("recipes",),
    ("cli",),
]
ENTRY_POINTS = {"coconav", "coconav.__main__"}  # the package's own __init__ and `python -m coconav`: the top floor
RL_AND_EVAL = ("coconav.rl", "coconav.eval")
# the layer text: between these markers in each of DOCUMENTS, as layer_text() writes it
BEGIN, END = "<!-- layers: generated from LAYERS in tests/test_architecture.py -->", "<!-- /layers -->"
DOCUMENTS = ("README.md", "docs/index.md", "docs/reference/api/index.md")


def layer_of(module: str) -> int:
    """The floor of a dotted coconav module name (a file or a package)."""
    if module in ENTRY_POINTS:
        return len(LAYERS) - 1
    room = module.split(".")[1]
    for i, layer in enumerate(LAYERS):
        if room in layer:
            return i
    raise AssertionError(f"{module} is in no layer: add coconav.{room} to LAYERS in tests/test_architecture.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(module: str) -> Path | None:
    """The file that defines a dotted coconav module (a package's __init__.py), None if there is none."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(path: Path) -> set[str]:
    """The coconav modules that `path` imports anywhere in it (functions and ``if TYPE_CHECKING:`` included)."""
    here = module_name(path).split(".")
    return parse_imports(path.read_text(), here if path.name == "__init__.py" else here[:-1])


def parse_imports(source: str, package: list[str]) -> set[str]:
    """The coconav modules that `source` (a file of `package`, for relative imports) imports:
    ``from coconav.x import y`` is coconav.x.y when that is a module of its own, else coconav.x."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from `package`
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "coconav":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_file(sub) is not None else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "coconav")
    return found


def import_graph() -> dict[str, set[str]]:
    """Every module of coconav/ -> the coconav modules it imports."""
    return {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` as [a, b, ..., a], or [] if it has none (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return []
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return []

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return []


def layer_text() -> str:
    """The sentence that the README and the docs carry, between BEGIN and END, about LAYERS."""
    floors = [", ".join(f"`{name}`" for name in layer) for layer in LAYERS]
    text = (
        f"Dependencies flow one way: the ground floor ({floors[0]}) → {' → '.join(floors[1:])}. A module imports "
        "only from its own floor or those below, and a test parses every import to check it: none goes up a floor "
        "and no two files import each other in a cycle."
    )
    return textwrap.fill(text, width=110, break_long_words=False, break_on_hyphens=False)


def with_layer_text(document: str) -> str:
    """`document` with the text between its markers replaced by layer_text()."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    assert len(pattern.findall(document)) == 1, f"expected one {BEGIN} ... {END} block"
    return pattern.sub(lambda _: f"{BEGIN}\n{layer_text()}\n{END}", document)


def map_entries(document: str) -> list[str]:
    """The coconav modules and rooms that a document's package map lists, in its order: the ``` block whose first
    line is 'coconav/', entries indented by two spaces ('name.py' or 'name/'; folders without Python skipped)."""
    block = re.search(r"```\n(coconav/\n.*?)```", document, re.S)
    assert block, "no package map (a ``` block starting with 'coconav/')"
    names = []
    for line in block.group(1).splitlines()[1:]:
        if not line.startswith("  ") or line.startswith("   "):
            continue
        for token in line.split():
            match = re.fullmatch(r"(\w+)(\.py|/),?", token)
            if not match:
                break
            if match.group(1) != "__main__" and module_file(f"coconav.{match.group(1)}") is not None:
                names.append(match.group(1))
    return names


def test_no_import_goes_up_a_floor():
    bad = [
        f"{here} imports {target}"
        for here, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(here)
    ]
    assert not bad, "imports against the flow:\n" + "\n".join(bad)


def test_every_room_is_on_a_floor():
    rooms = {module_name(p).split(".")[1] for p in PACKAGE.rglob("*.py") if module_name(p) not in ENTRY_POINTS}
    placed = {name for layer in LAYERS for name in layer}
    assert rooms == placed, f"in coconav/ but not in LAYERS: {rooms - placed}; in LAYERS only: {placed - rooms}"


def test_no_import_cycle_between_files():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_every_import_counts():
    """An import that only annotates, or one inside a function, is still an arrow of the graph."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from coconav.model.latent_lm import LatentLM\n"
        "def f():\n    from coconav.decode import generate\n"
        "from . import tokens\n"
    )
    assert parse_imports(source, ["coconav"]) == {
        "coconav.model.latent_lm",
        "coconav.decode.generate",
        "coconav.tokens",
    }


@pytest.mark.parametrize("document", DOCUMENTS)
def test_layer_text_is_generated_from_layers(document):
    text = (REPO / document).read_text(encoding="utf-8")
    assert text == with_layer_text(text), (
        f"{document}: the layer text differs from LAYERS; rewrite it with `python tests/test_architecture.py`"
    )


@pytest.mark.parametrize("document", ["README.md", "docs/index.md"])
def test_package_maps_list_every_floor_in_order(document):
    names = map_entries((REPO / document).read_text(encoding="utf-8"))
    floors = [layer_of(f"coconav.{name}") for name in names]
    assert floors == sorted(floors), f"{document}: the package map is not in floor order: {names}"
    missing = {name for layer in LAYERS for name in layer} - set(names)
    assert not missing, f"{document}: the package map leaves out {sorted(missing)}"


def test_only_the_cli_imports_recipes():
    users = {
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if any(t.startswith("coconav.recipes") for t in imports(p)) and not module_name(p).startswith("coconav.recipes")
    }
    assert users <= {"coconav.cli"}, users


def imported_modules(module: str) -> set[str]:
    """The coconav modules that importing ``module`` in a fresh interpreter loads."""
    import subprocess

    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('coconav')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_latent_lm_loads_no_task_generators_and_no_data_layer():
    loaded = imported_modules("coconav.model.latent_lm")
    assert not any(m.startswith(("coconav.data", "coconav.rl.rollout")) for m in loaded), loaded


def test_evaluation_and_inference_do_not_import_the_rl_rollout():
    for module in ("coconav.eval.evaluate", "coconav.inference"):
        assert "coconav.rl.rollout" not in imported_modules(module), module


def test_inference_imports_decode_never_eval_or_rl():
    loaded = imported_modules("coconav.inference")
    assert "coconav.decode.generate" in loaded, loaded
    assert not any(m.startswith(RL_AND_EVAL) for m in loaded), sorted(loaded)


def test_ppo_math_and_rewards_import_no_model():
    """rl/ppo.py and rl/rewards.py take tensors and strings: tested with hand-made numbers, no model in sight."""
    for name, allowed in (("ppo", 0), ("rewards", 1)):  # the ground floor; rewards also the data layer's scoring
        targets = imports(PACKAGE / "rl" / f"{name}.py")
        assert all(layer_of(t) <= allowed for t in targets), (name, sorted(targets))


def test_rl_and_eval_are_siblings():
    """Neither of the two top library rooms imports the other: the PPO math never sees evaluation code."""
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for room, other in (RL_AND_EVAL, RL_AND_EVAL[::-1]):
            if here.startswith(room):
                assert not any(t.startswith(other) for t in imports(path)), f"{here} imports {other}"


def test_rank_helpers_live_in_distributed_only():
    """One home for process-rank logic: no other module defines rank, world size or cross-rank reductions."""
    names = {
        "rank",
        "world_size",
        "is_main",
        "is_writer",
        "rank_and_world",
        "gather_global",
        "mean_over_ranks",
        "sum_over_ranks",
        "all_ranks_sum",
    }
    found = [
        f"{module_name(p)}.{node.name}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "distributed.py"
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name in names
    ]
    assert not found, found


if __name__ == "__main__":
    for name in sys.argv[1:] or DOCUMENTS:
        path = REPO / name
        path.write_text(with_layer_text(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote the layer text of {name}")
