"""
The twistd plugin is found after a regular and after an editable install.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # real processes and daemons (the second stage of .ci/run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("shellm", "twisted", "setup.py", "pyproject.toml", "README.md", "LICENSE")


def _environment(tmp_path):
    """
    A bare virtual environment that borrows this one's packages (Twisted,
    setuptools, pip) through a path entry, but not its .pth files: so the
    project itself is not visible in it until installed.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    borrowed = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(target, "borrowed.pth"), "w") as f:
        f.write("\n".join(borrowed) + "\n")
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
        else:
            shutil.copy(path, source / name)
    return python, source


def _twistd_help(python, cwd) -> str:
    return subprocess.run(
        [python, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()", "--help"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    ).stdout


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_twistd_lists_shellm_after_install(tmp_path, editable):
    """
    After C{pip install .} or C{pip install -e .}, C{twistd --help} lists the
    shellm command (and did not before).
    """
    python, source = _environment(tmp_path)
    elsewhere = str(tmp_path)
    if "shellm " in _twistd_help(python, elsewhere):
        pytest.skip("this environment already provides the plugin outside the project")
    command = [python, "-m", "pip", "install", "--quiet", "--no-deps"]
    command += ["-e", str(source)] if editable else [str(source)]
    subprocess.run(command, check=True, cwd=elsewhere, timeout=300)
    listing = _twistd_help(python, elsewhere)
    assert "shellm " in listing and "One HTTP API" in listing
