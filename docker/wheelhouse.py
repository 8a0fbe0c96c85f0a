"""Fill the offline wheelhouse the Docker image installs from, and stage it for a build.

1. Resolve the runtime dependencies in pyproject.toml to exact pins with pip's resolver
   (``pip install --dry-run --report``), using this machine's pip configuration: on this
   machine that is where torch==2.14.1 comes from (a local index, no download).
2. ``pip download`` each pinned wheel into a cache outside the repository
   (default ``~/.cache/fedcifar/wheelhouse``); wheels already there are not fetched again.
3. Stage exactly those wheels, hard-linked (free on one filesystem), plus ``requirements.txt``
   with the pins, into the build context folder (default ``build/wheelhouse``, git-ignored).

The Dockerfile then runs ``pip install --no-index --find-links`` on the staged folder, so the
image build itself needs no network: the air-gapped path. Extra pip options, such as
``--index-url https://download.pytorch.org/whl/cpu`` for a CPU-only torch where that index is
reachable, go after ``--``.

``--extra flower --installed build/wheelhouse/requirements.txt --out build/wheelhouse-flower``
resolves the runtime dependencies together with the [flower] extra and stages only the wheels
the plain image does not already have (docker/build-flower-image.sh).

Usage: python docker/wheelhouse.py [--cache DIR] [--out DIR] [--extra NAME] [--installed FILE] [-- PIP_OPTIONS...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]


def runtime_requirements(extras: list[str] | None = None) -> list[str]:
    """The project's runtime dependencies (plus those of `extras`) and what building it needs (setuptools)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = project.get("build-system", {}).get("requires", [])
    optional = project["project"].get("optional-dependencies", {})
    unknown = [e for e in extras or [] if e not in optional]
    if unknown:
        raise SystemExit(f"wheelhouse: no extra {unknown[0]!r} in pyproject.toml (have: {', '.join(optional)})")
    extra = [r for e in extras or [] for r in optional[e]]
    return list(project["project"]["dependencies"]) + extra + list(build)


def read_pins(path: Path) -> set[str]:
    """The ``name==version`` lines of a requirements.txt, names lower-cased."""
    pins = set()
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins.add(f"{name.strip().lower()}=={version.strip()}")
    return pins


def resolve(requirements: list[str], pip_options: list[str]) -> list[tuple[str, str, str]]:
    """(name, version, wheel file name) for every package pip would install."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:"]
        cmd += ["--quiet", "--report", str(report), *pip_options, *requirements]
        subprocess.run(cmd, check=True)
        data = json.loads(report.read_text())
    pins = []
    for item in data["install"]:
        meta = item["metadata"]
        filename = unquote(Path(urlparse(item["download_info"]["url"]).path).name)
        pins.append((meta["name"], meta["version"], filename))
    return sorted(pins, key=lambda p: p[0].lower())


def download(pins: list[tuple[str, str, str]], cache: Path, pip_options: list[str]) -> None:
    missing = [f"{name}=={version}" for name, version, filename in pins if not (cache / filename).exists()]
    if not missing:
        print(f"wheelhouse: all {len(pins)} wheels already in {cache}")
        return
    print(f"wheelhouse: fetching {len(missing)} of {len(pins)} wheels into {cache}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    cmd += ["--dest", str(cache), *pip_options, *missing]
    subprocess.run(cmd, check=True)


def stage(pins: list[tuple[str, str, str]], cache: Path, out: Path, installed: set[str] | None = None) -> None:
    """Hard-link (or copy) the pinned wheels into ``out`` and write ``out/requirements.txt``.

    Wheels pinned in `installed` (what the image below already has) are listed but not staged:
    pip finds them satisfied.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pins_all, pins = pins, [p for p in pins if f"{p[0].lower()}=={p[1]}" not in (installed or set())]
    for _, _, filename in pins:
        src = cache / filename
        if not src.exists():
            raise SystemExit(f"wheelhouse: {filename} is not in {cache} after pip download")
        try:
            os.link(src, out / filename)
        except OSError:  # another filesystem
            shutil.copy2(src, out / filename)
    lines = [f"{name}=={version}" for name, version, _ in pins_all]
    (out / "requirements.txt").write_text(
        "# pinned by docker/wheelhouse.py from pyproject.toml\n" + "\n".join(lines) + "\n"
    )
    size = sum((out / f).stat().st_size for _, _, f in pins)
    print(f"wheelhouse: staged {len(pins)} of {len(pins_all)} wheels ({size / 1e9:.2f} GB) in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fedcifar" / "wheelhouse")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "wheelhouse")
    parser.add_argument("--extra", action="append", help="add an optional-dependencies group (e.g. flower)")
    parser.add_argument(
        "--installed", type=Path, help="requirements.txt of the image this one builds on: its wheels are not staged"
    )
    parser.add_argument("pip_options", nargs="*", help="extra pip options, after --")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    pins = resolve(runtime_requirements(args.extra), args.pip_options)
    download(pins, args.cache, args.pip_options)
    stage(pins, args.cache, args.out, read_pins(args.installed) if args.installed else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
