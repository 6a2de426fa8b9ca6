# First, before any dataclass of meshd exists: their generated methods come compiled from
# a cache instead of being compiled at every start (controlplane/dataclass_cache.py).
from controlplane import dataclass_cache as _dataclass_cache

_dataclass_cache.install()
