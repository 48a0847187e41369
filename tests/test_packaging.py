"""The installable package: pyproject.toml agrees with requirements.txt, and a built wheel works on its own.

The wheel test is what CI relies on to catch a file the package needs but does not ship: it builds the wheel from
the package's files alone, installs it into a fresh virtual environment, and runs the README's library example and
the ``lightcache`` command from a directory outside the source tree. So that it takes seconds, not a download of
torch, the new environment sees the packages of the one running the tests (through a ``.pth`` file, after its own
site-packages, so ``lightcache`` itself can only come from the wheel), and ``pip check`` proves that those satisfy
every requirement the wheel declares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import lightcache

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Modules only the extras provide: the README's library example must run without any of them.
EXTRAS_ONLY = ("gradio", "plotly", "imageio", "imageio_ffmpeg", "spaces", "playwright", "pytest")


def _requirements(lines) -> dict[str, str]:
    """``{normalised name: specifier}``; a package named twice with different ranges fails here."""
    found: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert found.setdefault(name, str(req.specifier)) == str(req.specifier), f"{name} has two ranges"
    return found


def _pyproject_requirements() -> dict[str, str]:
    project = PYPROJECT["project"]
    return _requirements(project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                                     for r in extra])


def test_requirements_txt_and_pyproject_list_the_same_requirements_and_ranges():
    in_txt = _requirements((ROOT / "requirements.txt").read_text().splitlines())
    in_toml = _pyproject_requirements()
    assert sorted(in_txt) == sorted(in_toml), "a package is in one file and not the other"
    assert in_txt == in_toml, "a package has another range in requirements.txt than in pyproject.toml"


def test_the_drift_check_can_fail():
    assert _requirements(["torch>=2.4,<2.15"]) != _requirements(["torch>=2.4,<2.16"])
    with pytest.raises(AssertionError, match="two ranges"):
        _requirements(["plotly>=5.20,<8", "Plotly>=5,<8"])


def test_the_core_is_the_library_and_the_extras_hold_the_rest():
    project = PYPROJECT["project"]
    core = set(_requirements(project["dependencies"]))
    assert {"torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "psutil", "tqdm"} <= core
    assert not core & {"gradio", "plotly", "imageio-ffmpeg", "pytest", "playwright", "spaces"}
    extras = {name: set(_requirements(reqs)) for name, reqs in project["optional-dependencies"].items()}
    assert {"gradio", "plotly", "imageio-ffmpeg"} <= extras["app"]
    assert {"plotly", "imageio-ffmpeg"} <= extras["cli"] and "plotly" in extras["bench"]
    assert {"pytest", "playwright", "spaces"} <= extras["tests"]


def test_the_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lightcache.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", lightcache.__version__)


def test_the_console_command_is_the_module_entry_point():
    assert PYPROJECT["project"]["scripts"] == {"lightcache": "lightcache.cli:main"}
    assert "from .cli import main" in (ROOT / "lightcache" / "__main__.py").read_text()


# --- the built wheel ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with the wheel built from the package's files alone, and nothing else of lightcache."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("lightcache", "presets"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", str(dist), str(source)], cwd=work)
    (wheel,) = dist.glob("lightcache-*.whl")

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
          str(wheel)], cwd=work)
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=work).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "test-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    outside = work / "elsewhere"
    outside.mkdir()
    return dict(wheel=wheel, venv=venv, python=python, cwd=outside)


def _run(cmd, cwd, env=None, timeout=300) -> str:
    clean = {k: v for k, v in (env or os.environ).items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_the_wheel_ships_the_package_data_and_nothing_else(installed):
    import zipfile

    names = zipfile.ZipFile(installed["wheel"]).namelist()
    # The top-level presets/ folder, mapped into the package (where an installed lightcache.presets looks).
    presets = sorted(Path(n).name for n in names if n.startswith("lightcache/_presets/"))
    assert presets == sorted(p.name for p in (ROOT / "presets").glob("*.json")) and "tiny.json" in presets
    assert not [n for n in names if n.startswith("presets/")]
    model = ROOT / "lightcache" / "data" / "tiny-wan"
    shipped = {str(p.relative_to(ROOT)) for p in model.rglob("*") if p.is_file()}
    assert shipped <= set(names), f"missing from the wheel: {sorted(shipped - set(names))}"
    assert "lightcache/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "scripts/", "assets/")) or "__pycache__" in n]
    assert installed["wheel"].stat().st_size < 40 * 2**20  # the tiny model is most of it


def test_pip_check_finds_every_declared_requirement_satisfied(installed):
    out = _run([sys.executable, "-m", "pip", "--python", installed["python"], "check"], cwd=installed["cwd"])
    assert "No broken requirements" in out


def test_the_readme_library_example_runs_from_the_wheel_with_the_core_requirements_only(installed):
    """Outside the source tree, with every extras-only module made unimportable."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    library = readme.index("## As a library")
    examples = [b for b in blocks if readme.index(b) > library]
    assert examples, "the README's library example is gone"
    script = textwrap.dedent(f"""
        import sys
        for name in {EXTRAS_ONLY!r}:
            sys.modules[name] = None  # import fails: these come with the extras, not with `pip install lightcache`
        import lightcache
        assert "torch" not in sys.modules, "importing lightcache must stay light"
        print("LIGHTCACHE_FILE", lightcache.__file__)
    """) + "\n".join(examples)
    (installed["cwd"] / "example.py").write_text(script)
    out = _run([installed["python"], "example.py"], cwd=installed["cwd"])
    where = Path(re.search(r"LIGHTCACHE_FILE (.+)", out).group(1))
    assert installed["venv"] in where.parents and ROOT not in where.parents
    assert "calls reused" in out and "'decode'" in out


def test_the_lightcache_command_runs_the_shipped_tiny_model(installed, tmp_path):
    command = installed["venv"] / "bin" / "lightcache"
    usage = _run([command, "--help"], cwd=installed["cwd"])
    assert usage.startswith("usage: lightcache ") and "generate" in usage
    listed = _run([command, "presets"], cwd=installed["cwd"])
    assert listed.split()[0] == "tiny" and "wan2.1-t2v-1.3b" in listed
    out = tmp_path / "run"
    _run([command, "generate", "--preset", "tiny", "--steps", "2", "--frames", "5", "--height", "32", "--width",
          "32", "--quiet", "--out", out], cwd=installed["cwd"], env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert (out / "video.mp4").stat().st_size > 0 and (out / "summary.json").is_file()
