"""The structure stays true: layers, independent services, no dev tools in production, no
torch in the planner, the assembler or the web page, no import cycles (pyproject.toml's
import-linter contracts), and every import of the project names a file of the repository."""

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "lint-imports is missing: install the dev extra"
    done = subprocess.run(
        [lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "0 broken" in done.stdout


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "ghibli_anim"}


def test_every_import_names_a_file_of_the_repository():
    sources = [*ROOT.glob("ghibli_anim/**/*.py"), *ROOT.glob("tests/**/*.py")]
    sources += [*ROOT.glob("bench/*.py")]
    missing = set()
    for path in sources:
        for module in _imported_modules(path):
            as_file = ROOT / (module.replace(".", "/") + ".py")
            as_package = ROOT / module.replace(".", "/") / "__init__.py"
            if as_file.is_file() or as_package.is_file():
                continue
            # `from package import name`: a name defined in the package module, not a file.
            parent = module.rsplit(".", 1)[0]
            if (ROOT / (parent.replace(".", "/") + ".py")).is_file() or (
                ROOT / parent.replace(".", "/") / "__init__.py"
            ).is_file():
                continue
            missing.add(f"{path.relative_to(ROOT)}: {module}")
    assert sorted(missing) == []


def test_the_installed_package_is_this_folder():
    spec = importlib.util.find_spec("ghibli_anim")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == ROOT / "ghibli_anim" / "__init__.py"
