"""The package's layers: every import (module level and inside functions) points down the layer order, and no two
modules import each other, directly or through others. README "Architecture" lists the layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import its own layer and the layers before it; siblings (same rank, different
# packages listed together) may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("hdkd.errors", "hdkd.io", "hdkd.version", "hdkd.runtime"),
    ("hdkd.config",),
    ("hdkd.models",),
    ("hdkd.data",),
    ("hdkd.distillation",),
    ("hdkd.evaluation",),
    ("hdkd.training",),
    ("hdkd.reporting",),
    ("hdkd.deploy", "hdkd.experiments"),
    ("hdkd.commands", "hdkd.cli", "hdkd.__main__"),
]
FOUNDATION_ORDER = ("hdkd.errors", "hdkd.io", "hdkd.version", "hdkd.runtime")  # within layer 0, in this order
SIBLINGS = {("hdkd.deploy", "hdkd.experiments")}  # same rank, independent of each other


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """(imported hdkd module, line) for every import in the file, wherever it stands."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "hdkd" or target.startswith("hdkd."):
                known = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}", src)]
                found += [(t, node.lineno) for t in known] or [(target, node.lineno)]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "hdkd"]
    return found


def _is_module(name: str, src: Path) -> bool:
    path = src.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(module: str) -> tuple[int, str]:
    for rank, group in enumerate(LAYERS):
        for prefix in group:
            if module == prefix or module.startswith(prefix + "."):
                return rank, prefix
    raise KeyError(module)


def violations(src: Path = SRC) -> list[str]:
    found = []
    for path in sorted((src / "hdkd").rglob("*.py")):
        source = module_name(path, src)
        if source == "hdkd":
            continue  # the package face imports lazily (checked below)
        rank, group = layer_of(source)
        for target, line in imports_of(path, src):
            where = f"{path.relative_to(src)}:{line}: {source} imports {target}"
            if target == "hdkd":
                found.append(f"{where} (the package face; import the module that defines the name)")
                continue
            t_rank, t_group = layer_of(target)
            if t_rank > rank:
                found.append(f"{where} (layer {t_rank} above {rank})")
            elif t_rank == rank and t_group != group and LAYERS[rank] in SIBLINGS:
                found.append(f"{where} (sibling layers {group} and {t_group})")
            elif rank == 0 and t_group != group and FOUNDATION_ORDER.index(t_group) > FOUNDATION_ORDER.index(group):
                found.append(f"{where} ({t_group} comes after {group})")
    return found


def cycles(src: Path = SRC) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for path in (src / "hdkd").rglob("*.py"):
        graph.setdefault(module_name(path, src), set()).update(t for t, _ in imports_of(path, src))
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package importing its own submodules, which import siblings through it, is not a cycle we care about
    return [c for c in found if not all(m == c[0] or m.startswith(c[0] + ".") for m in c[1:])]


def test_every_import_points_down_the_layers():
    assert violations() == []


def test_no_import_cycles():
    assert cycles() == []


def test_an_upward_import_is_caught(tmp_path):
    """The check itself can fail: a copy of the package with one import pointing up is reported, naming it."""
    import shutil

    shutil.copytree(SRC / "hdkd", tmp_path / "hdkd", ignore=shutil.ignore_patterns("__pycache__"))
    config = tmp_path / "hdkd" / "config.py"
    config.write_text(config.read_text() + "\nfrom hdkd.training.trainer import train  # noqa\n")
    models_init = tmp_path / "hdkd" / "models" / "__init__.py"
    models_init.write_text(models_init.read_text() + "\n\ndef _late():\n    from ..evaluation import metrics  # noqa\n")
    found = violations(tmp_path)
    assert any("hdkd.config imports hdkd.training.trainer" in v for v in found)
    assert any("hdkd.models imports hdkd.evaluation.metrics" in v for v in found), "function-level imports count"
    assert cycles(tmp_path), "config -> training -> config is a cycle"


def test_every_module_has_a_layer():
    for path in (SRC / "hdkd").rglob("*.py"):
        name = module_name(path)
        if name != "hdkd":
            assert layer_of(name)


@pytest.mark.parametrize("code", ["import hdkd", "import hdkd.cli; hdkd.cli.build_parser()"])
def test_package_face_and_help_do_not_import_torch(code):
    check = f"{code}; import sys; heavy = [m for m in ('torch', 'timm') if m in sys.modules]; print(heavy)"
    out = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert out.stdout.strip() == "[]"


def test_package_face_names_resolve_lazily():
    import hdkd

    assert hdkd.HDKDNet.__name__ == "HDKDNet" and hdkd.HDKDLoss.__name__ == "HDKDLoss"
    with pytest.raises(AttributeError):
        hdkd.not_a_name  # noqa: B018
