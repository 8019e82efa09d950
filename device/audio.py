"""Full-duplex ALSA through pyalsaaudio: interleaved periods in, mono float out of the guitar
channel, mono float back to the chosen playback channels. Buffers are allocated once.

Any ALSA PCM name works: the HAT's ``hw:`` card, the ``pedal`` alias of firmware_cfg/asound.conf,
a ``type file`` PCM (tests: exact, unpaced) or a ``type jack`` PCM (tests: real-time paced).

What can go wrong, and what the caller sees:

- an xrun (capture overrun or playback underrun: the loop was late): ``read`` returns a negative
  number or ``write`` returns -1; ``recover`` stops both streams, and they start again exactly as
  at start-up, so the round trip stays ``periods x period``;
- the device is gone (unplugged, its driver or server died): ``read``/``write`` raise
  ``DeviceLost``; ``close`` then ``reopen`` (the daemon retries with back-off).
"""
from __future__ import annotations

import time

import numpy as np

# ALSA format -> (numpy sample type, full scale). S24_LE is 24 bits in the low bytes of 32.
FORMATS = {"S16_LE": (np.int16, 2.0 ** 15), "S24_LE": (np.int32, 2.0 ** 23), "S32_LE": (np.int32, 2.0 ** 31),
           "FLOAT_LE": (np.float32, 1.0)}


class AlsaError(Exception):
    pass


class DeviceLost(AlsaError):
    """The PCM failed with something other than an xrun: close it and open it again."""


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
        self.fmt = fmt
        self.dtype, self.scale = FORMATS[fmt]
        self.rate, self.period, self.periods = rate, period_frames, periods
        self.cap_ch, self.play_ch = capture_channels, playback_channels
        self.in_ch, self.out_chs = input_channel, tuple(output_channels)
        self.names = (capture, playback)
        self.cap = self.play = None
        self._open()
        self.mono_in = np.zeros(self.period, np.float32)
        self.out_f = np.zeros(self.period, np.float32)
        self.out_buf = np.zeros(self.period * playback_channels, self.dtype)
        self.out_chan_views = [self.out_buf[c::playback_channels] for c in self.out_chs]  # made once, not per period
        self.silence = np.zeros(self.period * playback_channels, self.dtype)
        self.lo, self.hi = (-1.0, 1.0) if self.dtype == np.float32 else (-self.scale, self.scale - 1)
        self.t_in = 0.0  # perf_counter() when the last period arrived (the start of this period's work)
        self.primed = False  # playback has its share of silence queued (see read)
        # The latency guard (see read): on for devices that play in real time, off for unpaced ones
        # (a file-backed PCM consumes everything at once, so its queue always reads empty).
        self.paced: bool | None = None  # unknown until the first write after a start
        self.drift_periods = 0
        self.drift_limit = 16  # periods in a row with the wrong queue length before we call it a drift

    def _open(self) -> None:
        alsaaudio, (capture, playback) = self.alsa, self.names
        alsa_fmt = getattr(alsaaudio, f"PCM_FORMAT_{self.fmt}")
        asked = self.period
        try:
            self.cap = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, rate=self.rate,
                                     channels=self.cap_ch, format=alsa_fmt, periodsize=asked, periods=self.periods,
                                     device=capture)
            self.play = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NORMAL, rate=self.rate,
                                      channels=self.play_ch, format=alsa_fmt, periodsize=asked, periods=self.periods,
                                      device=playback)
            cap_info, play_info = self.cap.info(), self.play.info()
            got = (cap_info["period_size"], play_info["period_size"])
        except alsaaudio.ALSAAudioError as e:
            self.close()
            raise AlsaError(f"cannot open ALSA capture {capture!r} / playback {playback!r} at {self.rate} Hz, "
                            f"{self.fmt}, period {asked} x {self.periods}: {e}") from None
        # A device may impose its own period (a JACK server's, say): take it, if both sides agree.
        if got[0] != got[1]:
            self.close()
            raise AlsaError(f"ALSA gave capture {capture!r} a period of {got[0]} frames and playback {playback!r} "
                            f"{got[1]}: they must match")
        self.period = int(got[0])
        self.buffer_frames = int(play_info["buffer_size"])
        self.periods = max(2, self.buffer_frames // self.period)

    def info(self) -> str:
        return (f"capture {self.names[0]!r} / playback {self.names[1]!r}: {self.rate} Hz, {self.fmt}, period "
                f"{self.period} x {self.periods}, {self.cap_ch} in (guitar on {self.in_ch}), {self.play_ch} out "
                f"{list(self.out_chs)}")

    def prefill(self, periods: int) -> None:
        """Queue ``periods`` periods of silence on the playback side."""
        for _ in range(periods):
            if self._write(self.silence) < 0:
                raise DeviceLost(f"playback {self.names[1]!r}: underrun while starting")

    def read(self) -> int:
        """Wait for one period and put it in ``mono_in``; -> frames read, or a negative number: an
        overrun (-1, or ALSA's -EPIPE) or a latency drift (-2, below), both xruns to ``recover``
        from. Raises DeviceLost when the capture device fails otherwise.

        How the streams start (at start-up and after every xrun): the first read starts capture
        and returns as the first period is complete; only then does playback start, with
        ``periods - 1`` periods of silence queued ahead of the one about to be written. So the
        round trip is one period of capture plus ``periods - 1`` of playback, ``periods x period``,
        whatever the phase between the two streams' start: a JACK server, whose ALSA plugin runs
        capture and playback as two clients, would otherwise add or drop a whole period when a
        cycle boundary fell between the two starts."""
        try:
            n, data = self.cap.read()
        except self.alsa.ALSAAudioError as e:
            raise DeviceLost(f"capture {self.names[0]!r}: {e}") from None
        self.t_in = time.perf_counter()
        if n <= 0:
            return n if n < 0 else -1
        if not self.primed:
            self.prefill(self.periods - 1)
            self.primed = True
            self.drift_periods = 0
            self.paced = None
        elif self.paced:
            # Latency guard. Just after a period arrives, playback should hold the periods - 1 we
            # queued ahead of it. A queue a whole period off means the two streams have slipped
            # apart without an xrun being reported (the ALSA jack plugin's capture and playback are
            # separate JACK clients, and a JACK xrun can skip one and not the other): the round
            # trip is a period shorter or longer than it should be. If it stays so for
            # drift_limit periods (a late wake-up does not), report -2: an xrun, restart both.
            try:
                queued = self.buffer_frames - self.play.avail()
            except self.alsa.ALSAAudioError:
                queued = self.expected_queue  # the write will say what is wrong
            if abs(queued - self.expected_queue) * 2 >= self.period:
                self.drift_periods += 1
                if self.drift_periods >= self.drift_limit:
                    return -2
            else:
                self.drift_periods = 0
        raw = np.frombuffer(data, self.dtype)
        frames = min(n, self.period)
        np.multiply(raw[self.in_ch: frames * self.cap_ch: self.cap_ch], 1.0 / self.scale, out=self.mono_in[:frames])
        if frames < self.period:
            self.mono_in[frames:] = 0.0
        return frames

    def encode(self, mono: np.ndarray) -> None:
        """Mono float -> the interleaved playback buffer, every output channel (no I/O)."""
        np.multiply(mono, self.scale, out=self.out_f)
        np.clip(self.out_f, self.lo, self.hi, out=self.out_f)
        if self.dtype != np.float32:
            np.rint(self.out_f, out=self.out_f)
        for view in self.out_chan_views:
            view[:] = self.out_f

    @property
    def expected_queue(self) -> int:
        return (self.periods - 1) * self.period

    def write_encoded(self) -> int:
        """Queue the encoded period; -> frames written, or -1 on an underrun. Raises DeviceLost."""
        n = self._write(self.out_buf)
        if self.paced is None and n > 0:  # first write after a start: does this device play in real time?
            try:
                self.paced = self.buffer_frames - self.play.avail() > 0
            except self.alsa.ALSAAudioError:
                self.paced = False
        return n

    def write(self, mono: np.ndarray) -> int:
        """Write one period of mono float to every output channel; -> frames written (-1: underrun)."""
        self.encode(mono)
        return self.write_encoded()

    def _write(self, buf) -> int:
        try:
            return self.play.write(buf)
        except self.alsa.ALSAAudioError as e:
            # pyalsaaudio raises on -EPIPE (underrun) and leaves the PCM in XRUN; anything else is the device
            try:
                if self.play.state() == self.alsa.PCM_STATE_XRUN:
                    return -1
            except self.alsa.ALSAAudioError:
                pass
            raise DeviceLost(f"playback {self.names[1]!r}: {e}") from None

    def recover(self) -> None:
        """After an xrun on either side: stop both streams; the next ``read`` starts them again
        the way they started at first, so the round-trip latency is what it was before the xrun."""
        for pcm in (self.cap, self.play):
            try:
                pcm.drop()  # -> SETUP; pyalsaaudio prepares a SETUP or XRUN stream on the next read/write
            except self.alsa.ALSAAudioError as e:
                raise DeviceLost(f"{self.names[0]!r}/{self.names[1]!r}: cannot restart after an xrun: {e}") from None
        self.primed = False

    def reopen(self) -> None:
        """Close and open both PCMs again (after DeviceLost). Raises AlsaError while the device is
        still missing, or if it comes back with another period size than the buffers were made for."""
        period = self.period
        self.close()
        self.primed = False
        self._open()
        if self.period != period:
            p, self.period = self.period, period
            self.close()
            raise AlsaError(f"device came back with a period of {p} frames instead of {period}")

    def close(self) -> None:
        for pcm in (self.cap, self.play):
            if pcm is None:
                continue
            try:
                pcm.close()
            except Exception:
                pass
