"""Full-duplex ALSA through pyalsaaudio: interleaved periods in, mono float out of the guitar
channel, mono float back to the chosen playback channels. Buffers are allocated once.

Any ALSA PCM name works: the HAT's ``hw:`` card, the ``pedal`` alias of firmware_cfg/asound.conf,
a ``type file`` PCM (tests: exact, unpaced) or a ``type jack`` PCM (tests: real-time paced).
"""
from __future__ import annotations

import numpy as np

# ALSA format -> (numpy sample type, full scale). S24_LE is 24 bits in the low bytes of 32.
FORMATS = {"S16_LE": (np.int16, 2.0 ** 15), "S24_LE": (np.int32, 2.0 ** 23), "S32_LE": (np.int32, 2.0 ** 31),
           "FLOAT_LE": (np.float32, 1.0)}


class AlsaError(Exception):
    pass


class AlsaDuplex:
    def __init__(self, capture: str, playback: str, rate: int, period_frames: int, periods: int = 2,
                 fmt: str = "S32_LE", capture_channels: int = 2, playback_channels: int = 2, input_channel: int = 0,
                 output_channels=(0, 1)):
        import alsaaudio
        self.alsa = alsaaudio
        if fmt not in FORMATS:
            raise AlsaError(f"format {fmt!r} not supported (one of {sorted(FORMATS)})")
        if input_channel >= capture_channels or any(c >= playback_channels for c in output_channels):
            raise AlsaError(f"channel map: input {input_channel} of {capture_channels}, outputs {list(output_channels)} "
                            f"of {playback_channels}")
        self.dtype, self.scale = FORMATS[fmt]
        self.rate, self.period, self.periods = rate, period_frames, periods
        self.cap_ch, self.play_ch = capture_channels, playback_channels
        self.in_ch, self.out_chs = input_channel, tuple(output_channels)
        alsa_fmt = getattr(alsaaudio, f"PCM_FORMAT_{fmt}")
        self.names = (capture, playback)
        try:
            self.cap = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, rate=rate, channels=capture_channels,
                                     format=alsa_fmt, periodsize=period_frames, periods=periods, device=capture)
            self.play = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NORMAL, rate=rate, channels=playback_channels,
                                      format=alsa_fmt, periodsize=period_frames, periods=periods, device=playback)
        except alsaaudio.ALSAAudioError as e:
            raise AlsaError(f"cannot open ALSA capture {capture!r} / playback {playback!r} at {rate} Hz, {fmt}, "
                            f"period {period_frames} x {periods}: {e}") from None
        self.mono_in = np.zeros(period_frames, np.float32)
        self.out_f = np.zeros(period_frames, np.float32)
        self.out_buf = np.zeros(period_frames * playback_channels, self.dtype)
        self.silence = np.zeros(period_frames * playback_channels, self.dtype)
        self.lo, self.hi = (-1.0, 1.0) if self.dtype == np.float32 else (-self.scale, self.scale - 1)

    def info(self) -> str:
        return (f"capture {self.names[0]!r} / playback {self.names[1]!r}: {self.rate} Hz, period {self.period} x "
                f"{self.periods}, {self.cap_ch} in (guitar on {self.in_ch}), {self.play_ch} out {list(self.out_chs)}")

    def prefill(self) -> None:
        """Queue ``periods`` periods of silence: the playback side's share of the round trip."""
        for _ in range(self.periods):
            self.play.write(self.silence)

    def read(self) -> int:
        """Read one period into ``mono_in``; -> frames read, or a negative number on an overrun."""
        n, data = self.cap.read()
        if n <= 0:
            return n if n < 0 else -1
        raw = np.frombuffer(data, self.dtype)
        frames = min(n, self.period)
        np.multiply(raw[self.in_ch: frames * self.cap_ch: self.cap_ch], 1.0 / self.scale, out=self.mono_in[:frames])
        if frames < self.period:
            self.mono_in[frames:] = 0.0
        return frames

    def write(self, mono: np.ndarray) -> int:
        """Write one period of mono float to every output channel; -> frames written (<0: underrun)."""
        np.multiply(mono, self.scale, out=self.out_f)
        np.clip(self.out_f, self.lo, self.hi, out=self.out_f)
        if self.dtype != np.float32:
            np.rint(self.out_f, out=self.out_f)
        for c in self.out_chs:
            self.out_buf[c::self.play_ch] = self.out_f
        return self.play.write(self.out_buf)

    def recover(self) -> None:
        """After a capture overrun (pyalsaaudio has already re-prepared the stream; a playback
        underrun restarts itself on the next write): top the playback queue back up to its prefill,
        so the round-trip latency stays what it was."""
        try:
            queued = self.period * self.periods - int(self.play.avail())
        except self.alsa.ALSAAudioError:
            queued = 0
        while queued < self.period * (self.periods - 1):
            self.play.write(self.silence)
            queued += self.period

    def close(self) -> None:
        for pcm in (self.cap, self.play):
            try:
                pcm.close()
            except Exception:
                pass
