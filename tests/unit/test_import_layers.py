"""The dependency direction of DESIGN.md, read from the source: no import circles, no import
of a higher layer, feature_store standalone, replay kept out of the server."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["service", "feature_store", "replay", "loadtests", "models"]
# Higher may import lower or the same, never higher; the longest matching prefix wins.
RANKS = {
    "service": 0,  # the package itself, protocol, and the leaves anything may import
    "service.protocol": 0,
    "service.metrics": 0,
    "service.metrics_export": 0,
    "service.settings": 0,
    "service.validation": 0,
    "service.versions": 0,
    "feature_store": 1,
    "service.backends": 1,
    "service.batching": 1,
    "service.guard": 1,
    "service.audit": 1,
    "service.routing": 1,
    "service.repository": 1,
    "service.monitor": 1,
    "service.pipeline": 2,
    "service.lifecycle": 3,
    "service.admin": 4,
    "service.app": 4,
    "service.grpc_server": 4,
    "service.server": 5,
    "replay": 5,
    "loadtests": 5,
    "models": 5,
    "service.cli": 6,
}
FRONTS = {"service.app", "service.grpc_server", "service.admin"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """{module: first-party modules it imports, at module level or inside functions}."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {t for alias in node.names if (t := resolve(alias.name))}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    found = resolve(f"{node.module}.{alias.name}") or resolve(node.module)
                    if found:
                        targets.add(found)
        graph[name] = targets - {name}
    return graph


def rank(module: str) -> int:
    prefix = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[prefix]


def test_no_module_imports_in_a_circle() -> None:
    graph = imports(modules())
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path, module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for module, targets in sorted(imports(modules()).items()):
        for target in sorted(targets):
            if module.startswith("feature_store") and not target.startswith("feature_store"):
                wrong.append(f"{module} -> {target}: feature_store imports nothing outside it")
            elif (
                target.startswith("replay")
                and module.startswith("service.")
                and (module != "service.cli")
            ):
                wrong.append(f"{module} -> {target}: the server never imports replay")
            elif target in FRONTS and rank(module) <= rank(target):
                wrong.append(f"{module} -> {target}: a front imported")
            elif rank(target) > rank(module):
                wrong.append(f"{module} -> {target}: a higher layer imported")
    assert not wrong, "\n".join(wrong)


def test_the_audit_log_stays_off_the_repository_and_backends() -> None:
    graph = imports(modules())
    audit = {m: t for m, t in graph.items() if m.startswith("service.audit")}
    assert audit and not {
        (m, t)
        for m, ts in audit.items()
        for t in ts
        if t.startswith(("service.repository", "service.backends"))
    }
