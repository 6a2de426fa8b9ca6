import sys
from pathlib import Path

# Tests import `tests.harness`; make the repo root importable however pytest is run.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
