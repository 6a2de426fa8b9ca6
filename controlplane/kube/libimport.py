"""Import the `kubernetes` package's `client` without running the package's
`__init__`, which imports every part of the library (`config` with oauthlib and
requests, `stream` with websocket, `dynamic`, `leaderelection`, `informer`): about
0.05-0.1 CPU-s of meshd's start-up for modules meshd does not use (it uses the
ApiClient and the JSON layer only; bench/README.md "Start-up").

`skip_package_init()` puts a package module for `kubernetes` in `sys.modules` that has
the real package's path, so `from kubernetes import client` loads just `client`; any
other part (`kubernetes.config`, `.watch`, ...) is still imported on first use by
`from kubernetes import config` or attribute access (the module's `__getattr__`).
Nothing changes when the real package is already imported (tests that import it first).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_PARTS = frozenset({"client", "config", "dynamic", "watch", "stream", "utils", "leaderelection", "informer"})


def skip_package_init() -> None:
    if "kubernetes" in sys.modules:
        return
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the import that needs it says so
    pkg = types.ModuleType("kubernetes", "The kubernetes package, its parts imported on first use (meshd).")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__package__ = "kubernetes"

    def __getattr__(name: str) -> Any:  # a module __getattr__ (PEP 562)
        if name in _PARTS:
            return importlib.import_module(f"kubernetes.{name}")
        if name == "__version__":
            return importlib.import_module("kubernetes.client").__version__
        raise AttributeError(f"module 'kubernetes' has no attribute {name!r}")

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["kubernetes"] = pkg
