"""Dependencies flow one way: config, common -> data -> model -> rollout, rewards, ppo -> evaluate,
checkpoint, inference -> recipes -> cli. A module imports only from its own layer or those before it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "coconav"
LAYERS = [
    {"coconav.errors", "coconav.config", "coconav.common", "coconav.tokens"},
    {"coconav.data"},
    {"coconav.model"},
    {"coconav.rollout", "coconav.rewards", "coconav.ppo", "coconav.fusion"},
    {"coconav.evaluate", "coconav.voting", "coconav.checkpoint", "coconav.distributed", "coconav.inference", "coconav.plots",
     "coconav.trace"},
    {"coconav.recipes"},
    {"coconav.cli", "coconav.__main__", "coconav"},
]


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer or any(module.startswith(prefix + ".") for prefix in layer if prefix != "coconav"):
            return i
    raise AssertionError(f"{module} is in no layer: add it to tests/test_architecture.py")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
    users = {module_name(p) for p in PACKAGE.rglob("*.py")
             if any(t.startswith("coconav.recipes") for t in imports(p)) and not module_name(p).startswith("coconav.recipes")}
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
    assert not any(m.startswith(("coconav.data", "coconav.rollout")) for m in loaded), loaded


def test_evaluation_and_inference_do_not_import_the_rl_rollout():
    for module in ("coconav.evaluate", "coconav.inference"):
        assert "coconav.rollout" not in imported_modules(module), module
