"""meshd's own protos: lint-clean under buf.yaml (real `buf lint`), compiled by the package
build into controlplane/_gen/ (never committed), and the generated code in use matches
protos/ (a .proto edited without rebuilding is caught here)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUF_VERSION = "1.75.0"  # @bufbuild/buf on the npm registry ships the buf binary


def _buf(cache_dir: Path) -> str | None:
    found = shutil.which("buf")
    if found:
        return found
    local = cache_dir / "node_modules" / ".bin" / "buf"
    if local.exists():
        return str(local)
    npm = shutil.which("npm")
    if npm is None:
        return None
    subprocess.run([npm, "install", "--prefix", str(cache_dir), "--no-save", "--no-audit", "--no-fund",
                    "--loglevel=error", f"@bufbuild/buf@{BUF_VERSION}"], check=True, timeout=300,
                   capture_output=True)
    return str(local) if local.exists() else None


def test_buf_lint(request):
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    buf = _buf(Path(cache.mkdir("buf-npm")) if cache is not None else Path(tempfile.gettempdir()) / "meshd-buf-npm")
    if buf is None:
        pytest.skip("neither buf nor npm available")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_matches_the_protos(tmp_path: Path):
    """Compile protos/ as setup.py does, into a scratch tree, and compare."""
    sys.path.insert(0, str(REPO))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("meshd_setup_for_test", REPO / "setup.py")
        source = (REPO / "setup.py").read_text().replace("setup(cmdclass=", "_ = dict(cmdclass=")
        module = importlib.util.module_from_spec(spec)
        module.__file__ = str(tmp_path / "setup.py")
        (tmp_path / "protos").symlink_to(REPO / "protos")
        exec(compile(source, str(tmp_path / "setup.py"), "exec"), module.__dict__)
        packages = module.compile_protos()
    finally:
        sys.path.remove(str(REPO))
    assert "controlplane._gen.istio.v1.auth" in packages
    generated = tmp_path / "controlplane" / "_gen"
    in_use = REPO / "controlplane" / "_gen"
    for f in sorted(generated.rglob("*.py")):
        rel = f.relative_to(generated)
        assert (in_use / rel).exists(), f"controlplane/_gen/{rel} missing: run `pip install -e .`"
        if f.name.endswith("_pb2.py"):
            # The serialized descriptor is the proto's content; version headers may differ
            # between the build's pinned grpcio-tools and the one installed here.
            assert _descriptor(f) == _descriptor(in_use / rel), \
                f"controlplane/_gen/{rel} is stale: protos/ changed since the last build; run `pip install -e .`"


def _descriptor(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if "AddSerializedFile(" in line)


def test_generated_code_is_not_committed():
    tracked = subprocess.run(["git", "ls-files", "controlplane/_gen"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert tracked.stdout == ""
    ignored = subprocess.run(["git", "check-ignore", "-q", "controlplane/_gen/istio/v1/auth/ca_pb2.py"], cwd=REPO)
    assert ignored.returncode == 0, ".gitignore must cover controlplane/_gen/"


def test_a_wheel_carries_the_generated_modules(tmp_path: Path):
    """`pip install .` path: the wheel built from this tree has the compiled protos."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = tmp_path.glob("meshd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("ca_pb2.py", "ca_pb2_grpc.py", "__init__.py"):
        assert f"controlplane/_gen/istio/v1/auth/{module}" in names
    assert "controlplane/_gen/__init__.py" in names
