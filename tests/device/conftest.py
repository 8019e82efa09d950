import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bundle_path() -> Path:
    """The small trained-and-converted bundle made by `make build/testkit/tiny.pedal`."""
    p = Path(os.environ.get("PEDAL_TEST_BUNDLE", REPO / "build/testkit/tiny.pedal"))
    if not p.exists():
        pytest.fail(f"{p} is missing: run `make test` (it builds the test bundle with the host environment first)")
    return p
