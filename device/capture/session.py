"""``python -m device capture``: model your own pedal. The box plays the capture signal into the
pedal and records what comes back, once per knob setting of a plan, and writes a dataset that
``make pedal DATA=DIR`` turns into a bundle.

    python -m device capture --out ~/captures/my_drive --effect my_drive \\
        --knob drive=clock --knob tone=clock --knob level=0..10 [--settings 15] [--config /etc/pedal/pedal.toml]

First a short reference pass with the pedal bypassed (or a cable from the box's output to its
input) measures the chain's latency, gain and noise. Before each pass it says what to set (the
knobs that move are marked) and waits for Enter or the footswitch. Each pass is checked (device/capture/checks.py) and redone when bad. Progress is
written atomically after every pass (temporary file, fsync, rename), so after a power cut the same
command carries on with the next setting. The folder, while it grows and when it is done:

    DIR/capture.json             the plan, the signal's version, every attempt's figures (progress)
    DIR/knobs.toml               effect, description, latency_samples = 0, [[knobs]] (the one knob spec)
    DIR/knobs.csv                input,target,<knobs>,split: one row per split per good pass
    DIR/input/{Train,Val,Test}.wav          what the box played (the signal's three parts), at the
                                            level the box's own input reads it (the reference's gain)
    DIR/target/pass_NNN_{split}.wav         what came back, latency removed (aligned sample for sample)
    DIR/raw/pass_NNN_try_K.wav              each attempt's whole recording (--keep-raw)

Every split's input is its own stretch of the signal, played at every setting, so no audio is in
two splits, and Val/Test measure the model on audio it never trained on, at every captured setting.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np

from ..knobspec import KnobSpec
from .checks import Limits, PassCheck, ReferenceCheck, check_pass, check_reference, early_stop
from .plan import extend_plan, format_value, make_plan, moves, parse_knob, read_knobs_toml
from .signal import SIGNAL_VERSION, CaptureSignal, dataset_bytes, make_signal

FORMAT = "signaltrain-pi capture"
SPLITS = ("Train", "Val", "Test")


# --- files, written so that a power cut leaves either the old file or the new one (device/atomic.py)
def atomic_write_text(path: Path, text: str) -> None:
    from ..atomic import write_atomic
    write_atomic(path, text)


def atomic_write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    from ..atomic import atomic_path
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.asarray(audio, np.float32), sample_rate, subtype="FLOAT", format="WAV")


# --- the capture's state ---------------------------------------------------------------------------
class Capture:
    """A capture folder: its progress (``capture.json``) and the dataset it writes."""

    def __init__(self, root: Path, state: dict):
        self.root, self.state = Path(root), state
        self.specs = [KnobSpec.from_dict(k, f"{self.root / 'capture.json'}: knobs[{i}]")
                      for i, k in enumerate(state["knobs"])]
        s = state["signal"]
        self.signal: CaptureSignal = make_signal(s["seconds"], s["seed"], s["sample_rate"])
        if self.signal.version != s["version"] or len(self.signal.audio) != s["samples"]:
            raise ValueError(f"{self.root / 'capture.json'}: made with capture signal {s['version']} "
                             f"({s['samples']} samples); this box makes {self.signal.version} "
                             f"({len(self.signal.audio)}): finish it with the version that began it, or start anew")
        self.level = 10 ** (state["level_db"] / 20)
        # 0: every setting its own program; N: N programs in turn (1: one for all, as before 2026-12)
        self.programs = int(s.get("programs", 1))
        self._signals = {0: self.signal}

    def program_of(self, index: int) -> int:
        """The program (signal.py) the pass at plan row ``index`` plays."""
        return index if self.programs == 0 else index % self.programs

    def signal_for(self, index: int) -> CaptureSignal:
        """The signal the pass at plan row ``index`` plays (its program; the fixed parts are the same
        in all). The last two made are kept: a redone pass plays its program again."""
        k = self.program_of(index)
        if k not in self._signals:
            if len(self._signals) > 2:
                del self._signals[next(j for j in self._signals if j != 0)]
            s = self.state["signal"]
            self._signals[k] = make_signal(s["seconds"], s["seed"], s["sample_rate"], k)
        return self._signals[k]

    def input_name(self, index: int, split: str) -> str:
        """The dataset's input file for the pass at plan row ``index``: program 0's are input/SPLIT.wav."""
        k = self.program_of(index)
        return f"input/{split}.wav" if k == 0 else f"input/p{k:03d}_{split}.wav"

    def write_inputs(self, index: int) -> None:
        """The pass's program as the dataset's inputs (once per program): what the box played, at the
        level its own input reads it (the reference's gain)."""
        sig = self.signal_for(index)
        played = sig.audio * self.level * 10 ** (self.state["input_gain_db"] / 20)
        for split, (a, b) in sig.split_ranges().items():
            path = self.root / self.input_name(index, split)
            if not path.exists():
                atomic_write_wav(path, played[a:b], sig.sample_rate)

    @classmethod
    def create(cls, root: Path, effect: str, description: str, specs: list[KnobSpec], plan: list, plan_info: dict,
               seconds: float, seed: int, level_db: float, limits: Limits, sample_rate: int,
               programs: int = 0) -> "Capture":
        root = Path(root)
        if programs < 0:
            raise ValueError(f"--programs {programs}: 0 (a program per setting) or more")
        sig = make_signal(seconds, seed, sample_rate)
        state = {"format": FORMAT, "effect": effect, "description": description,
                 "knobs": [k.to_dict() for k in specs], "plan": plan, "plan_info": plan_info,
                 "signal": sig.describe() | {"programs": programs},
                 "level_db": level_db, "limits": limits.to_dict(), "latency_samples": None, "box_latency": None,
                 "input_gain_db": None, "reference": None, "reference_attempts": [],
                 "passes": [None] * len(plan), "attempts": [],
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for sub in ("input", "target"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        cap = cls(root, state)
        cap.write_knobs_toml()
        cap.save()
        return cap

    @classmethod
    def load(cls, root: Path) -> "Capture":
        path = Path(root) / "capture.json"
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); it is written atomically, so this is not a power "
                             "cut: was it edited?") from None
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a capture progress file (format {state.get('format')!r})")
        return cls(root, state)

    def save(self) -> None:
        atomic_write_text(self.root / "capture.json", json.dumps(self.state, indent=1) + "\n")

    def write_knobs_toml(self) -> None:
        def q(s: str) -> str:
            return json.dumps(s)  # a TOML basic string is a JSON string
        lines = [f"effect = {q(self.state['effect'])}", f"description = {q(self.state['description'])}",
                 "latency_samples = 0  # the capture aligned every target with its input", ""]
        for k in self.specs:
            lines += ["[[knobs]]", f"name = {q(k.name)}", f"unit = {q(k.unit)}", f"minimum = {k.minimum!r}",
                      f"maximum = {k.maximum!r}", f"default = {k.default!r}", f"taper = {q(k.taper)}", ""]
        atomic_write_text(self.root / "knobs.toml", "\n".join(lines))

    def write_csv(self) -> None:
        rows = ["input,target," + ",".join(k.name for k in self.specs) + ",split"]
        for i, done in enumerate(self.state["passes"]):
            if done is None:
                continue
            values = ",".join(f"{v:g}" for v in self.state["plan"][i])
            rows += [f"{self.input_name(i, s)},{done['targets'][s]},{values},{s}" for s in SPLITS]
        atomic_write_text(self.root / "knobs.csv", "\n".join(rows) + "\n")

    @property
    def pending(self) -> list[int]:
        return [i for i, p in enumerate(self.state["passes"]) if p is None]

    def record_reference(self, check: ReferenceCheck) -> None:
        """Log a reference attempt; a good one sets the chain's latency and gain and writes the first
        program's inputs (write_inputs: at the level the box's own input reads them, so a guitar
        through the box's input meets the model at the level the pedal met it)."""
        st = self.state
        st["reference_attempts"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **check.to_dict()})
        if check.ok:
            st["reference"] = st["reference_attempts"][-1]
            st["latency_samples"] = check.latency_samples
            st["input_gain_db"] = round(check.gain_db, 3)
            self.write_inputs(0)
        self.save()

    def record_attempt(self, index: int, check: PassCheck, recording: np.ndarray, keep_raw: bool) -> None:
        """Log an attempt; a good one also writes its aligned targets and becomes the pass."""
        st = self.state
        n_try = sum(1 for a in st["attempts"] if a["pass"] == index) + 1
        entry = {"pass": index, "try": n_try, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **check.to_dict()}
        sig = self.signal_for(index)
        sr = sig.sample_rate
        if keep_raw:
            (self.root / "raw").mkdir(exist_ok=True)
            atomic_write_wav(self.root / "raw" / f"pass_{index + 1:03d}_try_{n_try}.wav", recording, sr)
        if check.ok:
            lat = st["latency_samples"]
            targets = {}
            self.write_inputs(index)
            for split, (a, b) in sig.split_ranges().items():
                name = f"target/pass_{index + 1:03d}_{split}.wav"
                atomic_write_wav(self.root / name, recording[a + lat:b + lat], sr)
                targets[split] = name
            st["passes"][index] = {"try": n_try, "targets": targets, "latency_samples": check.latency_samples,
                                   "noise_dbfs": entry["noise_dbfs"], "repeat_diff_db": entry["repeat_diff_db"]}
        st["attempts"].append(entry)
        self.save()  # the pass counts once this is on disk
        if check.ok:
            self.write_csv()


# --- audio: play the signal, record the return --------------------------------------------------
def play_and_record(duplex, audio: np.ndarray, record_frames: int, preroll_s: float = 0.3,
                    settle_timeout_s: float = 10.0, priority: int = 0, stop_when=None,
                    check_every_s: float = 0.5) -> tuple[np.ndarray, int, int, int]:
    """Play ``audio`` through ``duplex`` (device/audio.py) and record ``record_frames`` of the return,
    on one clock: recording[n] arrived while the period holding audio[n] was written (so the clicks'
    lag is the whole round trip). First silence until ``preroll_s`` has passed without an xrun (a
    JACK graph change, a first period's hiccup). ``stop_when(recording, frames)``, asked every
    ``check_every_s``, may end a pass that is already bad (checks.early_stop). -> (recording, xruns
    during the signal, box round trip in frames, frames recorded)."""
    P = duplex.period
    n_periods = -(-max(record_frames, len(audio)) // P)
    out = np.zeros(n_periods * P, np.float32)
    out[:len(audio)] = audio
    rec = np.zeros(n_periods * P, np.float32)
    result = {}

    def loop():
        if priority > 0:
            from ..daemon import setup_realtime
            setup_realtime(priority, False)
        silence = np.zeros(P, np.float32)
        clean, deadline = 0, time.monotonic() + settle_timeout_s
        need = max(1, int(preroll_s * duplex.rate / P))
        while clean < need:
            if time.monotonic() > deadline:
                result["error"] = f"the audio path kept having xruns for {settle_timeout_s:.0f} s before the pass"
                return
            if duplex.read() < 0 or duplex.write(silence) < 0:
                duplex.recover()
                clean = 0
                continue
            clean += 1
        xruns, every = 0, max(1, int(check_every_s * duplex.rate / P))
        result["frames"] = n_periods * P
        for k in range(n_periods):
            if duplex.read() < 0:
                xruns += 1
                break  # the timeline is broken: the pass is redone, so stop now
            rec[k * P:(k + 1) * P] = duplex.mono_in
            if duplex.write(out[k * P:(k + 1) * P]) < 0:
                xruns += 1
                break
            if stop_when is not None and k % every == every - 1 and stop_when(rec, (k + 1) * P):
                result["frames"] = (k + 1) * P
                break
        result["xruns"] = xruns

    t = threading.Thread(target=loop, name="capture-audio")
    t.start()
    t.join()
    if "error" in result:
        from ..audio import AlsaError
        raise AlsaError(result["error"])
    return rec[:record_frames], result["xruns"], duplex.periods * P, min(result["frames"], record_frames)


# --- the person at the pedal ---------------------------------------------------------------------
class Confirm:
    """Waits for Enter on the terminal or a press of the footswitch (device/switches.py).

    The terminal is read at the file descriptor (select + os.read), not through Python's buffered
    stdin, so a line typed while a pass played can be told apart and dropped: it does not start
    the next pass. ``wait(prompt)`` drops it before it prints the prompt, so an answer to the
    prompt, however quick, is never taken for one of those."""

    def __init__(self, footswitch_gpio: int | None = None, stream=None, pin_factory=None):
        self.stream = stream = stream if stream is not None else sys.stdin  # held: its fd closes with it
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, ValueError, OSError):  # no terminal (a service): the footswitch alone
            self.fd = None
        self.typed = b""
        self.pressed = threading.Event()
        self.footswitch = None
        if footswitch_gpio is not None:
            from ..switches import Footswitch
            self.footswitch = Footswitch(footswitch_gpio, on_short=self.pressed.set, pin_factory=pin_factory)

    def _read(self, timeout_s: float) -> bool:
        """Whatever the terminal has within ``timeout_s`` into ``typed``; -> False at its end."""
        if not select.select([self.fd], [], [], timeout_s)[0]:
            return True
        data = os.read(self.fd, 4096)
        self.typed += data
        return bool(data)

    def discard(self) -> None:
        """Forget what was typed or stomped so far (while the last pass played)."""
        self.pressed.clear()
        if self.fd is not None and os.isatty(self.fd):  # a line half typed, too (Enter would send it)
            try:
                termios.tcflush(self.fd, termios.TCIFLUSH)
            except termios.error:
                pass
        while self.fd is not None and select.select([self.fd], [], [], 0)[0]:
            if not os.read(self.fd, 4096):
                self.fd = None  # end of input
        self.typed = b""

    def wait(self, prompt: str | None = None) -> bool:
        """Print ``prompt``, then wait. True: go; False: the person typed q (or the terminal closed
        and no footswitch is there). What was typed or stomped before the prompt does not count."""
        self.discard()
        if prompt is not None:
            print(prompt, flush=True)
        while True:
            if self.pressed.is_set():
                return True
            if self.fd is None:
                if self.footswitch is None:
                    return False
                time.sleep(0.05)
                continue
            if not self._read(0.05):
                self.fd = None  # end of input: the footswitch alone, if there is one
                continue
            if b"\n" in self.typed:
                line = self.typed.split(b"\n", 1)[0].decode(errors="replace")
                self.typed = b""
                return line.strip().lower() not in ("q", "quit")

    def close(self) -> None:
        if self.footswitch is not None:
            self.footswitch.close()


def size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.0f} MB" if n_bytes < 1e9 else f"{n_bytes / 1e9:.1f} GB"


def prompt_text(cap: Capture, index: int, previous: list[float] | None, redo: bool) -> str:
    n = len(cap.state["plan"])
    setting = cap.state["plan"][index]
    moved = [k for j, k in enumerate(cap.specs) if previous is None or previous[j] != setting[j]]
    parts = [f"{k.name} {'-> ' if k in moved and previous is not None else ''}{format_value(k, v)}"
             for k, v in zip(cap.specs, setting)]
    head = f"pass {index + 1}/{n}" + (" (again)" if redo else "")
    turn = (f"turn {', '.join(k.name for k in moved)}" if previous is not None and moved
            else "set every knob" if previous is None else "no knob moves")
    return (f"\n{head}: {turn}:  " + "   ".join(parts) +
            "\n  then press Enter or the footswitch  (q + Enter stops; the same command carries on later)")


# --- the command ---------------------------------------------------------------------------------
def _specs_from_args(a) -> tuple[str | None, str | None, list[KnobSpec]]:
    if a.knobs_file and a.knob:
        raise ValueError("give the knobs either with --knob (repeated) or in one --knobs FILE, not both")
    if a.knobs_file:
        return read_knobs_toml(a.knobs_file)
    specs = [parse_knob(k) for k in a.knob]
    names = [k.name for k in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--knob: {dup} named twice")
    return None, None, specs


def _open_duplex(a):
    from ..audio import AlsaDuplex
    if a.config:
        from ..config import load_config
        cfg = load_config(a.config)
        au = cfg.audio
        footswitch = cfg.footswitch.gpio if cfg.footswitch.enabled else None
        return (lambda: AlsaDuplex(au.capture_device, au.playback_device, au.sample_rate, au.period_frames,
                                   au.periods, au.format, au.capture_channels, au.playback_channels,
                                   au.input_channel, au.output_channels)), au.sample_rate, footswitch
    if not (a.capture and a.playback):
        raise ValueError("capture needs the audio interface: --config pedal.toml, or --capture PCM --playback PCM")
    return (lambda: AlsaDuplex(a.capture, a.playback, a.rate, a.period, a.periods, a.format, a.channels,
                               a.channels, a.input_channel, list(range(a.channels)))), a.rate, None


def add_settings(cap: Capture, path) -> int:
    """Append the settings of a ``python -m training.propose`` file (JSON: ``knobs``, ``settings``)
    to the capture's plan, as pending passes; -> how many were new."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--add {path}: {e}") from None
    names = [k.name for k in cap.specs]
    if not isinstance(d, dict) or d.get("knobs") != names or not isinstance(d.get("settings"), list):
        raise ValueError(f"--add {path}: expected settings for the knobs {names} "
                         f"(a JSON object with 'knobs' and 'settings'), got knobs {d.get('knobs') if isinstance(d, dict) else None}")
    new = extend_plan(cap.specs, cap.state["plan"], d["settings"], f"--add {path}")
    st = cap.state
    st["plan"] += new
    st["passes"] += [None] * len(new)
    st["plan_info"].setdefault("added", []).append({"from": str(path), "settings": len(new),
                                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                    **({"how": d["how"]} if "how" in d else {})})
    cap.save()
    print(f"added {len(new)} settings from {path} ({len(d['settings']) - len(new)} already in the plan)", flush=True)
    return len(new)


def run(a) -> int:
    out = Path(a.out)
    make_duplex, rate, cfg_footswitch = _open_duplex(a)
    footswitch = None if a.no_footswitch else a.footswitch if a.footswitch is not None else cfg_footswitch
    if (out / "capture.json").exists():
        cap = Capture.load(out)
        if a.knob or a.knobs_file:
            _, _, specs = _specs_from_args(a)
            if [k.to_dict() for k in specs] != cap.state["knobs"]:
                raise ValueError(f"{out} holds a capture of other knobs "
                                 f"({', '.join(k.name for k in cap.specs)}): to carry it on, give no --knob; "
                                 "to start anew, choose another --out")
        if cap.signal.sample_rate != rate:
            raise ValueError(f"{out} was captured at {cap.signal.sample_rate} Hz; the audio interface runs at {rate}")
        if a.add:
            add_settings(cap, a.add)
        done = len(cap.state["plan"]) - len(cap.pending)
        print(f"carrying on {out}: {done} of {len(cap.state['plan'])} settings captured", flush=True)
        cap.write_csv()  # in case the power went between the progress and the table
    elif a.add:
        raise ValueError(f"--add: {out} holds no capture yet; capture a first plan, train on it, then add to it")
    else:
        effect, description, specs = _specs_from_args(a)
        if not specs:
            raise ValueError("name the pedal's knobs: --knob NAME=MIN..MAX[,UNIT][,log] or NAME=clock (repeat "
                             "it per knob), or --knobs knobs.toml")
        effect = a.effect or effect or out.name
        if not effect.replace("_", "").isalnum():
            raise ValueError(f"--effect {effect!r}: letters, digits and '_' only (it names the bundle)")
        n = a.settings or max(10, 5 * len(specs))
        plan = make_plan(specs, n, a.levels, a.seed, a.plan)
        limits = Limits(max_latency_ms=a.max_latency_ms, max_latency_shift_ms=a.max_latency_shift_ms,
                        max_noise_dbfs=a.max_noise_dbfs, max_repeat_diff_db=a.max_repeat_diff_db)
        description = a.description or description or (
            f"{effect}: captured through the box at {n} settings of " + ", ".join(k.label() for k in specs))
        info = {"kind": a.plan, "levels": a.levels, "seed": a.seed, "settings": n,
                "knobs_moved_per_pass": round(float(np.mean(moves(plan))) if n > 1 else 0.0, 2)}
        out.mkdir(parents=True, exist_ok=True)
        cap = Capture.create(out, effect, description, specs, plan, info, a.seconds, a.seed, a.level_db, limits, rate,
                             a.programs)
        print(f"capture {out}: {effect}, {n} settings of {len(specs)} knobs ({a.plan}, "
              f"{a.levels or n} values per knob, {info['knobs_moved_per_pass']} knobs move per pass on average), "
              f"signal {SIGNAL_VERSION} {len(cap.signal.audio) / rate:.0f} s at {a.level_db:+.1f} dB, "
              f"{'a program per setting' if a.programs == 0 else f'{a.programs} program(s)'}: about "
              f"{size_text(dataset_bytes(a.seconds, n, a.programs, rate))} on disk", flush=True)
    confirm = None if a.yes else Confirm(footswitch)
    try:
        return Session(cap, make_duplex, confirm, a.priority, a.max_attempts, a.keep_raw).run(out)
    except KeyboardInterrupt:  # Ctrl-C: what is on disk stays; the pass being played is played again
        print(f"\ninterrupted: {len(cap.pending)} settings left; run the same command to carry on", flush=True)
        return 3
    finally:
        if confirm is not None:
            confirm.close()


class Session:
    """The passes of one sitting: the reference (once per capture), then every pending setting, each
    played until it passes its checks."""

    def __init__(self, cap: Capture, make_duplex, confirm: Confirm | None, priority: int, max_attempts: int,
                 keep_raw: bool):
        self.cap, self.make_duplex, self.confirm = cap, make_duplex, confirm
        self.priority, self.max_attempts, self.keep_raw = priority, max_attempts, keep_raw
        self.limits = Limits(**cap.state["limits"])
        self.rate = cap.signal.sample_rate

    def ask(self, text: str) -> bool:
        """Tell the person what to do; -> False when they stop. Without prompts (--yes), just say it."""
        if self.confirm is None:
            print(text.strip().split(":")[0], flush=True)
            return True
        return self.confirm.wait(text)

    def play(self, audio: np.ndarray, stop_when=None) -> tuple[np.ndarray, int, int]:
        """-> (recording, xruns, frames recorded before a stop)"""
        from ..audio import AlsaError
        try:
            duplex = self.make_duplex()
        except AlsaError as e:
            if "busy" not in str(e).lower():
                raise
            raise AlsaError(f"{e}\n  (is the daemon still running? It holds the sound card: "
                            "sudo systemctl stop pedal)") from None
        try:
            max_lag = int(self.limits.max_latency_ms * self.rate / 1000)
            rec, xruns, box, frames = play_and_record(duplex, audio, len(audio) + max_lag, priority=self.priority,
                                                      stop_when=stop_when)
        finally:
            duplex.close()
        if self.cap.state["box_latency"] is None:
            self.cap.state["box_latency"] = box
        return rec, xruns, frames

    def stopped(self) -> int:
        print(f"stopped: {len(self.cap.pending)} settings left; run the same command to carry on", flush=True)
        return 3

    def given_up(self, tries: int) -> bool:
        """Without a person to fix things (--yes), stop after max_attempts bad tries."""
        return self.confirm is None and tries >= self.max_attempts

    def run(self, out: Path) -> int:
        cap, sig, st = self.cap, self.cap.signal, self.cap.state
        tries = 0
        while st["reference"] is None:
            if not self.ask(REFERENCE_PROMPT + (" (again)" if tries else "")):
                return self.stopped()
            rec, xruns, _ = self.play(sig.reference() * cap.level)
            ref = check_reference(sig, rec, cap.level, self.limits, xruns)
            cap.record_reference(ref)
            print(f"reference: {'good' if ref.ok else 'BAD'}: {ref.summary(self.rate, st['box_latency'])}", flush=True)
            for problem in ref.problems:
                print(f"  - {problem}", flush=True)
            tries += 1
            if not ref.ok and self.given_up(tries):
                return 1
        previous = None
        for index in list(cap.pending):
            tries = 0
            while True:
                if not self.ask(prompt_text(cap, index, previous, tries > 0)):
                    return self.stopped()
                played = cap.signal_for(index)
                rec, xruns, frames = self.play(played.audio * cap.level, early_stop(played, self.limits))
                check = check_pass(played, rec, cap.level, self.limits, st["latency_samples"], xruns, frames)
                cap.record_attempt(index, check, rec, self.keep_raw)
                print(f"pass {index + 1}: {'good' if check.ok else 'BAD'}: {check.summary(st['latency_samples'])}",
                      flush=True)
                if check.ok:
                    break
                for problem in check.problems:
                    print(f"  - {problem}", flush=True)
                tries += 1
                if self.given_up(tries):
                    print(f"pass {index + 1} failed {tries} times; stopping (the same command carries on)", flush=True)
                    return 1
                print("  fix it, then the pass is played again", flush=True)
            previous = st["plan"][index]
        lat, box = st["latency_samples"], st["box_latency"]
        own = [p["latency_samples"] - lat for p in st["passes"]]
        print(f"\ncapture done: {len(st['plan'])} settings, {len(st['attempts']) - len(st['plan'])} pass(es) redone. "
              f"Latency {lat} samples ({1000 * lat / self.rate:.2f} ms: the box's buffers {box}, converters and a "
              f"digital pedal {lat - box:+d}), removed from every target; the pedal's own delay at its settings "
              f"{min(own):+d}..{max(own):+d} samples stays in.\n  next, on the host:  make pedal DATA={out}", flush=True)
        return 0


REFERENCE_PROMPT = ("\nreference: switch the pedal off (bypass), or connect the box's output straight to its input; "
                    "this measures the latency, level and noise of the chain itself\n"
                    "  then press Enter or the footswitch  (q + Enter stops)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the capture folder (a dataset when done); an existing one carries on")
    g = p.add_argument_group("the pedal")
    g.add_argument("--knob", action="append", default=[], metavar="SPEC",
                   help="NAME=MIN..MAX[,UNIT][,log] or NAME=clock or NAME=FROM..TO,clock (repeat per knob)")
    g.add_argument("--knobs", dest="knobs_file", type=Path, help="knob specs in a knobs.toml ([[knobs]] tables)")
    g.add_argument("--effect", help="the pedal's name (letters, digits, _; default: the folder's name)")
    g.add_argument("--description", help="one line for the bundle's card")
    g = p.add_argument_group("the plan")
    g.add_argument("--settings", type=int, default=0, help="knob settings to capture (default: 5 per knob, at least 10)")
    g.add_argument("--levels", type=int, default=5, help="values per knob (0: as many as settings)")
    g.add_argument("--plan", choices=("lhs", "random"), default="lhs", help="Latin hypercube, or random draws")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--seconds", type=float, default=60.0, help="length of the capture signal per setting")
    g.add_argument("--programs", type=int, default=0, metavar="N",
                   help="program material: 0 (default) other notes, rhythms and levels at every setting, so a model "
                        "hears as many sources as settings; N: N programs in turn (1: the same at every setting). "
                        "Inputs take as much room as targets per program")
    g.add_argument("--add", type=Path, metavar="FILE", help="to an existing capture: add the settings of FILE "
                   "(python -m training.propose: where a first ensemble of models disagrees most) and carry on")
    g.add_argument("--level-db", type=float, default=-10.0, help="play the signal this much below its own level")
    g = p.add_argument_group("the audio interface (as `run`)")
    g.add_argument("--config", help="a pedal.toml: its [audio] and [footswitch]")
    g.add_argument("--capture", help="ALSA capture PCM (pedal out -> box in)")
    g.add_argument("--playback", help="ALSA playback PCM (box out -> pedal in)")
    g.add_argument("--rate", type=int, default=48000)
    g.add_argument("--period", type=int, default=128)
    g.add_argument("--periods", type=int, default=3)
    g.add_argument("--format", default="S32_LE")
    g.add_argument("--channels", type=int, default=2)
    g.add_argument("--input-channel", type=int, default=0)
    g.add_argument("--priority", type=int, default=70, help="SCHED_FIFO priority while playing (0: none)")
    g = p.add_argument_group("checks and prompts")
    g.add_argument("--max-latency-ms", type=float, default=Limits.max_latency_ms)
    g.add_argument("--max-latency-shift-ms", type=float, default=Limits.max_latency_shift_ms,
                   help="how far a pass's clicks may lie from the reference's (the pedal's own delay)")
    g.add_argument("--max-noise-dbfs", type=float, default=Limits.max_noise_dbfs)
    g.add_argument("--max-repeat-diff-db", type=float, default=Limits.max_repeat_diff_db)
    g.add_argument("--footswitch", type=int, default=None, metavar="GPIO", help="confirm with this footswitch (BCM)")
    g.add_argument("--no-footswitch", action="store_true", help="confirm on stdin only, whatever the config says "
                   "(the web page drives the prompts; its process has no GPIO)")
    g.add_argument("--yes", action="store_true", help="no prompts (knobs set by other means); stop after "
                                                         "--max-attempts bad tries of one setting")
    g.add_argument("--max-attempts", type=int, default=3)
    g.add_argument("--keep-raw", action="store_true", help="keep every attempt's whole recording in raw/")


def signal_command(a) -> int:
    from .signal import write_signal
    wav, meta = write_signal(make_signal(a.seconds, a.seed), Path(a.out))
    print(f"capture signal {SIGNAL_VERSION}: {wav} ({a.seconds:g} s), layout in {meta}")
    return 0
