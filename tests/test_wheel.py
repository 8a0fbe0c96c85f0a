"""`pip install .` (not editable): the wheel alone gives a working `fedcifar train`, `serve` and `bench`.

The wheel is built offline (no build isolation) from a copy of what the Dockerfile copies
(pyproject.toml, README.md, src/), so no build/ or egg-info lands in the checkout and no stale
build/lib can leak into it. It goes with --no-deps into a fresh venv, which borrows torch and
the other dependencies from this (development) venv through a .pth file: that path comes after
the fresh venv's own site-packages, and the .pth files inside it (the editable fedcifar among
them) are not processed, so `fedcifar` there is the wheel's. Every command runs from a folder
outside the repository, without PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration  # builds a wheel and installs it into a fresh venv

ROOT = Path(__file__).resolve().parents[1]
PEER_FILES = ("paper_style.py", "flower_app/pyproject.toml", "flower_app/simulate.py", "flower_app/flowerbench/task.py")


class Installed:
    def __init__(self, venv: Path, cwd: Path, env: dict[str, str]) -> None:
        self.venv, self.cwd, self.env = venv, cwd, env
        self.python = venv / "bin" / "python"
        self.fedcifar = venv / "bin" / "fedcifar"

    def run(self, *cmd: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}"
        return proc


def _pip(*args: str | Path) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}\n{(proc.stdout + proc.stderr)[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """Build the wheel, install it into a fresh venv: once for the module (about 10 s)."""
    try:
        import setuptools
    except ImportError:  # pragma: no cover - the [dev] extra pins it
        pytest.fail("building the wheel offline needs setuptools in this venv: pip install -e '.[dev]'")
    assert tuple(map(int, setuptools.__version__.split(".")[:2])) >= (70, 1), "setuptools >= 70.1 builds wheels alone"

    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", source)
    (wheel,) = (tmp / "dist").glob("fedcifar-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    _pip("--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel)
    site = Path(
        subprocess.check_output(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    dev_site = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # torch & co., not fedcifar
    (site / "_fedcifar_test_dev_deps.pth").write_text("".join(f"{p}\n" for p in dev_site))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]),
        VIRTUAL_ENV=str(venv),
        PYTHONNOUSERSITE="1",
        MPLCONFIGDIR=str(tmp / "mpl"),
    )
    cwd = tmp / "elsewhere"  # not the checkout: nothing there to import fedcifar from
    cwd.mkdir()
    return Installed(venv, cwd, env)


def test_fedcifar_is_the_wheels_with_the_bench_peers_inside(installed):
    code = (
        "import fedcifar, torch\n"
        "from fedcifar.bench.run import PEERS_DIR, BenchOptions\n"
        "from fedcifar.bench.workload import Workload\n"
        "print(fedcifar.__file__); print(torch.__file__); print(PEERS_DIR)\n"
        "print(BenchOptions(Workload(), '.').benchmarks_dir)\n"
    )
    package, torch_file, peers, default_dir = installed.run(installed.python, "-c", code).stdout.split()
    package = Path(package).parent
    assert package.is_relative_to(installed.venv), f"imported {package}, not the wheel's"
    assert not Path(torch_file).is_relative_to(installed.venv)  # borrowed, not reinstalled
    assert Path(peers) == Path(default_dir) == package / "bench" / "peers"
    for name in PEER_FILES:
        assert (package / "bench" / "peers" / name).is_file(), name
    assert (package / "serve" / "templates" / "index.html").is_file()
    assert (package / "serve" / "static" / "style.css").is_file()
    # the paper-style pipeline `fedcifar bench` starts runs from the installed package
    usage = installed.run(installed.python, Path(peers) / "paper_style.py", "--help").stdout
    assert "workload" in usage


@pytest.mark.parametrize(
    "command", [(), ("train",), ("serve",), ("bench",)], ids=["fedcifar", "train", "serve", "bench"]
)
def test_help_from_the_wheel(installed, command):
    out = installed.run(installed.fedcifar, *command, "--help").stdout
    assert out.startswith("usage: fedcifar")


def test_smoke_training_from_the_wheel(installed):
    data = Path(installed.env["FEDCIFAR_DATA_DIR"])
    assert (data / "cifar-100-python").is_dir(), f"CIFAR-100 not under {data}"
    run = installed.cwd / "smoke"
    installed.run(
        installed.fedcifar, "train", "--preset", "smoke", "--out", run, "--quiet", "--no-download", timeout=900
    )
    assert list(pd.read_csv(run / "metrics.csv")["round"]) == [1, 2]
    assert (run / "model_global.safetensors").stat().st_size > 0
