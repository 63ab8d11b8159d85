"""The layers of mcsync (DESIGN §3, STYLE "layout shows the layers"), checked over the source.

Every import in mcsync/ — at module level, inside a function or under TYPE_CHECKING alike —
is read with `ast` and judged against these rules:

- layers, bottom to top: errors → budget → config → rules → api, store → plugins → stages →
  runner → ops → console → cli (→ __main__). A module imports only from its own package or
  from a lower layer; api and store share a layer and do not import each other.
- only cli.py imports click; only console.py imports rich.
- rules/ is pure: no module that does I/O, sleeps or reads the clock (httpx, sqlite3, os,
  pathlib, time, ...).
- sim/ (the simulators) may import what it needs, but only ops/demo.py and cli.py import it.

A failure names each offending import with its file and line.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcsync"

# Bottom to top. A unit is a top-level module or a subpackage of mcsync.
LAYERS: list[set[str]] = [
    {"__init__", "errors"},
    {"budget"},
    {"config"},
    {"rules"},
    {"api", "store"},
    {"plugins"},
    {"stages"},
    {"runner"},
    {"ops"},
    {"console"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
ORDER = " → ".join("/".join(sorted(units)) for units in LAYERS)

ONLY_IMPORTER = {"click": "cli", "rich": "console"}
SIM_IMPORTERS = {"mcsync.ops.demo", "mcsync.cli", "mcsync.sim"}
IMPURE = {
    "asyncio",
    "http",
    "httpx",
    "io",
    "os",
    "pathlib",
    "shutil",
    "socket",
    "sqlite3",
    "sqlite_utils",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "urllib",
}


def module_name(path: Path) -> str:
    """mcsync/stages/match.py → mcsync.stages.match; mcsync/api/__init__.py → mcsync.api."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every module a source imports, absolute, with its line: `from a import b` yields
    `a.b` when b is a module (`from mcsync import ops` imports ops, not the root package),
    else `a`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield node.lineno, submodule if is_module(submodule) else base


def is_module(name: str) -> bool:
    """Whether an mcsync name is a module or package (not a value such as __version__)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def unit_of(name: str) -> str:
    """The layer unit an mcsync module belongs to: mcsync.stages.match → stages."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """What is wrong with one module's imports, one line per offence."""
    where = module.replace(".", "/") + ("/__init__.py" if is_package else ".py")
    tree = ast.parse(source)
    unit = unit_of(module)
    problems = []
    for line, target in imported(tree, module, is_package):
        top = target.split(".")[0]
        said = f"{where}:{line} imports {target}: "
        if top in ONLY_IMPORTER and unit != ONLY_IMPORTER[top]:
            problems.append(said + f"only {ONLY_IMPORTER[top]}.py may import {top}")
        if unit == "rules" and top in IMPURE:
            problems.append(said + "rules/ is pure (no I/O, no clock, no sleeping)")
        if top != "mcsync":
            continue
        other = unit_of(target)
        if other == "sim":
            if not any(module == m or module.startswith(m + ".") for m in SIM_IMPORTERS):
                problems.append(said + "only ops/demo.py and cli.py import the simulators")
            continue
        if unit == "sim" or other == unit:
            continue
        if other not in RANK or unit not in RANK:
            problems.append(said + f"{other if other not in RANK else unit} has no layer")
        elif RANK[other] >= RANK[unit]:
            problems.append(
                said + f"{unit} may import only lower layers, and {other} is "
                f"{'beside' if RANK[other] == RANK[unit] else 'above'} it ({ORDER})"
            )
    return problems


def test_every_import_in_mcsync_follows_the_layers() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += violations(
            module_name(path), path.read_text(), is_package=path.name == "__init__.py"
        )
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("mcsync.stages.match", "from mcsync.runner.audience import STAGES", "above"),
        ("mcsync.runner.audience", "def f():\n    from mcsync.ops import checks", "above"),
        ("mcsync.ops.checks", "from mcsync import console", "above"),
        ("mcsync.api.http", "from mcsync.store.database import Staging", "beside"),
        ("mcsync.ops.status", "import click", "only cli.py may import click"),
        ("mcsync.cli", "from rich.table import Table", "only console.py may import rich"),
        ("mcsync.rules.reconcile", "import time", "rules/ is pure"),
        ("mcsync.rules.reconcile", "from sqlite3 import Row", "rules/ is pure"),
        ("mcsync.rules.reconcile", "from ..store import database", "above"),
        ("mcsync.stages.feeds", "from mcsync.sim.world import SimWorld", "simulators"),
        ("mcsync.stages.feeds", "from mcsync.newthing import x", "has no layer"),
    ],
)
def test_an_import_against_the_layers_is_named(module: str, source: str, complaint: str) -> None:
    problems = violations(module, source)
    assert len(problems) == 1 and complaint in problems[0], problems
    assert module.replace(".", "/") + ".py:" in problems[0]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("mcsync.runner.audience", "from mcsync.stages.registry import STAGES"),
        ("mcsync.api.mailchimp", "from .http import HttpSession"),
        ("mcsync.cli", "import click\nfrom mcsync import __version__\nfrom mcsync.ops import demo"),
        ("mcsync.ops.demo", "def f():\n    from mcsync.sim.world import SimWorld"),
        ("mcsync.sim.world", "from mcsync.sim.civicrm import CiviSim"),
        ("mcsync.rules.reconcile", "from datetime import datetime\nfrom mcsync.errors import X"),
    ],
)
def test_an_import_down_the_layers_passes(module: str, source: str) -> None:
    assert violations(module, source) == []


# SQL and the connection belong to the storage layer (issue 14): a statement written anywhere
# else is a state change nobody can find by reading `store/`.
SQL_STATEMENT = re.compile(
    r"\b(SELECT\s+\S|UPDATE\s+\w+\s+SET\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|DELETE\s+FROM\b)"
)
CONNECTION_CALLS = {"execute", "executemany", "executescript", "query", "scalar", "conn"}


def sql_outside_the_store(module: str, source: str) -> list[str]:
    """SQL statements in string literals, and uses of the staging connection or its
    pass-throughs (`staging.execute`, `.query`, `.scalar`, `.conn`), in a module outside
    `mcsync.store` (the simulators model their services' own storage and are exempt)."""
    if module.startswith(("mcsync.store", "mcsync.sim")):
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if SQL_STATEMENT.search(node.value):
                found.append(f"{module}:{node.lineno}: SQL {node.value.strip()[:40]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in CONNECTION_CALLS:
            owner = ast.unparse(node.value)
            if "staging" in owner.lower():
                found.append(f"{module}:{node.lineno}: {owner}.{node.attr}")
    return found


def test_no_module_outside_the_store_holds_sql() -> None:
    found = [
        problem
        for path in sorted(PACKAGE.rglob("*.py"))
        for problem in sql_outside_the_store(module_name(path), path.read_text())
    ]
    assert found == [], "SQL outside mcsync/store/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'rows = staging.query("SELECT id FROM rows")',
        "ctx.staging.conn.execute(sql)",
        'SQL = "UPDATE rows SET sync_status = ?"',
        'q = "DELETE FROM updates WHERE id = ?"',
    ],
)
def test_sql_outside_the_store_is_named(source: str) -> None:
    assert sql_outside_the_store("mcsync.stages.example", source)
    assert not sql_outside_the_store("mcsync.store.example", source)
