"""`pip install .` (not editable) of a fresh clone, then `meshd serve` with no flag from
another directory: the bundled example ships inside the package (issue 16 item 1).

The wheel is built the two ways a newcomer builds it: `pip install .` (a wheel straight
from the clone) and `python -m build` (an sdist first, the wheel from the unpacked sdist);
both hold the same files. It is installed into a fresh venv whose dependencies come from
this environment (--system-site-packages, --no-deps: nothing is downloaded), and that
venv's `meshd` must import the installed package, not the checkout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support.harness import MeshdHandle, Process, free_port, http_get, wait_for
from tests.support.paths import REPO

pytestmark = pytest.mark.e2e


def run(*argv: str, cwd: Path | None = None, env: dict | None = None) -> str:
    cp = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, f"{' '.join(argv)} failed ({cp.returncode}):\n{cp.stdout[-2000:]}\n{cp.stderr[-3000:]}"
    return cp.stdout


def wheel_files(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return {n for n in z.namelist() if ".dist-info/" not in n}


def test_a_non_editable_install_serves_the_bundled_example_from_anywhere(tmp_path: Path):
    # A fresh clone of what is committed, as a newcomer gets it.
    src = tmp_path / "meshd"
    run("git", "clone", "--quiet", str(REPO), str(src))
    assert (src / "deploy" / "examples" / "webapp-gateway.yaml").is_file()  # the walk-through's path
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    run(*build, "-w", str(tmp_path / "direct"), str(src))
    (whl,) = (tmp_path / "direct").glob("meshd-*.whl")
    # python -m build's way: sdist, then the wheel from the unpacked sdist
    sdist = run(sys.executable, "-c", f"from setuptools import build_meta as b; print(b.build_sdist({str(tmp_path / 'sdist')!r}))",
                cwd=src).strip().splitlines()[-1]
    with tarfile.open(tmp_path / "sdist" / sdist) as t:
        t.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    run(*build, "-w", str(tmp_path / "from-sdist"), str(unpacked))
    (whl2,) = (tmp_path / "from-sdist").glob("meshd-*.whl")
    files = wheel_files(whl)
    assert {"controlplane/examples/webapp-gateway.yaml", "controlplane/examples/ingress-gateway.yaml",
            "controlplane/examples/webapp.yaml"} <= files
    assert any(f.startswith("controlplane/_gen/") and f.endswith("_pb2.py") for f in files)
    assert wheel_files(whl2) == files

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MESHD_HOME=str(tmp_path / "home"), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(whl), env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(str(venv / "bin" / "python"), "-c", "import controlplane; print(controlplane.__file__)",
                cwd=elsewhere, env=env).strip()
    assert where.startswith(str(venv)), f"the venv imports {where}, not its own install"

    xds, mon, secure = (free_port("127.0.0.1") for _ in range(3))
    p = Process("meshd", [str(venv / "bin" / "meshd"), "serve", "--listen-address", "127.0.0.1", "--xds-port", str(xds),
                          "--monitoring-port", str(mon), "--secure-xds-port", str(secure)],
                tmp_path / "meshd.log", env=env)
    handle = MeshdHandle(p, xds, mon)
    try:
        wait_for(lambda: handle.ready() or not p.alive(), 60, what="the installed meshd /ready")
        assert p.alive(), p.log()[-3000:]
        configz = json.loads(http_get("127.0.0.1", mon, "/debug/configz")[1])
        gateways = [o for o in configz["objects"] if o["kind"] == "Gateway"]
        assert [g["name"] for g in gateways] == ["coolstore-gateway"]
        assert gateways[0]["origin"]["location"].startswith(str(venv)), gateways[0]["origin"]
        assert configz["rejections"] == []
    finally:
        p.stop()
    assert p.proc.returncode == 0, p.log()[-3000:]
