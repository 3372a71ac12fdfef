"""The package's structure as ARCHITECTURE.md draws it: layers that import only downwards, and task
dispatch only inside the protocol registry. Read from the source (imports and lines), nothing is run."""
from __future__ import annotations

import ast
import re
from pathlib import Path

AVLIB = Path(__file__).resolve().parents[1] / "avlib"

# ARCHITECTURE.md, bottom to top; a module may import from its own layer (no cycle) or the ones below
LAYERS = [
    {"config", "paths", "utils"},
    {"model", "audio", "image", "flops", "timing"},
    {"checkpoint", "data", "data.loaders", "data.scenes", "data.sources", "data.download", "data.benchmarks",
     "data.media"},
    {"heads", "metrics"},
    {"train"},
    {"probes"},
    {"protocols", "objectives", "baselines", "baselines.common", "baselines.ezvsl", "baselines.slavc",
     "baselines.mix_and_localize", "baselines.mixsep", "baselines.sound_of_pixels", "baselines.ccol",
     "baselines.oneavm"},
    {"tasks"},
    {"pretrain", "reproduce", "bench", "zoo", "budgets", "nb"},
    {"viz", "widgets"},
]


def _module(path: Path) -> str:
    parts = path.relative_to(AVLIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """avlib modules imported by ``path`` (relative imports resolved), without the ``avlib.`` prefix."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                names = [name] if node.module else [f"{name}.{a.name}".strip(".") for a in node.names]
            else:
                name = node.module or ""
                if not name.startswith("avlib"):
                    continue
                name = name.removeprefix("avlib").strip(".")
                names = [f"{name}.{a.name}".strip(".") for a in node.names] if name in ("", "data") else [name]
            out |= set(names)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("avlib.") for a in node.names if a.name.startswith("avlib.")}
    return out


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    raise AssertionError(f"avlib.{module} is in no layer of ARCHITECTURE.md (add it to LAYERS and the map)")


def test_every_module_imports_only_from_its_layer_or_below():
    upward = []
    for path in sorted(AVLIB.rglob("*.py")):
        mod = _module(path)
        if not mod:
            continue
        for dep in _imports(path):
            if dep and dep in {m for layer in LAYERS for m in layer} and _layer(dep) > _layer(mod):
                upward.append(f"avlib.{mod} (layer {_layer(mod)}) imports avlib.{dep} (layer {_layer(dep)})")
    assert upward == []


def test_the_data_layer_knows_nothing_of_training():
    for path in sorted((AVLIB / "data").rglob("*.py")):
        assert not {d for d in _imports(path) if d in ("train", "tasks", "protocols", "objectives")}, path


def test_no_task_dispatch_outside_the_protocol_registry():
    # what a protocol does is decided by its object, never by comparing its name in another module
    pattern = re.compile(r"\btask\s*(==|!=)\s*[\"']|(?<!for )\btask\s+(not\s+)?in\s*[(\[{]")
    offenders = [f"{p.relative_to(AVLIB)}:{i}: {line.strip()}"
                 for p in sorted(AVLIB.rglob("*.py")) if p.name != "protocols.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
