"""The package's layering: the command line (canctr.cli) sits on top of the library and nothing imports it, so
no import cycle can run through it; the library runs no script from benchmarks/ (an installed wheel has none);
`canctr prepare` stays free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import canctr

SRC = Path(canctr.__file__).resolve().parent  # src/canctr


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions, relative imports resolved; for
    `from X import a` both X and X.a (a may be a submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def library_modules() -> list[Path]:
    """Every module but the CLI's and `python -m canctr` (canctr/__main__.py, the CLI's entry point)."""
    return [p for p in sorted(SRC.rglob("*.py"))
            if "cli" not in p.relative_to(SRC).parts[:1] and p != SRC / "__main__.py"]


def is_cli(module: str) -> bool:
    return module == "canctr.cli" or module.startswith("canctr.cli.")


def test_cli_is_a_package_with_one_module_per_command_group():
    cli = SRC / "cli"
    assert (cli / "__init__.py").is_file() and (cli / "__main__.py").is_file()
    assert not (SRC / "cli.py").exists()
    # main (the parser), args (shared options) and launch (train --nproc -> torchrun) serve every group
    groups = {p.stem for p in cli.glob("*.py")} - {"__init__", "__main__", "main", "args", "launch"}
    assert groups == {"data", "train", "report", "bench", "demo", "serve"}


def test_no_library_module_imports_the_cli():
    offenders = {module_name(p): sorted(m for m in imported_modules(p) if is_cli(m)) for p in library_modules()}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"library modules importing canctr.cli: {offenders}"
    assert not list(SRC.rglob("cli_*.py")), "command wiring belongs in canctr/cli/"


def test_no_import_cycle_through_the_cli():
    """No cycle in the module import graph contains a canctr.cli module (cli <-> report was one)."""
    graph: dict[str, set[str]] = {}
    for p in SRC.rglob("*.py"):
        graph[module_name(p)] = {m for m in imported_modules(p) if m.startswith("canctr")}
    known = set(graph)
    graph = {k: {m for m in v if m in known and m != k} for k, v in graph.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for n in graph[m]:
                if n == goal:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    cycles = [(a, b) for a in graph if is_cli(a) for b in graph[a] if not is_cli(b) and reaches(b, a)]
    assert not cycles, f"import cycles through the CLI: {cycles}"


def test_library_imports_without_loading_the_cli():
    code = ("import sys, canctr.report.experiments, canctr.report.summary, canctr.bench, canctr.demo, "
            "canctr.serve.export, canctr.data.table; "
            "print(sorted(m for m in sys.modules if m == 'canctr.cli' or m.startswith('canctr.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_library_runs_no_script_from_benchmarks():
    """A path built from "benchmarks" (a source checkout's folder) breaks in an installed wheel."""
    hits = []
    for p in library_modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                v = node.value
                if v == "benchmarks" or (v.startswith("benchmarks/") and v.endswith(".py")):
                    hits.append(f"{module_name(p)}: {v!r}")
    assert not hits, hits


def test_cli_entry_points_and_prepare_without_torch():
    from canctr.cli import main

    assert callable(main)
    probe = ("import sys\nfrom canctr.cli import main\n"
             "try:\n    main(['prepare', 'table', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
             "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "--spec" in res.stdout and res.stdout.strip().splitlines()[-1] == "False"  # no torch for prepare
    res = subprocess.run([sys.executable, "-m", "canctr.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: canctr" in res.stdout and "prepare" in res.stdout and "serve" in res.stdout
