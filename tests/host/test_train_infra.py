"""Training people can trust: a run stopped with Ctrl-C and resumed ends exactly where one that ran
through ends; two processes under torchrun (gloo, CPU) train into one checkpoint; a TOML config
with flags over it. All on training/configs/tiny.toml (the nano model, short chunks, fixed steps,
one thread). The GPU path (NCCL, bf16 autocast) needs CUDA and is not tested here."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.train import TrainConfig, load_checkpoint, main, parse_args, read_config, train

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "tiny.toml"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from training.data import build_dataset
    from training.effects import get_effect
    return build_dataset(get_effect("comp4"), tmp_path_factory.mktemp("comp4"), seconds_each=2.0, n_midi=4,
                         n_synth=3, segment_s=1.0, settings_per_segment=2, test_seconds=1.0, log=lambda m: None)


def losses(run: Path) -> list[tuple[int, str]]:
    """(step, training loss as written) for every step of a run's metrics.csv."""
    with (run / "metrics.csv").open() as f:
        return [(int(r["step"]), r["train_loss"]) for r in csv.DictReader(f)]


def test_settings_come_from_the_defaults_then_the_config_file_then_the_flags(tmp_path):
    cfg = parse_args(["--config", str(TINY), "--data", "d", "--out", "o", "--batch", "3"])
    assert (cfg.tier, cfg.max_steps, cfg.threads) == ("nano", 24, 1)  # the file over the defaults
    assert cfg.batch == 3 and cfg.data == "d" and cfg.lr == TrainConfig().lr  # flags over the file; the rest default
    bad = tmp_path / "bad.toml"
    bad.write_text("tier = 'nano'\nbatchsize = 4\n")
    with pytest.raises(ValueError, match="batchsize"):
        read_config(bad)


def test_after_a_hard_kill_the_log_goes_back_to_the_checkpoint_the_run_resumes_from(tmp_path):
    from training.train import RunLog
    log = RunLog(tmp_path, 0, tensorboard=False)
    for step in range(1, 11):  # steps 7..10 came after the last checkpoint (step 6), then kill -9
        log.step(step, 0.1 * step, 1e-3, float(step), 0.5 if step == 6 else None)
    log.close()
    RunLog(tmp_path, 6, tensorboard=False).close()  # what a resume from step 6 does first
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_a_run_stopped_with_ctrl_c_and_resumed_ends_as_one_that_ran_through(dataset, tmp_path):
    steps = 120
    settings = {**read_config(TINY), "data": str(dataset), "max_steps": steps}
    through = train(TrainConfig(**settings, out=str(tmp_path / "through"), tensorboard=False), log=lambda m: None)

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "training.train", "--config", str(TINY), "--data", str(dataset),
                             "--out", str(cut), "--max-steps", str(steps)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (cut / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the first checkpoint (step 8), then Ctrl-C somewhere in the run
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert "--resume" in err  # it says how to go on
    stopped = torch.load(cut / "last.pt", weights_only=False)["resume"]["progress"]
    assert 8 <= stopped["step"] < steps
    assert [s for s, _ in losses(cut)] == list(range(1, stopped["step"] + 1))  # every step taken is in the checkpoint
    assert list((cut / "tb").glob("events.out.tfevents.*"))  # TensorBoard beside the CSV

    main(["--resume", str(cut), "--tensorboard", "false"])
    resumed = (cut / "train.json").read_text()
    assert '"steps": 120' in resumed and '"interrupted": null' in resumed
    # the same curve to the last bit: weights, optimiser, random draws and schedule all came back
    assert losses(cut) == losses(tmp_path / "through")
    _, a = load_checkpoint(cut / "last.pt")
    _, b = load_checkpoint(tmp_path / "through" / "last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    ha, hb = a["resume"]["progress"]["history"], b["resume"]["progress"]["history"]
    assert {k: ha[k] for k in ("step", "train_esr", "val_esr")} == {k: hb[k] for k in ("step", "train_esr", "val_esr")}
    assert through["steps"] == steps


def test_two_processes_under_torchrun_train_into_one_checkpoint(dataset, tmp_path):
    run = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "training.train", "--config", str(TINY), "--data", str(dataset), "--out", str(run),
                           "--tensorboard", "false"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes on cpu" in done.stderr + done.stdout
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]  # one writer: process 0
    model, ck = load_checkpoint(run / "best.pt")
    assert ck["metrics"]["step"] in (8, 16, 24)  # validated every 8 steps
    last = torch.load(run / "last.pt", weights_only=False)["resume"]
    assert last["progress"]["step"] == 24
    assert last["world_size"] == 2 and len(last["rng"]) == 2
    assert last["rng"][0]["numpy"] != last["rng"][1]["numpy"]  # each process drew its own chunks
    assert [s for s, _ in losses(run)] == list(range(1, 25))
    torch.manual_seed(0)
    fresh = type(model)(model.cfg)  # the weights the run started from (seed 0)
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, fresh.state_dict()[k])]
    assert changed and all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())


def test_the_static_curve_plot_names_each_setting_by_its_knobs_and_units(dataset, tmp_path):
    from training.data import PairSet
    from training.evaluate import knob_text, plot_level_curves
    from training.model import SignalTrainPi, tier_config
    test = PairSet(dataset, "Test")
    specs = {k.name: k for k in test.knob_specs}
    assert knob_text(specs["threshold_db"], -40) == "threshold -40 dB"
    assert knob_text(specs["ratio"], 6.8426) == "ratio 6.84:1" and knob_text(specs["attack_ms"], 3.98) == "attack 3.98 ms"
    model = SignalTrainPi(tier_config("nano", n_knobs=4)).eval()
    labels = plot_level_curves(model, {"effect": "comp4"}, test, tmp_path / "level_curves.png")
    settings = [lb for lb in labels if lb.startswith("threshold")]
    assert len(settings) == 4 and all(" dB, ratio " in lb and " ms, release " in lb for lb in settings)
    assert len(set(labels)) == len(labels)  # no two legend entries read the same
    assert {"model", "target (comp4)"} <= set(labels)
    assert (tmp_path / "level_curves.png").stat().st_size > 10_000


def test_a_cpu_clock_budget_counts_the_runs_own_cpu_time_not_the_wall_clock(dataset, tmp_path):
    settings = {**read_config(TINY), "data": str(dataset), "max_steps": 0, "minutes": 0.05, "clock": "cpu",
                "tensorboard": False}
    cpu = time.process_time()
    out = train(TrainConfig(**settings, out=str(tmp_path / "cpu")), log=lambda m: None)
    cpu = time.process_time() - cpu
    assert out["steps"] > 0
    assert 3.0 <= out["train_seconds"] < 3.0 + 5.0  # 0.05 min at one thread, ended within a step or a validation
    assert cpu >= out["train_seconds"]  # the budget was this process's CPU time, spent
    with pytest.raises(ValueError, match="clock 'gpu'"):
        train(TrainConfig(**{**settings, "clock": "gpu"}, out=str(tmp_path / "bad")), log=lambda m: None)
