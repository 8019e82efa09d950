"""device/ stands alone on the Pi: no torch, no tensorflow, nothing from training/ or convert/."""
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import device

REPO = Path(__file__).resolve().parents[2]


def test_the_device_environment_has_no_training_stack():
    for name in ("torch", "tensorflow", "onnx", "onnx2tf"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed in the device environment ({sys.prefix})"


def test_importing_every_device_module_pulls_in_nothing_from_the_host_side():
    mods = [f"device.{m.name}" for m in pkgutil.iter_modules(device.__path__)]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'training', 'convert', 'onnx'))\n"
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"device modules imported {r.stdout.strip()}"
    assert len(mods) >= 10


def test_device_sources_name_no_host_package():
    for f in (REPO / "device").glob("*.py"):
        text = f.read_text()
        for bad in ("import torch", "import tensorflow", "from training", "from convert", "import training", "import convert"):
            assert bad not in text, f"{f.name} contains {bad!r}"
