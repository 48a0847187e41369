"""The README's Python examples run as written, and its commands match what CI runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_examples():
    assert len(PY_BLOCKS) >= 2


def test_readme_python_examples_run(capsys):
    namespace: dict = {}
    for block in PY_BLOCKS:  # later blocks build on earlier ones, as a reader would run them
        exec(compile(block, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "calls reused" in out and "'decode'" in out


def test_ci_runs_the_readme_test_command():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    test_command = next(line for line in first_block.splitlines() if "pytest" in line).split("#")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci


@pytest.mark.parametrize("path", ["scripts/setup.sh", ".ci/run", "app.py", "requirements.txt", "pyproject.toml"])
def test_files_the_readme_relies_on_exist(path):
    assert (ROOT / path).exists()
