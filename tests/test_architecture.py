"""The house's rules, read from the code: imports run ``service -> lm -> tokenizer`` and never
back, there is no import circle anywhere in the three packages, no module is over 400 lines,
and ``lmforge --help`` does not import the heavy stack (torch, FastAPI)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tokenizer", "lm", "service")
LAYER = {name: i for i, name in enumerate(PACKAGES)}  # a package may import only lower layers


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, at any depth in the file (lazy imports count too:
    a circle through a function-level import is still a circle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        for target in targets:
            # `import lm.models.rnn` names lm.models.rnn; `from lm import models` names lm.models
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_module_over_400_lines() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"split these by responsibility: {long}"


def test_no_upward_import() -> None:
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets
              if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert not upward, "imports must run service -> lm -> tokenizer: " + "; ".join(sorted(upward))


def test_no_import_circle() -> None:
    edges = graph()
    # A package's __init__ re-exporting its modules is not a circle with them; every other
    # pair of modules that reach each other is.
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen and not start.startswith(nxt + ".") and nxt not in PACKAGES:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {name: reach(name) for name in edges if name not in PACKAGES}
    circles = sorted({" <-> ".join(sorted((a, b))) for a, seen in reachable.items() for b in seen
                      if b in reachable and a in reachable[b]})
    assert not circles, "import circles: " + "; ".join(circles)


def test_the_checker_sees_a_circle(tmp_path: Path) -> None:
    """The circle check is not vacuous: a module pair that import each other is found."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg.a import x\n")
    known = {"pkg.a": tmp_path / "pkg" / "a.py", "pkg.b": tmp_path / "pkg" / "b.py"}
    assert imports("pkg.a", known["pkg.a"], known) == {"pkg.b"}
    assert imports("pkg.b", known["pkg.b"], known) == {"pkg.a"}


def test_help_imports_no_heavy_module() -> None:
    code = ("import sys\nfrom lm.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'fastapi', 'pydantic_settings', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_public_surfaces_resolve() -> None:
    """Every name ``lm``, ``lm.models`` and ``tokenizer`` promise in ``__all__`` is importable
    from them."""
    import lm
    import lm.models
    import tokenizer

    for package in (lm, lm.models, tokenizer):
        missing = [n for n in package.__all__ if getattr(package, n, None) is None]
        assert not missing, f"{package.__name__} promises {missing}"
    assert lm.Pipeline.__module__ == "lm.pipeline" and lm.models.build_model.__module__ == "lm.models.factory"
