"""Small measuring and waiting helpers shared by the device tests."""
import time

import numpy as np


def max_step(y: np.ndarray) -> float:
    """The largest sample-to-sample step: a click or zipper noise shows up here."""
    return float(np.abs(np.diff(y)).max())


def wait_for(cond, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
