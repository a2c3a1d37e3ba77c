"""The test suite imports its own modules one way: ``from tests.helpers import ...``.

``tests`` is a package, so a helper module has one name and one module object. The bare style
(``from helpers import ...``, ``from mysql_server import ...``, ``from integration.conftest
import ...``) only worked through pytest's rootdir ``sys.path`` insertion and gave a second
module object for the same file. Fixture modules are registered through ``pytest_plugins`` in
tests/conftest.py, never imported for their fixtures. These checks read the source (ast), so a
new test file in the old style fails here with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def _local_names() -> set[str]:
    """Top-level names that would resolve to a file of tests/ only through sys.path tricks."""
    names = {p.stem for p in TESTS.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in TESTS.iterdir() if (p / "__init__.py").exists()}
    return names


def _sources() -> list[Path]:
    return [p for p in sorted(TESTS.rglob("*.py")) if "data" not in p.relative_to(TESTS).parts]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every absolute import in ``path`` (names empty for ``import``)."""
    out: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return out


def _fixtures(module: Path) -> set[str]:
    """Names of the functions decorated with ``pytest.fixture`` in ``module``."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if ast.unparse(target) in ("pytest.fixture", "fixture"):
                    found.add(node.name)
    return found


def _plugins() -> list[str]:
    tree = ast.parse((TESTS / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return list(value)
    return []


def test_tests_is_a_package_so_each_helper_has_one_module_name() -> None:
    assert (TESTS / "__init__.py").exists()


def test_test_modules_import_helpers_as_tests_dot_module() -> None:
    local = _local_names()
    bad = []
    for path in _sources():
        for line, module, _ in _imports(path):
            top = module.partition(".")[0]
            if top in local:
                bad.append(
                    f"{path.relative_to(TESTS.parent)}:{line}: import {module} -> tests.{module}"
                )
    assert not bad, "import the test suite's modules as tests.<module>:\n" + "\n".join(bad)


def test_fixture_modules_are_registered_as_plugins_not_imported_for_their_fixtures() -> None:
    plugins = _plugins()
    assert "tests.mariadb_fixtures" in plugins
    fixtures = {
        name: _fixtures(TESTS.parent / (name.replace(".", "/") + ".py")) for name in plugins
    }
    bad = []
    for path in _sources():
        for line, module, names in _imports(path):
            shared = set(names) & fixtures.get(module, set())
            if shared:
                bad.append(
                    f"{path.relative_to(TESTS.parent)}:{line}: {sorted(shared)} from {module}"
                )
    assert not bad, (
        "fixtures of modules in pytest_plugins (tests/conftest.py) are found by name; "
        "do not import them:\n" + "\n".join(bad)
    )
