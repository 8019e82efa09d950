import os
from pathlib import Path

import pytest

from device.selftest import emulation

REPO = Path(__file__).resolve().parents[2]

# Under emulation (`make test-pi`: aarch64 under qemu-user, about 100x slower) a test that keeps
# pace with a real-time sound card or waits a fixed time for a poller measures qemu, not the code.
EMULATED = emulation()
needs_real_time = pytest.mark.skipif(EMULATED is not None, reason=f"needs real time; {EMULATED} runs about 100x slower")


def pytest_report_header(config):
    if EMULATED:
        return [f"emulated: {EMULATED}: tests marked needs_real_time are skipped (correctness only)"]
    return []


@pytest.fixture(scope="session")
def bundle_path() -> Path:
    """The small trained-and-converted bundle made by `make build/testkit/tiny.pedal`."""
    p = Path(os.environ.get("PEDAL_TEST_BUNDLE", REPO / "build/testkit/tiny.pedal"))
    if not p.exists():
        pytest.fail(f"{p} is missing: run `make test` (it builds the test bundle with the host environment first)")
    return p
