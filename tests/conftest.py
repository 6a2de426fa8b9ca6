import os
import signal
import sys
from pathlib import Path

import pytest

# Tests import `tests.support`; make the repo root importable however pytest is run.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The Kubernetes API servers (the real one per session, the stand-in per test) and the
# report of which one each test used; the mesh test bed (`testbed`).
pytest_plugins = ["tests.support.kube_fixtures", "tests.testbed.fixtures"]


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    """A run stopped with SIGTERM (`timeout`, a cancelled CI job) ends as Ctrl-C does:
    pytest tears the fixtures down, so the API server, the test bed's namespaces and
    every meshd and Envoy are stopped instead of left running without their parent."""
    signal.signal(signal.SIGTERM, _interrupted)


@pytest.fixture(scope="session", autouse=True)
def meshd_home(tmp_path_factory):
    """Every meshd a test starts (they inherit the environment) keeps its state
    ($MESHD_HOME: the CA, the last good config) in a temporary directory, never in the
    developer's ~/.meshd. Tests that need their own pass MESHD_HOME themselves."""
    before = os.environ.get("MESHD_HOME")
    os.environ["MESHD_HOME"] = str(tmp_path_factory.mktemp("meshd-home"))
    yield Path(os.environ["MESHD_HOME"])
    if before is None:
        os.environ.pop("MESHD_HOME", None)
    else:
        os.environ["MESHD_HOME"] = before
