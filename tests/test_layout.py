"""The layout (issue 32): what imports what, where the programs are, and the old module paths for one release.

The import graph is read from the source with `ast` (every import, at the top of a module or inside a function), so
a lazy import cannot hide an arrow that runs back up the layers.
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_trainkit"

# Bottom to top: a module may import from its own folder and from folders below it, never from one above.
LAYERS = [
    "constants", "library_noise", "argparsing", "distributed", "metric_rules", "diagnostics", "run_log",
    "checkpointing", "control", "trackers", "monitor", "tasks", "eval", "callbacks", "rl", "dashboard", "training",
    "commands", "cli",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_alias(path: Path) -> bool:
    """The deprecated old paths (they import the new module by design, see hf_trainkit/_moved.py)."""
    text = path.read_text()
    return path.name == "_moved.py" or "_moved import alias" in text or "Deprecated: live control moved" in text


def _imports(path: Path, text: str | None = None) -> set[str]:
    """Every hf_trainkit module or name `path` (or `text`, as if it were that file) imports, absolute."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "hf_trainkit" or target.startswith("hf_trainkit."):
                found |= {f"{target}.{alias.name}" for alias in node.names} if node.module is None else {target}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hf_trainkit")}
    return found


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _sources():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts]


def test_every_folder_and_top_level_module_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "_moved", "toy", "demo"}  # toy, demo: aliases
    assert folders | modules == set(LAYERS), (folders | modules) ^ set(LAYERS)


def test_no_import_runs_back_up_a_layer():
    wrong = []
    for path in _sources():
        if _is_alias(path) or path.name == "__main__.py":  # aliases, and `python -m` entry points (programs)
            continue
        source = _folder(_module_name(path))
        for target in _imports(path):
            folder = _folder(target)
            if source is None or folder in (None, "__version__") or folder == source:
                continue  # the package itself (its version), or within a folder
            if folder in ("toy", "demo"):
                wrong.append(f"{_module_name(path)} -> {target} (a deprecated alias)")
            elif LAYERS.index(folder) > LAYERS.index(source):
                wrong.append(f"{_module_name(path)} ({source}) -> {target} ({folder})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_layer_check_sees_lazy_imports():
    """The check above would fail on a lazy import that runs up (one inside a function), as eval/command.py's
    import of training.inputs did before the move."""
    lazy = "def load():\n    from ..training.inputs import is_vision_model\n"
    assert _imports(PACKAGE / "eval" / "sampling.py", lazy) == {"hf_trainkit.training.inputs"}
    assert LAYERS.index("training") > LAYERS.index("eval")


def test_argument_parsing_lives_in_the_commands_only():
    allowed = {PACKAGE / "cli.py", PACKAGE / "argparsing.py"}
    parsing = re.compile(r"\b(ArgumentParser|add_argument|add_subparsers|add_parser)\(")
    found = [str(p.relative_to(ROOT)) for p in _sources()
             if parsing.search(p.read_text()) and p not in allowed and p.parent.name != "commands"]
    assert not found


def test_every_program_is_one_module_of_commands_and_the_cli_lists_each_on_one_line():
    from hf_trainkit.cli import COMMANDS

    programs = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__"}
    assert {name.replace("-", "_") for name in COMMANDS} == programs
    for name in programs:
        assert callable(getattr(__import__(f"hf_trainkit.commands.{name}", fromlist=["main"]), "main"))
    shown = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "--help"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    for name, (help_text, _) in COMMANDS.items():
        mine = [line for line in lines if line.split()[:1] == [name]]
        assert len(mine) == 1 and mine[0].split(None, 1)[1] == help_text, (name, shown.stdout)


def test_old_module_paths_work_for_one_release_and_say_where_they_went():
    code = r"""
import importlib, json, sys, warnings
from hf_trainkit._moved import MOVED
out = {}
for old, new in MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_module = importlib.import_module(old)
    new_module = importlib.import_module(new)
    names = [n for n in getattr(new_module, "__all__", None) or vars(new_module) if not n.startswith("_")]
    out[old] = {"warned": [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)],
                "same": all(getattr(old_module, n) is getattr(new_module, n) for n in names), "names": len(names)}
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    for old, new in __import__("hf_trainkit._moved", fromlist=["MOVED"]).MOVED.items():
        assert report[old]["same"] and report[old]["names"] > 0, (old, report[old])
        assert any(old in message and new in message for message in report[old]["warned"]), (old, report[old])
    # The old control module also kept the two checkpoint tables it held.
    from hf_trainkit.checkpointing import discover

    with pytest.warns(DeprecationWarning):
        old = __import__("importlib").reload(__import__("hf_trainkit.checkpointing.control", fromlist=["x"]))
    assert old.checkpoint_table is discover.checkpoint_table and old.checkpoint_names is discover.checkpoint_names


def test_the_readme_architecture_names_every_folder_and_program():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture"):]
    section = section[: section.index("\n## ", 3)]
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert f"hf_trainkit/{folder.name}/" in section, folder.name
    for module in [*(PACKAGE / "commands").glob("*.py"), *(PACKAGE / "control").glob("*.py")]:
        if module.stem != "__init__":
            assert f"`{module.name}`" in section, module.name
    assert "`toy.py`" not in section and "`command.py`" not in section  # the old places are gone
