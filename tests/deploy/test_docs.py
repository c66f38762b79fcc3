"""The README documents every setting, and the two commands it promises exist."""

import re
import tomllib
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(FORGETWATCH_[A-Z0-9_]+)` \|", (ROOT / "README.md").read_text(), re.MULTILINE))
    assert documented == {f"FORGETWATCH_{name.upper()}" for name in Settings.model_fields}


def test_the_two_commands_are_make_targets_and_ci_runs_the_tests() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make demo") < readme.index("make test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    # CI checks exactly what a newcomer runs: `make test` installs its own tools, CI adds nothing.
    assert "apt-get" not in ci and "pip install" not in ci


def test_ci_runs_the_lint_with_a_strict_type_checker_before_the_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make lint" in ci and ci.index("make lint") < ci.index("make test")
    lint = re.search(r"^lint:.*?(?=^\S|\Z)", (ROOT / "Makefile").read_text(), re.MULTILINE | re.DOTALL)
    assert lint is not None and "ruff check" in lint.group(0) and "mypy" in lint.group(0)
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["strict"] is True and set(mypy["files"]) >= {"drift", "service/db"}
