"""A `Generator` made on first use, or ahead of it by `warm()` in a thread.

`meshd serve` is ready once its first snapshot is built; the generators and Envoy's
protobuf modules are not needed for that, and importing them is a large part of a
start. app.py hands the ADS server a DeferredGenerator and calls `warm()` in a thread
once ready: a proxy that asks before the warm-up is done waits for it (on the lock),
as it would have waited for the start itself.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generator import Generator


class DeferredGenerator:
    def __init__(self, **options: Any):
        self._options = options
        self._real: Generator | None = None
        self._lock = threading.Lock()

    @property
    def made(self) -> bool:
        return self._real is not None

    def warm(self) -> Generator:
        """The generator, made now if it was not (importing every generator module)."""
        real = self._real
        if real is not None:
            return real
        with self._lock:  # one import of the generator modules, whichever thread asks first
            if self._real is None:
                from .generator import Generator

                self._real = Generator(**self._options)
            return self._real

    def __getattr__(self, name: str) -> Any:
        # Only attributes not set in __init__ arrive here: those of the Generator.
        return getattr(self.warm(), name)
