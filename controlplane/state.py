"""meshd's state directory: `$MESHD_HOME`, else `~/.meshd` (docs/state.md).

Never relative to the working directory: state that moves with `cd` would be a second
CA, or a restart that forgot the last good configuration.

    ca/                             the CA of file mode (security/cadir.py)
    kubernetes/<server>-<ns>/ca/    a mirror of a cluster's CA (kube/ca_secrets.py)
    lastgood/                       the last good version of config objects (config/lastgood.py)
"""
from __future__ import annotations

import os
from pathlib import Path

MESHD_HOME_ENV = "MESHD_HOME"


def meshd_home() -> Path:
    home = os.environ.get(MESHD_HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".meshd"
