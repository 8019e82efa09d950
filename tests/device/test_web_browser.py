"""The web page in a real browser (headless Chromium through Selenium) against the real daemon on
the JACK dummy server: log in, watch the meters, turn a virtual knob and hear it (the fake card
records what the daemon plays), hand the knob back to its pot, upload a good bundle and hear it
play, upload a corrupted one and see why it was refused while the old one keeps playing.

The chain: Chromium -> web server (python -m device.web serve, its own process) -> the daemon's
status socket -> daemon (python -m device run --config, file knob source standing in for pots)
<-> ALSA (type jack) <-> JACK dummy <-> FakeCard (this process: plays a sine, records the output).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from device.bench_web import CHROMEDRIVER, CHROMIUM, chromium_driver, free_port
from device.bundle import load_bundle
from device.daemon import query_status
from device.jackrig import FakeCard, JackServer, write_asoundrc

from .conftest import REPO
from .jackkit import Pedal, jack_env, knob_positions, short_socket_path, sine, write_config, write_knob_file

pytestmark = [
    pytest.mark.skipif(shutil.which("jackd") is None, reason="needs jackd (apt-get install jackd2)"),
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs a real browser: apt-get install chromium chromium-driver (CI installs them)"),
]
pytest.importorskip("selenium", reason="needs selenium (requirements/device-test.txt)")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PASSWORD = "stage-password-1"
SR = 48000


def rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-9))


@pytest.fixture(scope="module")
def rig(tmp_path_factory, bundle_path):
    """JACK, the fake card playing a sine, the daemon (config with file knobs), the web server."""
    work = tmp_path_factory.mktemp("web")
    bundles = work / "bundles"
    bundles.mkdir()
    playing = bundles / "comp4.pedal"
    shutil.copyfile(bundle_path, playing)
    manifest = load_bundle(bundle_path).manifest
    specs = manifest.knobs
    knob_file = work / "knobs.txt"
    write_knob_file(knob_file, knob_positions(specs))
    sock = short_socket_path()
    cfg = write_config(work / "pedal.toml", playing, knob_file, sock, specs, period=128, choice=work / "choice.json")
    subprocess.run([sys.executable, "-m", "device.web", "passwd", "--file", str(work / "pw"), "--stdin"],
                   input=PASSWORD + "\n", text=True, check=True, cwd=REPO, capture_output=True)
    port = free_port()
    with JackServer(period=128, log_path=work / "jackd.log") as server:
        asoundrc = write_asoundrc(work / "asoundrc")
        with FakeCard(server.name, sine(level=0.5), record_s=150) as card:
            pedal = Pedal(["--config", str(cfg)], jack_env(server, asoundrc), work, sock=sock)
            web_log = open(work / "web.log", "w")
            web = subprocess.Popen([sys.executable, "-m", "device.web", "serve", "--socket", str(sock),
                                    "--bundles-dir", str(bundles), "--password-file", str(work / "pw"),
                                    "--state-dir", str(work / "web"),
                                    "--host", "127.0.0.1", "--port", str(port), "--poll-ms", "150"],
                                   cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=web_log,
                                   stderr=subprocess.STDOUT)
            try:
                pedal.wait_settled()
                deadline = time.monotonic() + 20
                while True:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=1)
                        break
                    except OSError:
                        if web.poll() is not None or time.monotonic() > deadline:
                            raise AssertionError(f"web server not up: {(work / 'web.log').read_text()}")
                        time.sleep(0.1)
                parts = {"card": card, "pedal": pedal, "url": f"http://127.0.0.1:{port}", "bundles": bundles,
                         "playing": playing, "knob_file": knob_file, "specs": specs, "effect": manifest.effect, "work": work, "sock": sock,
                         "config": cfg, "env": jack_env(server, asoundrc)}
                yield parts
            finally:
                web.terminate()
                web.wait(10)
                web_log.close()
                log = parts["pedal"].stop() if "parts" in locals() else pedal.stop()
                print(log[-3000:])
                print((work / "web.log").read_text()[-2000:])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium_driver(tmp_path_factory.mktemp("chromium"))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def wait(driver, cond, timeout_s=15.0, what="the page"):
    """Until ``cond(driver)`` holds; elements replaced under it (a page loading, a list redrawn) are looked up again."""
    return WebDriverWait(driver, timeout_s, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException, ValueError,
                                             TypeError)).until(lambda d: cond(d), message=what)


def text(driver, element_id) -> str:
    return driver.find_element(By.ID, element_id).text


def output_db(card, seconds=0.3) -> float:
    """The level of what the daemon played in the last ``seconds`` (the card's recording)."""
    end = card.pos
    return rms_db(card.recording[end - int(seconds * SR):end])


@pytest.fixture(scope="module")
def page(rig, browser):
    """Logged in through the login form, as a player would."""
    browser.get(rig["url"] + "/")
    wait(browser, lambda d: d.current_url.endswith("/login"), what="the redirect to the login page")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()
    wait(browser, lambda d: text(d, "effect") == rig["effect"], what="the page after logging in")
    return browser


def test_a_wrong_password_is_refused_in_the_browser(rig, browser):
    browser.get(rig["url"] + "/login")
    browser.find_element(By.ID, "password").send_keys("not the password")
    browser.find_element(By.ID, "login-button").click()
    wait(browser, lambda d: "Wrong password" in text(d, "login-message"), what="the refusal")
    assert browser.current_url.endswith("/login")
    browser.delete_all_cookies()


def test_log_in_and_the_meters_move_with_the_input(rig, page):
    card = rig["card"]
    assert page.execute_script("return window.innerWidth") <= 400  # a phone-sized window
    wait(page, lambda d: float(d.find_element(By.ID, "meter-in").get_attribute("data-db") or -120) > -12,
         what="the input meter showing the sine")
    in_db = float(page.find_element(By.ID, "meter-in").get_attribute("data-db"))
    out_db = float(page.find_element(By.ID, "meter-out").get_attribute("data-db"))
    assert -6.5 < in_db < -5.5  # the card plays a sine at 0.5 peak: -6 dBFS
    assert out_db > -40
    playing_signal = card.signal
    card.signal = np.zeros_like(playing_signal)  # the guitar stops
    try:
        wait(page, lambda d: d.find_element(By.ID, "in-db").text == "silence", what="the input meter falling")
    finally:
        card.signal = playing_signal
    wait(page, lambda d: float(d.find_element(By.ID, "meter-in").get_attribute("data-db")) > -12,
         what="the input meter coming back")
    assert "playing" in page.find_element(By.CSS_SELECTOR, 'li[data-name="comp4.pedal"]').get_attribute("class")
    assert "xruns" in text(page, "status") and "audio load" in text(page, "status")
    assert "bundle" in text(page, "log")  # the daemon's log tail, from its start-up


def test_turning_a_virtual_knob_changes_the_measured_output_and_the_pot_takes_it_back(rig, page):
    card, pedal, specs = rig["card"], rig["pedal"], rig["specs"]
    slider = page.find_element(By.CSS_SELECTOR, 'input[data-knob="threshold_db"]')
    assert pedal.status()["knobs"]["threshold_db"] == pytest.approx(-20.0, abs=0.1)  # where the pot rests
    default = output_db(card)
    slider.send_keys(Keys.HOME)  # threshold -50 dB: the compressor squashes the sine
    wait(page, lambda d: pedal.status()["knobs"]["threshold_db"] == pytest.approx(-50.0, abs=0.01),
         what="the daemon taking the virtual knob")
    time.sleep(0.6)
    squashed = output_db(card)
    print(f"output with threshold -20 dB (pot): {default:.1f} dB RMS; -50 dB (page): {squashed:.1f} dB RMS")
    # (the small test model answers a lowered threshold within a hop or two, a raised one only
    # after seconds of its long memory: the test turns the knob the way it answers quickly)
    assert default - squashed > 6.0
    slider.send_keys(Keys.END)  # threshold 0 dB
    wait(page, lambda d: pedal.status()["knobs"]["threshold_db"] == pytest.approx(0.0, abs=0.01),
         what="the daemon taking the virtual knob")
    wait(page, lambda d: d.find_element(By.CSS_SELECTOR, '[data-source="threshold_db"]').text == "set here",
         what="the page saying the knob is set here")
    time.sleep(0.5)  # the pot rests: the virtual knob holds
    assert pedal.status()["knobs"]["threshold_db"] == pytest.approx(0.0, abs=0.01)
    # the player turns the pot: last mover wins
    write_knob_file(rig["knob_file"], knob_positions(specs, threshold_db=-35.0))
    wait(page, lambda d: d.find_element(By.CSS_SELECTOR, '[data-source="threshold_db"]').text == "pot",
         what="the pot taking the knob back")
    wait(page, lambda d: pedal.status()["knobs"]["threshold_db"] == pytest.approx(-35.0, abs=0.05),
         what="the knob gliding to the pot's position")
    wait(page, lambda d: slider.get_attribute("value") == str(round(specs[0].to_normalized(-35.0) * 1000)),
         what="the slider following the pot")


def upload(page, path: Path) -> str:
    msg = page.find_element(By.ID, "upload-message")
    page.execute_script("arguments[0].textContent = ''", msg)
    page.find_element(By.ID, "upload-file").send_keys(str(path))
    page.find_element(By.ID, "upload-button").click()
    wait(page, lambda d: "accepted" in msg.text or "refused" in msg.text, timeout_s=30, what="the upload's verdict")
    return msg.text


def test_uploading_a_corrupted_bundle_shows_why_and_the_old_one_keeps_playing(rig, page, bundle_path, tmp_path):
    card, pedal = rig["card"], rig["pedal"]
    before = pedal.command("panel")
    level_before = output_db(card, 0.5)
    bad = bytearray(bundle_path.read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    broken = tmp_path / "broken.pedal"
    broken.write_bytes(bytes(bad))
    verdict = upload(page, broken)
    assert "broken.pedal refused" in verdict and "checksum mismatch" in verdict, verdict
    assert sorted(p.name for p in rig["bundles"].iterdir()) == ["comp4.pedal"]  # nothing kept
    time.sleep(0.5)
    after = pedal.command("panel")
    assert after["bundle_source"] == before["bundle_source"] == str(rig["playing"])
    # the old one plays on: no swap, no fault, fully wet (not crossfaded to dry), sound coming out
    assert after["swaps"] == before["swaps"] and not after["in_fault"] and after["mix"] == 1.0
    level_after = output_db(card, 0.5)
    print(f"output before the upload {level_before:.1f} dB RMS, after {level_after:.1f} dB RMS")
    assert level_after > -40.0


def test_uploading_a_good_bundle_makes_it_play(rig, page, bundle_path, tmp_path):
    card, pedal = rig["card"], rig["pedal"]
    swaps = pedal.status()["swaps"]
    fresh = tmp_path / "comp4-v2.pedal"
    shutil.copyfile(bundle_path, fresh)
    verdict = upload(page, fresh)
    assert "comp4-v2.pedal accepted" in verdict and "loading it now" in verdict, verdict
    stored = rig["bundles"] / "comp4-v2.pedal"
    assert stored.read_bytes() == bundle_path.read_bytes()
    wait(page, lambda d: query_status(pedal.sock, "panel")["bundle_source"] == str(stored), timeout_s=20,
         what="the daemon playing the upload")
    st = pedal.status()
    assert st["swaps"] == swaps + 1 and st["last_load"]["ok"] and st["last_load"]["path"] == str(stored)
    wait(page, lambda d: "playing" in d.find_element(By.CSS_SELECTOR, 'li[data-name="comp4-v2.pedal"]')
         .get_attribute("class"), what="the page marking the upload as playing")
    time.sleep(0.5)
    assert output_db(card, 0.3) > -30  # it plays
    # and switching back from the list works the same way
    page.find_element(By.CSS_SELECTOR, 'li[data-name="comp4.pedal"] button').click()
    wait(page, lambda d: query_status(pedal.sock, "panel")["bundle_source"] == str(rig["playing"]), timeout_s=20,
         what="the daemon back on the first bundle")


def test_the_bundle_chosen_on_the_page_plays_again_after_a_power_cut(rig, page):
    """Play comp4-v2 from the list; the daemon records the choice (model.choice, atomically); it is
    killed (SIGKILL: a power cut to it) and started again with the same config, which names
    comp4.pedal: it starts with the chosen comp4-v2 straight away, no swap."""
    card, sock = rig["card"], rig["sock"]
    chosen = rig["bundles"] / "comp4-v2.pedal"
    page.find_element(By.CSS_SELECTOR, 'li[data-name="comp4-v2.pedal"] button').click()
    wait(page, lambda d: query_status(sock, "panel")["bundle_source"] == str(chosen), timeout_s=20,
         what="the daemon playing the chosen bundle")
    record = rig["work"] / "choice.json"
    wait(page, lambda d: record.exists(), timeout_s=10, what="the daemon recording the choice")
    assert json.loads(record.read_text()) == {"bundle": str(chosen), "configured": str(rig["playing"].resolve())}
    old = rig["pedal"]
    old.signal(signal.SIGKILL)
    old.stop()
    sock.parent.mkdir(exist_ok=True)
    restart = rig["work"] / "after-restart"
    restart.mkdir()
    t0 = time.monotonic()
    rig["pedal"] = new = Pedal(["--config", str(rig["config"])], rig["env"], restart, sock=sock)
    st = new.wait_playing(periods=1, timeout_s=30)
    t_playing = time.monotonic() - t0
    assert st["swaps"] == 0 and st["uptime_s"] < 30  # a new daemon ...
    assert query_status(sock, "panel")["bundle_source"] == str(chosen)  # ... started with the chosen bundle
    wait(page, lambda d: "playing" in d.find_element(By.CSS_SELECTOR, 'li[data-name="comp4-v2.pedal"]')
         .get_attribute("class"), what="the page marking the chosen bundle as playing")
    time.sleep(0.5)
    level = output_db(card, 0.3)
    print(f"after the restart: the daemon played the chosen bundle after {t_playing:.1f} s; output {level:.1f} dB RMS")
    assert level > -30  # it plays
    time.sleep(2.0)
    assert new.status()["swaps"] == 0  # nothing had to hand it over
