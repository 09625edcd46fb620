"""Dependencies flow one way: the ground floor (errors, config, tokens, distributed, common) -> data ->
model, checkpoint, hub -> decode -> rl, eval -> inference -> harness -> recipes -> cli. A module imports only from its own
layer or those before it (imports under ``if TYPE_CHECKING:`` are for annotations and do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "coconav"
LAYERS = [
    {"coconav.errors", "coconav.config", "coconav.tokens", "coconav.distributed", "coconav.common"},
    {"coconav.data"},
    {"coconav.model", "coconav.checkpoint", "coconav.hub"},
    {"coconav.decode"},
    {"coconav.rl", "coconav.eval"},
    {"coconav.inference"},
    {"coconav.harness"},
    {"coconav.recipes"},
    {"coconav.cli", "coconav.__main__", "coconav"},
]
RL_AND_EVAL = ("coconav.rl", "coconav.eval")


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer or any(module.startswith(prefix + ".") for prefix in layer if prefix != "coconav"):
            return i
    raise AssertionError(f"{module} is in no layer: add it to tests/test_architecture.py")


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(path: Path) -> set[str]:
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coconav"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("coconav"))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_imports_flow_one_way():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for target in imports(path):
            if layer_of(target) > layer_of(here):
                bad.append(f"{here} imports {target}")
    assert not bad, "imports against the flow:\n" + "\n".join(bad)


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
    import sys

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
