"""The streaming engine: a bundle's TFLite step model run hop by hop, with knob smoothing, a
click-free bypass, and a dry fallback that keeps the sound going when anything goes wrong.

The per-hop path (``Engine.process_hop``) allocates no arrays, does no I/O, logs nothing and
takes no locks: faults are counted and put in a preallocated event ring that a non-real-time
thread drains (``Engine.drain_events``).
"""
from __future__ import annotations

import time

import numpy as np

from .bundle import Bundle, BundleError

# Event codes in the engine's ring (read by the daemon's logger, off the audio path)
EV_NONFINITE, EV_OVERRUN, EV_RECOVERED, EV_MODEL_ERROR, EV_BYPASS_ON, EV_BYPASS_OFF = range(1, 7)
EVENT_NAMES = {EV_NONFINITE: "model output not finite or out of range: dry, state reset",
               EV_OVERRUN: "compute overrun: dry while the model catches its breath",
               EV_RECOVERED: "model back: crossfade to wet", EV_MODEL_ERROR: "model invoke failed: dry, state reset",
               EV_BYPASS_ON: "bypass on", EV_BYPASS_OFF: "bypass off"}
OUTPUT_LIMIT = 8.0  # |y| above +18 dBFS is a burst, never music: treat as a fault


def make_interpreter(path, threads: int = 1):
    """LiteRT (ai-edge-litert, the successor of tflite-runtime) first, tflite-runtime as a fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ImportError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from None
    return Interpreter(model_path=str(path), num_threads=threads)


class StepRunner:
    """One TFLite step model with its state kept inside the interpreter: after each invoke the
    state output is copied onto the state input (views into the interpreter's buffers, no copies
    through Python objects)."""

    def __init__(self, bundle: Bundle, precision: str | None = None, threads: int = 1):
        self.entry = entry = bundle.model(precision)
        m = bundle.manifest
        self.hop, self.n_knobs, self.state_size = m.hop, len(m.knobs), m.state_size
        path = bundle.path(entry.file)
        try:
            it = make_interpreter(path, threads)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{path}: the TFLite runtime cannot load this model ({e})") from None
        ins = {d["name"]: d for d in it.get_input_details()}
        outs = {d["name"]: d for d in it.get_output_details()}

        def find(table, info, side, role):
            d = table.get(info.name)
            if d is None:
                raise BundleError(f"{path}: {side} tensor {info.name!r} ({role}) not in the model (has {sorted(table)})")
            if list(d["shape"]) != info.shape:
                raise BundleError(f"{path}: {side} {role} tensor {info.name!r} has shape {list(d['shape'])}, manifest says {info.shape}")
            if np.dtype(d["dtype"]).name != info.dtype:
                raise BundleError(f"{path}: {side} {role} tensor {info.name!r} is {np.dtype(d['dtype']).name}, manifest says {info.dtype}")
            return d["index"]

        self.i_audio = find(ins, entry.inputs["audio"], "input", "audio")
        self.i_knobs = find(ins, entry.inputs["knobs"], "input", "knobs")
        self.i_state = find(ins, entry.inputs["state"], "input", "state")
        self.o_audio = find(outs, entry.outputs["audio"], "output", "audio")
        self.o_state = find(outs, entry.outputs["state"], "output", "state")
        self.it = it
        self.out = np.zeros(self.hop, np.float32)
        self.reset()

    def reset(self) -> None:
        self.it.tensor(self.i_state)().fill(0.0)

    def step(self, audio: np.ndarray, knobs: np.ndarray) -> np.ndarray:
        """audio (hop,) float32, knob positions (K,) in 0..1 -> output (hop,), a buffer reused every call."""
        it = self.it
        it.tensor(self.i_audio)()[0] = audio
        it.tensor(self.i_knobs)()[0] = knobs
        it.invoke()
        self.out[:] = it.tensor(self.o_audio)()[0]
        np.copyto(it.tensor(self.i_state)(), it.tensor(self.o_state)())
        return self.out


class Engine:
    """Bundle -> audio, one hop at a time.

    ``process_hop(x, knob_positions)`` returns the output hop. Knob positions (0..1, bundle order)
    are smoothed per hop (one-pole, ``knob_smoothing_ms``) so a turned knob makes no zipper noise.
    Bypass and faults move a wet/dry mix along a linear ramp of ``crossfade_ms``: never a jump.
    On a fault (non-finite or bursting output, invoke error, repeated compute overruns when a
    per-hop budget is set) the engine fades to dry, resets the model state, keeps running the
    model silently for ``warmup_s`` and fades back in once its output is valid again.
    """

    def __init__(self, bundle: Bundle, precision: str | None = None, threads: int = 1, crossfade_ms: float = 10.0,
                 knob_smoothing_ms: float = 20.0, warmup_s: float = 0.25, budget_s: float = 0.0,
                 overruns_to_fallback: int = 4, retry_after_s: float = 2.0):
        self.bundle = bundle
        m = bundle.manifest
        self.runner = StepRunner(bundle, precision, threads)
        self.hop, self.sample_rate = m.hop, m.sample_rate
        hop_s = m.hop / m.sample_rate
        self.knob_coef = float(np.exp(-hop_s / (knob_smoothing_ms / 1000))) if knob_smoothing_ms > 0 else 0.0
        self.knobs = np.array([k.to_normalized(k.default) for k in m.knobs], np.float32)
        self.mix_step = float(hop_s / max(crossfade_ms / 1000, hop_s)) / m.hop  # mix change per sample
        self.ramp = np.arange(1, m.hop + 1, dtype=np.float32)
        self.mix_buf = np.zeros(m.hop, np.float32)
        self.out = np.zeros(m.hop, np.float32)
        self.subst = np.zeros(m.hop, np.float32)
        self.mix = 1.0  # 1 = wet, 0 = dry
        self.bypassed = False
        self.fault_hops = 0  # > 0: in fallback; counts down warm-up hops before trying wet again
        self.warmup_hops = max(1, int(round(warmup_s / hop_s)))
        self.retry_hops = max(1, int(round(retry_after_s / hop_s)))
        self.budget_s, self.overruns_to_fallback, self.overrun_run = budget_s, overruns_to_fallback, 0
        self.last_gain = 1.0  # wet/dry level of the last good hop: what a fade-out uses when wet is garbage
        self.counts = {"nonfinite": 0, "overrun": 0, "model_error": 0, "hops": 0}
        self.events = np.zeros(256, np.int32)  # ring of event codes, drained off the audio path
        self.ev_w = self.ev_r = 0
        self.compute_s = np.zeros(4096, np.float32)  # per-hop compute time ring, for status and benchmarks

    # --- control (any thread; plain attribute writes) --------------------------------------------
    def set_bypass(self, on: bool) -> None:
        if on != self.bypassed:
            self.bypassed = on
            self._event(EV_BYPASS_ON if on else EV_BYPASS_OFF)

    def prime(self, knob_positions: np.ndarray) -> None:
        """Start from a clean state with the knobs already at ``knob_positions`` (no glide in)."""
        self.runner.reset()
        self.knobs[:] = knob_positions
        self.mix, self.fault_hops, self.overrun_run = (0.0 if self.bypassed else 1.0), 0, 0

    # --- the audio path ------------------------------------------------------------------------
    def process_hop(self, x: np.ndarray, knob_positions: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        k = self.knobs
        k *= self.knob_coef
        k += (1.0 - self.knob_coef) * knob_positions
        wet, ok = None, True
        if self.fault_hops > self.warmup_hops:  # resting after repeated overruns: no model at all
            self.fault_hops -= 1
        else:
            try:
                wet = self.runner.step(x, k)
                lo, hi = wet.min(), wet.max()
                ok = -OUTPUT_LIMIT < lo and hi < OUTPUT_LIMIT  # False for NaN too
                if not ok:
                    self.counts["nonfinite"] += 1
                    self._fault(EV_NONFINITE, self.warmup_hops)
            except Exception:  # a model crash must not stop the sound
                self.counts["model_error"] += 1
                self._fault(EV_MODEL_ERROR, self.warmup_hops)
                wet, ok = None, False
            if ok and self.fault_hops > 0:
                self.fault_hops -= 1
                if self.fault_hops == 0:
                    self._event(EV_RECOVERED)
        # the wet signal this hop: the model's, or (while faulted) dry at the last good gain
        if wet is not None and ok and self.fault_hops == 0:
            dd = float(np.dot(x, x))
            if dd > 1e-9:
                self.last_gain = min(max(float(np.dot(wet, x)) / dd, 0.0), 4.0)
            src = wet
        else:
            np.multiply(x, self.last_gain, out=self.subst)
            src = self.subst
        target = 0.0 if (self.bypassed or self.fault_hops > 0) else 1.0
        out = self.out
        if self.mix == target:
            if target == 1.0:
                out[:] = src
            else:
                out[:] = x
        else:  # linear ramp of the mix over the crossfade, per sample
            step = self.mix_step if target > self.mix else -self.mix_step
            np.multiply(self.ramp, step, out=self.mix_buf)
            self.mix_buf += self.mix
            np.clip(self.mix_buf, 0.0, 1.0, out=self.mix_buf)
            self.mix = float(self.mix_buf[-1])
            np.subtract(src, x, out=out)
            out *= self.mix_buf
            out += x
        dt = time.perf_counter() - t0
        n = self.counts["hops"]
        self.compute_s[n % len(self.compute_s)] = dt
        self.counts["hops"] = n + 1
        if self.budget_s > 0:
            if dt > self.budget_s:
                self.overrun_run += 1
                if self.overrun_run >= self.overruns_to_fallback:
                    self.counts["overrun"] += 1
                    self.overrun_run = 0
                    self._fault(EV_OVERRUN, self.warmup_hops + self.retry_hops)
            else:
                self.overrun_run = 0
        return out

    def _fault(self, code: int, hops: int) -> None:
        if self.fault_hops == 0 or hops > self.fault_hops:
            self.fault_hops = hops
        self.runner.reset()
        self._event(code)

    def _event(self, code: int) -> None:
        self.events[self.ev_w % len(self.events)] = code
        self.ev_w += 1

    def drain_events(self) -> list[str]:
        """Messages for events since the last call (call from a non-real-time thread)."""
        msgs = []
        while self.ev_r < self.ev_w:
            msgs.append(EVENT_NAMES.get(int(self.events[self.ev_r % len(self.events)]), "unknown event"))
            self.ev_r += 1
        return msgs

    # --- offline ------------------------------------------------------------------------------------
    def render(self, audio: np.ndarray, knob_rows: np.ndarray) -> np.ndarray:
        """Offline render through the same per-hop path: audio (N,), knob positions per hop
        (ceil(N / hop), K). The tail is zero-padded to a whole hop and cut off again."""
        H = self.hop
        n_hops = -(-len(audio) // H)
        if knob_rows.shape != (n_hops, len(self.knobs)):
            raise ValueError(f"knob automation has shape {knob_rows.shape}, expected {(n_hops, len(self.knobs))}")
        x = np.zeros(n_hops * H, np.float32)
        x[: len(audio)] = audio
        y = np.empty_like(x)
        rows = knob_rows.astype(np.float32)
        self.prime(rows[0])
        for t in range(n_hops):
            y[t * H:(t + 1) * H] = self.process_hop(x[t * H:(t + 1) * H], rows[t])
        return y[: len(audio)]
