"""Training side of SignalTrain-Pi (PyTorch): datasets, the model, the training loop, evaluation."""
import ctypes
import ctypes.util
import os


def _keep_freed_memory() -> None:
    """Keep freed memory in the process instead of returning it to the kernel.

    PyTorch frees big activation tensors after every step; glibc hands large blocks back with
    munmap and the next step faults every page in again. On the VMs this project runs on a page
    fault is expensive: a training step of the small model took 3 s that way and 0.15 s with
    this (20x; `python -m training.bench_context` shows it). mallopt: big blocks from the heap (up to glibc's 32 MB mmap limit),
    never trim the heap. Linux/glibc only; elsewhere nothing changes. SIGNALTRAIN_KEEP_MEMORY=0
    turns it off."""
    if os.environ.get("SIGNALTRAIN_KEEP_MEMORY", "1") == "0":
        return
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # the largest glibc allows
        libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
        libc.mallopt(M_TOP_PAD, 1 << 30)
    except (OSError, AttributeError):
        pass


_keep_freed_memory()
