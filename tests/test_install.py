"""What a new user's fresh install needs: every module imports, every script answers ``--help``, every third-party
package that the code imports is declared in pyproject.toml, and CI runs the README's commands in a fresh venv."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("memory_cores", "agents", "envs")
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
# imported only inside a try block, as an optional comparison: scripts/benchmark_cores.py times the PyPI `dnc`
# package beside ours when it is installed and says so when it is not (it needs `flann`, which often fails to build)
OPTIONAL_IMPORTS = {"dnc"}


def all_modules() -> list[str]:
    out = []
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        out.append(name)
        out += [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=name + ".")]
    return out


@pytest.mark.parametrize("module", all_modules())
def test_every_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                       timeout=120, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage" in p.stdout.lower() and len(p.stdout) > 200


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module names imported anywhere in the packages and scripts -> files importing them."""
    local = set(PACKAGES) | {p.stem for p in (ROOT / "scripts").glob("*.py")}
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    files = [p for d in (*PACKAGES, "scripts") for p in (ROOT / d).rglob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in local and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared_distributions() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_imported_package_is_declared():
    declared = _declared_distributions()
    dists = md.packages_distributions()  # import name -> distributions providing it (installed ones)
    missing = {}
    for module, files in _third_party_imports().items():
        if module in OPTIONAL_IMPORTS:
            continue
        provided = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not provided & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    # torch.utils.tensorboard (every training run) needs the tensorboard distribution
    assert "tensorboard" in declared and "tyro" in declared


def test_ci_runs_the_readme_commands_in_a_fresh_venv():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    main_job, tests = blocks[0].strip(), blocks[1].strip()
    for cmd in (main_job, tests):
        assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh && "), cmd
    assert tests.endswith("python3 -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci and "mktemp -d" in ci and "rm -rf" in ci
    assert ci.index("bin/activate") < ci.index("bash scripts/setup.sh") < ci.index("python3 -m pytest -q")
