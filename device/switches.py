"""The footswitch and the status LED, as gpiozero devices (mock pins in tests, real ones on the Pi).

Callbacks run on gpiozero's threads, never on the audio thread: keep them short (set a flag,
start a crossfade), as the daemon's do.
"""
from __future__ import annotations

import time

from gpiozero import Button, PWMLED


class Footswitch:
    """A momentary footswitch between ``pin`` and ground, with the Pi's internal pull-up.

    A short press calls ``on_short`` (toggle bypass) when the switch is released; holding it for
    ``long_press_s`` calls ``on_long`` (next bundle) at once, and then no short press follows.
    ``bounce_s`` is handed to gpiozero's edge debouncing, and a "press" shorter than that is
    ignored as contact bounce too, which also holds where the pin driver does not debounce.
    """

    def __init__(self, pin, on_short=None, on_long=None, long_press_s: float = 1.0,
                 bounce_s: float = 0.02, pin_factory=None):
        self.on_short, self.on_long = on_short, on_long
        self.long_press_s, self.bounce_s = long_press_s, bounce_s
        self.button = Button(pin, pull_up=True, bounce_time=bounce_s, hold_time=long_press_s,
                             pin_factory=pin_factory)
        self._pressed_at = None
        self._held = False
        self.button.when_pressed = self._on_pressed
        self.button.when_held = self._on_held
        self.button.when_released = self._on_released

    def _on_pressed(self):
        self._pressed_at, self._held = time.monotonic(), False

    def _on_held(self):
        self._held = True
        if self.on_long is not None:
            self.on_long()

    def _on_released(self):
        if self._pressed_at is None or self._held:
            return
        pressed_s = time.monotonic() - self._pressed_at
        self._pressed_at = None
        if pressed_s >= self.bounce_s and self.on_short is not None:
            self.on_short()

    def close(self):
        self.button.close()


class StatusLED:
    """An LED (with its resistor) on a GPIO, driven by PWM: "on" steady, "bypass" dim, "fault" blinking."""

    STATES = ("on", "bypass", "fault")

    def __init__(self, pin, bypass_level: float = 0.1, blink_hz: float = 4.0, pin_factory=None):
        if not 0.0 <= bypass_level < 1.0:
            raise ValueError(f"bypass_level must be in 0..1 (0 = off), got {bypass_level}")
        self.bypass_level, self.blink_hz = bypass_level, blink_hz
        self.led = PWMLED(pin, pin_factory=pin_factory)
        self.state: str | None = None

    def show(self, state: str):
        """Show one of ``STATES``; showing the current state again changes nothing (a blink keeps its phase)."""
        if state not in self.STATES:
            raise ValueError(f"LED state {state!r} is not one of {self.STATES}")
        if state == self.state:
            return
        self.state = state
        if state == "fault":
            half_s = 0.5 / self.blink_hz
            self.led.blink(on_time=half_s, off_time=half_s)  # on gpiozero's background thread
        else:
            self.led.value = 1.0 if state == "on" else self.bypass_level  # also stops a blink

    def close(self):
        self.led.close()
