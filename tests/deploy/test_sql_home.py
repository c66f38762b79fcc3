"""`service/db/` is the only place that speaks SQL: no module elsewhere in `service/` builds a
statement (`text`, `select`, `insert`, `update`, `delete` from SQLAlchemy) or passes a string to
`execute`; routes, tasks, pages, metrics and the CLI call named query functions instead."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
BUILDERS = {"text", "select", "insert", "update", "delete"}


def sql_in(path: Path) -> list[str]:
    """'line: what' for each SQL builder imported from SQLAlchemy and each string handed to execute()."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            found += [f"{node.lineno}: imports {a.name} from {node.module}" for a in node.names if a.name in BUILDERS]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in {"execute", "exec_driver_sql"} and node.args
              and isinstance(node.args[0], ast.Constant | ast.JoinedStr)):
            found.append(f"{node.lineno}: {node.func.attr}() of a string")
    return found


def outside_db() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "db" not in p.relative_to(SERVICE).parts[:1])


def test_no_sql_outside_service_db() -> None:
    offenders = {str(p.relative_to(SERVICE)): sql_in(p) for p in outside_db()}
    offenders = {name: found for name, found in offenders.items() if found}
    assert not offenders, f"SQL outside service/db/ (move it into a named query function): {offenders}"


def test_the_check_sees_sql_where_it_is(tmp_path: Path) -> None:
    sample = tmp_path / "route.py"
    sample.write_text("from sqlalchemy import text, Engine\n\ndef f(s):\n    s.execute(text('SELECT 1'))\n"
                      "    s.exec_driver_sql(f'SELECT {1}')\n")
    assert sql_in(sample) == ["1: imports text from sqlalchemy", "5: exec_driver_sql() of a string"]

