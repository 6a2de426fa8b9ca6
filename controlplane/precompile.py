"""`python -m controlplane.precompile`: warm meshd's caches, as an image build does.

Byte-compiles the packages controlplane and ca (their .pyc files), then imports every
module of both so each dataclass is created once, and saves the compiled dataclass
methods (controlplane/dataclass_cache.py). A replica started from the image then neither
compiles a module nor a dataclass method. Like compileall it writes even under
PYTHONDONTWRITEBYTECODE, and it honours PYTHONPYCACHEPREFIX.

An import that fails is reported on stderr and the walk goes on; the exit status is 1 if
any compile or import failed, so a broken image build says so. protoc's gRPC stubs under
controlplane._gen are the exception: skipped silently if they fail.
"""
import compileall
import importlib
import pkgutil
import sys
import traceback
from types import ModuleType

import ca
import controlplane
from controlplane import dataclass_cache

PACKAGES: tuple[ModuleType, ...] = (controlplane, ca)


def _tolerated(name: str) -> bool:
    """Modules whose import failure is not an error: protoc's gRPC stubs."""
    return name.startswith("controlplane._gen.") and name.endswith("_grpc")


def import_all(packages: tuple[ModuleType, ...] = PACKAGES) -> list[str]:
    """Import every module of `packages` (never a `__main__`); the names that failed."""
    failed: list[str] = []

    def report(name: str) -> None:
        if not _tolerated(name):
            print(f"precompile: cannot import {name}:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            failed.append(name)

    for package in packages:
        # walk_packages imports the subpackages itself (it needs their __path__); `onerror`
        # hears of those that fail.
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.", onerror=report):
            if info.name.rpartition(".")[2] == "__main__" or info.ispkg:
                continue
            try:
                importlib.import_module(info.name)
            except Exception:
                report(info.name)
    return failed


def main() -> int:
    compiled = all([compileall.compile_dir(p.__path__[0], quiet=1, workers=0)
                    for p in PACKAGES])
    failed = import_all()
    path = dataclass_cache.save(force=True)
    hits, misses = dataclass_cache.counts()
    print(f"precompile: {hits + misses} dataclass methods ({misses} compiled), "
          f"cache {(path or 'unchanged') if dataclass_cache.installed() else 'off on this Python'}", file=sys.stderr)
    return 0 if compiled and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
