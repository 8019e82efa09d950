"""The streaming engine: a bundle's TFLite step model run hop by hop, with knob smoothing, a
click-free bypass, and a dry fallback that keeps the sound going when anything goes wrong.

The audio path (``Engine.process``: a period of whole hops; ``process_hop``: one) allocates no
arrays, does no I/O, logs nothing and takes no locks: faults are counted and put in a
preallocated event ring that a non-real-time thread drains (``Engine.drain_events``).

Its cost beside the model's invoke is kept to a few numpy calls per hop and a few per period
(docs/realtime.md has the figures): the model's buffers are numpy views made once, the knob glide
runs only while a knob moves, and the output check, the wet/dry level and the mix run once per
period. A period sounds bit for bit as its hops one by one would.
"""
from __future__ import annotations

from time import perf_counter

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
    state output is copied onto the state input.

    The inputs and outputs are numpy views into the interpreter's own buffers, made once. The
    Python wrapper's ``invoke()`` refuses to run while such views exist, because a re-allocation
    would leave them dangling; this runner never resizes or re-allocates after
    ``allocate_tensors()``, so it keeps the views and calls the runtime's ``Invoke`` directly
    (which, like ``invoke()``, releases Python's lock while the model runs). The five buffers are
    checked to be apart at load: writing an input never changes an output already computed."""

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
        self.audio_in = it.tensor(self.i_audio)()[0]  # (hop,)
        self.knobs_in = it.tensor(self.i_knobs)()[0]  # (K,)
        self.state_in = it.tensor(self.i_state)()  # (1, S)
        self.audio_out = it.tensor(self.o_audio)()[0]  # (hop,)
        self.state_out = it.tensor(self.o_state)()  # (1, S)
        spans = sorted((v.__array_interface__["data"][0], v.nbytes) for v in
                       (self.audio_in, self.knobs_in, self.state_in, self.audio_out, self.state_out))
        if any(a + n > b for (a, n), (b, _) in zip(spans, spans[1:])):
            raise BundleError(f"{path}: the runtime placed the model's inputs and outputs in shared memory")
        self.invoke = it._interpreter.Invoke
        self.reset()

    def reset(self) -> None:
        self.state_in.fill(0.0)

    def step(self, audio: np.ndarray, knobs: np.ndarray) -> np.ndarray:
        """audio (hop,) float32, knob positions (K,) in 0..1 -> output (hop,): a view of the
        model's output buffer, valid until the next step."""
        self.audio_in[:] = audio
        self.knobs_in[:] = knobs
        self.invoke()
        self.state_in[:] = self.state_out
        return self.audio_out


class Engine:
    """Bundle -> audio, a period (a whole number of hops) at a time.

    ``process(x, knob_positions, out)`` fills ``out`` from ``x``; ``process_hop`` does one hop.
    Knob positions (0..1, bundle order) are smoothed per hop (one-pole, ``knob_smoothing_ms``) so
    a turned knob makes no zipper noise. Bypass and faults move a wet/dry mix along a linear ramp
    of ``crossfade_ms``: never a jump. On a fault (non-finite or bursting output, invoke error,
    ``overruns_to_fallback`` calls in a row over a per-hop budget when one is set) the engine fades
    to dry, resets the model state, keeps running the model silently for ``warmup_s`` and fades
    back in once its output is valid again. Faults are judged per call: a bad hop sends its whole
    period dry.
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
        # hops after the last change of the targets until the glide has arrived (c^n below float32's precision)
        self.settle_hops = 1 + (int(np.ceil(np.log(1e-8) / np.log(self.knob_coef))) if self.knob_coef > 0 else 0)
        self.glide_left = self.settle_hops  # > 0: the knobs are still gliding (see process)
        self.last_targets = b""
        self.knobs = np.array([k.to_normalized(k.default) for k in m.knobs], np.float32)
        self.mix_step = float(hop_s / max(crossfade_ms / 1000, hop_s)) / m.hop  # mix change per sample
        self.ramp = np.arange(1, m.hop + 1, dtype=np.float32)
        self.out = np.zeros(m.hop, np.float32)  # process_hop's output
        self.mix = 1.0  # 1 = wet, 0 = dry
        self.bypassed = False
        self.fault_hops = 0  # > 0: in fallback; counts down warm-up hops before trying wet again
        self.warmup_hops = max(1, int(round(warmup_s / hop_s)))
        self.retry_hops = max(1, int(round(retry_after_s / hop_s)))
        self.budget_s, self.overruns_to_fallback, self.overrun_run = budget_s, overruns_to_fallback, 0
        self.last_gain = 1.0  # wet/dry level of the last good period: what a fade-out uses when wet is garbage
        self.counts = {"nonfinite": 0, "overrun": 0, "model_error": 0, "hops": 0}
        self.events = np.zeros(256, np.int32)  # ring of event codes, drained off the audio path
        self.ev_w = self.ev_r = 0
        self.model_s = 0.0  # of the last call's time, what the model's steps took (the rest is the engine's own)
        self.blocks: dict[int, _Block] = {}  # buffers per hops-per-call
        self.views = (None, None, (), (), None)  # (x, out, x's hops, out's hops, block): see prepare

    # --- control (any thread; plain attribute writes) --------------------------------------------
    def set_bypass(self, on: bool) -> None:
        if on != self.bypassed:
            self.bypassed = on
            self._event(EV_BYPASS_ON if on else EV_BYPASS_OFF)

    def prime(self, knob_positions: np.ndarray) -> None:
        """Start from a clean state with the knobs already at ``knob_positions`` (no glide in)."""
        self.runner.reset()
        self.knobs[:] = knob_positions
        self.glide_left = self.settle_hops
        self.mix, self.fault_hops, self.overrun_run = (0.0 if self.bypassed else 1.0), 0, 0

    def prepare(self, x: np.ndarray, out: np.ndarray) -> None:
        """Cut ``x`` and ``out`` (n * hop each) into hops and make the buffers for calls of n hops.
        ``process`` does it whenever it gets other buffers than the last call's; a caller that
        passes the same ones every call (the daemon) calls this once, off the audio path."""
        H = self.hop
        n = len(x) // H
        if n not in self.blocks:
            self.blocks[n] = _Block(n, H, len(self.knobs))
        self.views = (x, out, tuple(x[h * H:(h + 1) * H] for h in range(n)),
                      tuple(out[h * H:(h + 1) * H] for h in range(n)), self.blocks[n])
        self.glide_left = self.settle_hops  # this block's knob rows are not filled yet

    # --- the audio path ------------------------------------------------------------------------
    def process_hop(self, x: np.ndarray, knob_positions: np.ndarray) -> np.ndarray:
        """One hop: x (hop,) -> the output hop (a buffer reused every call)."""
        return self.process(x, knob_positions, self.out)

    def process(self, x: np.ndarray, knob_positions: np.ndarray, out: np.ndarray) -> np.ndarray:
        """x (n * hop,) float32 -> out (n * hop,), a separate buffer; -> out. ``knob_positions``
        is (K,), held for the call, or (n, K), one row per hop. The model steps hop by hop; the
        knob glide, the output check, the wet/dry level, the crossfade and the overrun check run
        once per call."""
        t0 = perf_counter()
        v = self.views
        if v[0] is not x or v[1] is not out:
            self.prepare(x, out)
            v = self.views
        xs, ys, b = v[2], v[3], v[4]
        n = len(xs)
        # knob glide per hop, k_h = c k_(h-1) + (1 - c) target_h, in the same operations whatever
        # the period (so any period sounds bit for bit as hop by hop); skipped once the knobs have
        # arrived and the targets have not changed since
        targets = knob_positions.tobytes()
        if targets != self.last_targets:
            self.last_targets, self.glide_left = targets, self.settle_hops
        if self.glide_left > 0:
            self.glide_left -= n
            c = self.knob_coef
            np.multiply(knob_positions, 1.0 - c, out=b.pulled)  # (K,) or (n, K) -> (n, K)
            k = self.knobs
            for row, pulled in zip(b.rows, b.pulled_rows):
                np.multiply(k, c, out=row)
                row += pulled
                k = row
            self.knobs[:] = k
        ok = False
        if self.fault_hops > self.warmup_hops:  # resting after repeated overruns: no model at all
            self.fault_hops = max(self.fault_hops - n, self.warmup_hops)
            self.model_s = 0.0
        else:
            try:
                step, rows = self.runner.step, b.rows
                t1 = perf_counter()
                for h in range(n):
                    ys[h][:] = step(xs[h], rows[h])
                self.model_s = perf_counter() - t1
                # |y| < OUTPUT_LIMIT everywhere (False for NaN too); the sum of squares settles it in one call
                ok = (float(np.dot(out, out)) < OUTPUT_LIMIT ** 2
                      or (-OUTPUT_LIMIT < out.min() and out.max() < OUTPUT_LIMIT))
                if not ok:
                    self.counts["nonfinite"] += 1
                    self._fault(EV_NONFINITE, self.warmup_hops)
            except Exception:  # a model crash must not stop the sound
                self.counts["model_error"] += 1
                self._fault(EV_MODEL_ERROR, self.warmup_hops)
                ok = False
            if ok and self.fault_hops > 0:
                self.fault_hops = max(self.fault_hops - n, 0)
                if self.fault_hops == 0:
                    self._event(EV_RECOVERED)
        wet = ok and self.fault_hops == 0  # out holds the model's output, to be heard
        if wet:
            dd = float(np.dot(x, x))
            if dd > 1e-9:
                self.last_gain = min(max(float(np.dot(out, x)) / dd, 0.0), 4.0)
        target = 0.0 if (self.bypassed or self.fault_hops > 0) else 1.0
        if self.mix == target:
            if target == 0.0:  # (at 1.0, out is already the model's output)
                out[:] = x
        else:  # linear ramp of the mix over the crossfade, per sample (hop by hop, as above)
            mix, step = b.mix, self.mix_step if target > self.mix else -self.mix_step
            for m in b.mix_hops:
                np.multiply(self.ramp, step, out=m)
                m += self.mix
                np.clip(m, 0.0, 1.0, out=m)
                self.mix = float(m[-1])
            if wet:  # out = x + (wet - x) * mix
                out -= x
                out *= mix
                out += x
            else:  # the wet side is the dry signal at the last good gain: out = x * (1 + (gain - 1) * mix)
                mix *= self.last_gain - 1.0
                mix += 1.0
                np.multiply(x, mix, out=out)
        dt = perf_counter() - t0
        self.counts["hops"] += n
        if self.budget_s > 0:  # overruns_to_fallback calls (periods) in a row over budget: a fallback
            if dt > self.budget_s * n:
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
        """Offline render through the audio path, one hop per call: audio (N,), knob positions per hop
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


class _Block:
    """An engine's buffers for calls of ``hops`` hops (made once, off the audio path)."""

    def __init__(self, hops: int, hop: int, n_knobs: int):
        self.pulled = np.zeros((hops, n_knobs), np.float32)  # (1 - c) target_h
        self.pulled_rows = tuple(self.pulled[i] for i in range(hops))
        self.knobs = np.zeros((hops, n_knobs), np.float32)  # the glided knobs, one row per hop
        self.rows = tuple(self.knobs[i] for i in range(hops))
        self.mix = np.zeros(hops * hop, np.float32)  # wet/dry mix per sample
        self.mix_hops = tuple(self.mix[i * hop:(i + 1) * hop] for i in range(hops))
