"""The footswitch and the status LED on gpiozero's mock pins: a stomp, a hold, a bounce, three LED states."""
import time

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from device.switches import Footswitch, StatusLED

SWITCH_PIN, LED_PIN = 17, 18


@pytest.fixture
def pins():
    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    yield Device.pin_factory
    Device.pin_factory.reset()


@pytest.fixture
def footswitch(pins):
    calls = []
    switch = Footswitch(SWITCH_PIN, on_short=lambda: calls.append("short"), on_long=lambda: calls.append("long"),
                        long_press_s=0.3, bounce_s=0.02)
    yield switch, pins.pin(SWITCH_PIN), calls
    switch.close()


def test_the_switch_pin_idles_high_on_the_pull_up(footswitch):
    switch, pin, calls = footswitch
    assert pin.state and not switch.button.is_pressed and calls == []


def test_a_stomp_toggles_bypass_on_release(footswitch):
    _, pin, calls = footswitch
    pin.drive_low()
    time.sleep(0.1)
    assert calls == []  # could still become a long press
    pin.drive_high()
    assert calls == ["short"]
    pin.drive_low()
    time.sleep(0.1)
    pin.drive_high()
    assert calls == ["short", "short"]


def test_holding_the_switch_calls_long_once_and_no_short(footswitch):
    _, pin, calls = footswitch
    pin.drive_low()
    time.sleep(0.6)  # twice long_press_s: still one long press
    assert calls == ["long"]  # fired while held, before the release
    pin.drive_high()
    time.sleep(0.05)
    assert calls == ["long"]


def test_contact_bounce_makes_one_press_not_three(footswitch):
    _, pin, calls = footswitch
    for _ in range(3):  # the contacts chatter for a few ms on the way down ...
        pin.drive_low()
        time.sleep(0.002)
        pin.drive_high()
    pin.drive_low()
    time.sleep(0.1)
    pin.drive_high()
    pin.drive_low()  # ... and on the way up
    time.sleep(0.002)
    pin.drive_high()
    assert calls == ["short"]


def test_the_led_shows_on_bypass_and_fault(pins):
    led = StatusLED(LED_PIN, bypass_level=0.1, blink_hz=10.0)
    pin = pins.pin(LED_PIN)
    led.show("on")
    assert pin.state == 1.0
    led.show("bypass")
    assert pin.state == pytest.approx(0.1)
    led.show("fault")
    pin.clear_states()
    time.sleep(0.5)  # 10 Hz blink: ~10 edges
    states = [s.state for s in pin.states[1:]]
    assert states.count(1.0) >= 3 and states.count(0.0) >= 3 and set(states) <= {0.0, 1.0}
    led.show("fault")  # shown again (the daemon repeats itself): it keeps blinking
    pin.clear_states()
    time.sleep(0.3)
    assert len(pin.states) >= 4 and led.state == "fault"
    led.show("on")  # stops the blink
    time.sleep(0.2)
    assert pin.state == 1.0
    with pytest.raises(ValueError, match="sparkle"):
        led.show("sparkle")
    led.close()


def test_bypass_can_be_dark(pins):
    led = StatusLED(LED_PIN, bypass_level=0.0)
    led.show("bypass")
    assert pins.pin(LED_PIN).state == 0.0
    led.close()
