"""Capturing a pedal from a phone: the web page against the real daemon, the real capture command
and a pedal made of JACK.

The chain: Chromium -> web server (its own process) -> ``python -m device capture`` (a process the
server starts) <-> ALSA (type jack) <-> JACK dummy <-> the fake pedal (tests/device/fake_pedal.py: a
numpy drive with three knobs and 37 samples of its own latency, in its own process, owning the
"card" ports, so box out -> pedal in, pedal out -> box in). The daemon plays on the same ports
until the capture starts: the web server stops it through ``--daemon-stop`` and starts it again
through ``--daemon-start``, which here are a small stand-in for ``systemctl stop|start pedal``
(``service.py``, written below). The test is the guitarist with a phone: it reads the plan, starts,
reads each prompt on the page, sets the pedal's knobs, presses Go, watches a clipped pass refused
with its reason and played again, stops in the middle of a pass, resumes, and downloads the tar.
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from device.bench_web import CHROMEDRIVER, CHROMIUM, chromium_driver, free_port
from device.bundle import load_bundle
from device.capture.plan import format_value, make_plan, parse_knob
from device.capture.signal import make_signal
from device.daemon import query_status
from device.jackrig import JackServer, write_asoundrc

from .conftest import REPO
from .jackkit import jack_env, knob_positions, short_socket_path, write_config, write_knob_file

pytestmark = [
    pytest.mark.skipif(shutil.which("jackd") is None, reason="needs jackd (apt-get install jackd2)"),
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="needs a real browser: apt-get install chromium chromium-driver (CI installs them)"),
]
pytest.importorskip("selenium", reason="needs selenium (requirements/device-test.txt)")
pytest.importorskip("jack", reason="needs JACK-Client (requirements/device-test.txt)")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from .test_capture import PedalProcess  # noqa: E402  (the fake pedal, steered line by line)

PASSWORD = "stage-password-1"
PERIOD, PERIODS = 256, 3  # as test_capture.py: the box's buffers are 768 frames
PEDAL_LATENCY = 37
SECONDS = 6.0
KNOBS = ["drive_db=0..30,dB", "tone=clock", "level=2..10"]
SETTINGS = 3

# systemctl stop|start pedal, for a daemon that is a plain process here: start it in its own
# session, remember its pid; stop it and wait until it is gone (as systemctl stop waits).
SERVICE = textwrap.dedent("""\
    import os, signal, subprocess, sys, time
    work, cmd = sys.argv[1], sys.argv[2]
    pid_file = os.path.join(work, "daemon.pid")
    if cmd == "start":
        log = open(os.path.join(work, "daemon.log"), "a")
        p = subprocess.Popen([sys.executable, "-m", "device", "run", "--config", os.path.join(work, "pedal.toml")],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        open(pid_file, "w").write(str(p.pid))
    else:
        try:
            pid = int(open(pid_file).read())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            sys.exit(0)
        def alive():
            try:
                return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"
            except OSError:
                return False
        deadline = time.monotonic() + 10
        while alive():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        os.unlink(pid_file)
""")


def daemon_answers(sock) -> dict | None:
    try:
        return query_status(sock, "status")
    except (OSError, ValueError):
        return None


def wait_daemon_playing(sock, periods=50, timeout_s=40.0) -> dict:
    deadline = time.monotonic() + timeout_s
    first = None
    while time.monotonic() < deadline:
        st = daemon_answers(sock)
        if st is not None:
            first = first if first is not None else st["periods"]
            if st["periods"] - first >= periods:
                return st
        time.sleep(0.1)
    raise AssertionError(f"the daemon is not playing after {timeout_s} s")


@pytest.fixture(scope="module")
def rig(tmp_path_factory, bundle_path):
    work = tmp_path_factory.mktemp("webcap")
    bundles = work / "bundles"
    bundles.mkdir()
    playing = bundles / "comp4.pedal"
    shutil.copyfile(bundle_path, playing)
    specs = load_bundle(bundle_path).manifest.knobs
    knob_file = work / "knobs.txt"
    write_knob_file(knob_file, knob_positions(specs))
    sock = short_socket_path()
    write_config(work / "pedal.toml", playing, knob_file, sock, specs, period=PERIOD, periods=PERIODS)
    (work / "service.py").write_text(SERVICE)
    subprocess.run([sys.executable, "-m", "device.web", "passwd", "--file", str(work / "pw"), "--stdin"],
                   input=PASSWORD + "\n", text=True, check=True, cwd=REPO, capture_output=True)
    port = free_port()
    service = f"{sys.executable} {work / 'service.py'} {work}"
    with JackServer(period=PERIOD, log_path=work / "jackd.log") as server:
        env = {**os.environ, **jack_env(server, write_asoundrc(work / "asoundrc")), "PYTHONPATH": str(REPO)}
        with PedalProcess(server.name, PEDAL_LATENCY) as pedal:
            subprocess.run(f"{service} start", shell=True, check=True, env=env, cwd=REPO)
            web_log = open(work / "web.log", "w")
            web = subprocess.Popen([sys.executable, "-m", "device.web", "serve", "--config", str(work / "pedal.toml"),
                                    "--password-file", str(work / "pw"), "--state-dir", str(work / "web"),
                                    "--daemon-stop", f"{service} stop", "--daemon-start", f"{service} start",
                                    "--host", "127.0.0.1", "--port", str(port), "--poll-ms", "150",
                                    "--log-level", "info"],
                                   cwd=REPO, env=env, stdout=web_log, stderr=subprocess.STDOUT)
            try:
                wait_daemon_playing(sock)
                deadline = time.monotonic() + 20
                while True:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=1)
                        break
                    except OSError:
                        if web.poll() is not None or time.monotonic() > deadline:
                            raise AssertionError(f"web server not up: {(work / 'web.log').read_text()}")
                        time.sleep(0.1)
                yield {"pedal": pedal, "sock": sock, "url": f"http://127.0.0.1:{port}", "work": work,
                       "captures": work / "web" / "captures"}
            finally:
                web.terminate()
                web.wait(30)
                web_log.close()
                subprocess.run(f"{service} stop", shell=True, env=env, cwd=REPO)
                print((work / "daemon.log").read_text()[-3000:])
                print((work / "web.log").read_text()[-3000:])


def wait(driver, cond, timeout_s=15.0, what="the page"):
    return WebDriverWait(driver, timeout_s, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException, ValueError,
                                             TypeError)).until(lambda d: cond(d), message=what)


def text(driver, element_id) -> str:
    return driver.find_element(By.ID, element_id).text


def click(driver, element) -> None:
    """Tap it, scrolled to the middle of the screen (the page's header stays on top)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def state(driver) -> str:
    return driver.find_element(By.ID, "capture-state").get_attribute("data-state") or ""


def attempts_shown(driver) -> int:
    return int(driver.find_element(By.ID, "capture-attempts").get_attribute("data-key") or 0)


@pytest.fixture(scope="module")
def page(rig, tmp_path_factory):
    driver = chromium_driver(tmp_path_factory.mktemp("chromium"))
    driver.set_page_load_timeout(20)
    driver.get(rig["url"] + "/login")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-button").click()
    wait(driver, lambda d: text(d, "effect") == "comp4", what="the page after logging in")
    yield driver
    driver.quit()


def test_the_plan_is_shown_before_anything_plays(rig, page):
    page.find_element(By.ID, "capture-name").send_keys("my_drive")
    page.find_element(By.ID, "capture-knobs").send_keys("\n".join(KNOBS))
    for element_id, value in (("capture-settings", SETTINGS), ("capture-seconds", SECONDS)):
        field = page.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(str(value))
    click(page, page.find_element(By.ID, "capture-preview"))
    summary = wait(page, lambda d: d.find_element(By.ID, "capture-plan-summary"), what="the plan")
    assert summary.get_attribute("data-settings") == str(SETTINGS)
    assert f"{SETTINGS} settings of 3 knobs" in summary.text and "6 s of signal each" in summary.text
    assert "about 3 MB on the card" in summary.text, summary.text  # 3 settings of 6 s, inputs and targets
    rows = page.find_elements(By.CSS_SELECTOR, "#capture-plan tr[data-setting]")
    specs = [parse_knob(k) for k in KNOBS]
    want = [[format_value(k, v) for k, v in zip(specs, s)] for s in make_plan(specs, SETTINGS)]
    assert [[td.text for td in r.find_elements(By.TAG_NAME, "td")][1:] for r in rows] == want
    assert daemon_answers(rig["sock"]) is not None  # looking at a plan stops nothing


def test_a_capture_from_the_phone_start_refusal_stop_resume_done(rig, page):
    """Reference (pedal bypassed), 3 settings; the first try of setting 1 clips the box's input and is
    refused with the reason on the page; setting 2 is stopped mid-pass and resumed; the daemon is
    stopped while the capture holds the sound card and plays again after each stop and at the end."""
    pedal, sock, folder = rig["pedal"], rig["sock"], rig["captures"] / "my_drive"
    click(page, page.find_element(By.ID, "capture-start"))
    wait(page, lambda d: state(d) == "waiting", timeout_s=60, what="the first prompt")
    assert daemon_answers(sock) is None  # the daemon is off the sound card while the capture runs
    assert "stopped while the capture" in text(page, "daemon-message")
    assert "stopped for the capture" in text(page, "capture-daemon")
    fault_pending, refused_shown, stopped_mid_pass, daemon_back_after_stop = True, "", False, None
    shown_counts = []
    t0 = time.monotonic()
    while True:
        s = wait(page, lambda d: state(d) in ("waiting", "done", "failed", "stopped") and state(d),
                 timeout_s=90, what="a prompt or the end")
        if s == "failed":
            raise AssertionError(f"capture failed: {text(page, 'capture-message')}\n{text(page, 'capture-log')}")
        if s == "done":
            break
        if s == "stopped":  # we stopped it mid-pass: the daemon is back; resume from the list
            assert "played again" in text(page, "capture-message")
            daemon_back_after_stop = wait_daemon_playing(sock, periods=20)
            click(page, wait(page, lambda d: d.find_element(By.CSS_SELECTOR, 'li[data-capture="my_drive"] button.resume'),
                             what="the Resume button"))
            wait(page, lambda d: state(d) == "waiting", timeout_s=60, what="the resumed capture's prompt")
            assert daemon_answers(sock) is None
            continue
        prompt = text(page, "capture-prompt")
        progress = page.find_element(By.ID, "capture-progress")
        shown_counts.append((int(progress.get_attribute("data-done")), int(progress.get_attribute("data-total"))))
        plan = json.loads((folder / "capture.json").read_text())["plan"]
        n = 0 if prompt.startswith("reference") else int(re.match(r"pass (\d+)/3", prompt)[1])
        pedal.send(f"bypass {int(n == 0)}")
        if n:
            specs = [parse_knob(k) for k in KNOBS]
            for k, v in zip(specs, plan[n - 1]):  # the page says what to set, as the terminal would
                assert format_value(k, v) in prompt, (prompt, k.name)
            pedal.send("knobs " + " ".join(map(str, plan[n - 1])))
        pedal.send("fault " + ("clip" if n == 1 and fault_pending else "none"))
        before = attempts_shown(page)
        click(page, page.find_element(By.ID, "capture-go"))
        if n == 2 and not stopped_mid_pass:
            wait(page, lambda d: state(d) == "running", what="the pass playing")
            time.sleep(1.5)
            click(page, page.find_element(By.ID, "capture-stop"))
            stopped_mid_pass = True
            continue
        wait(page, lambda d: attempts_shown(d) > before, timeout_s=90, what="the pass's verdict on the page")
        top = page.find_element(By.CSS_SELECTOR, "#capture-attempts li")
        if n == 1 and fault_pending and "refused" in top.text:
            assert "clipping" in top.text and top.get_attribute("class") == "bad", top.text
            refused_shown = top.text
            fault_pending = False
    elapsed = time.monotonic() - t0
    print(f"capture through the page: {elapsed:.0f} s; progress seen at the prompts {shown_counts}; "
          f"refusal shown: {refused_shown!r}")
    print(text(page, "capture-log"))
    assert refused_shown, "the clipped pass was not shown refused"
    assert stopped_mid_pass and daemon_back_after_stop is not None
    progress = page.find_element(By.ID, "capture-progress")
    assert (progress.get_attribute("data-done"), progress.get_attribute("data-total")) == ("3", "3")
    assert text(page, "capture-count").startswith("3 of 3 settings captured")
    assert shown_counts[0] == (0, 3) and shown_counts[-1] == (2, 3)
    st = json.loads((folder / "capture.json").read_text())
    assert all(p is not None for p in st["passes"]) and len(st["plan"]) == SETTINGS
    assert st["latency_samples"] == PERIOD * PERIODS + PEDAL_LATENCY  # the box's buffers + the pedal's own
    assert f"latency {PERIOD * PERIODS + PEDAL_LATENCY} samples" in text(page, "capture-count")
    # the daemon is back on the sound card, playing its bundle
    back = wait_daemon_playing(sock, periods=50)
    assert back["effect"] == "comp4"
    wait(page, lambda d: "started again" in text(d, "capture-daemon"), what="the page saying the daemon is back")


def test_the_capture_downloads_as_a_dataset(rig, page):
    link = wait(page, lambda d: d.find_element(By.CSS_SELECTOR, 'li[data-capture="my_drive"] a.download'),
                what="the download link")
    assert "3 of 3 settings" in page.find_element(By.CSS_SELECTOR, 'li[data-capture="my_drive"]').text
    assert not page.find_elements(By.CSS_SELECTOR, 'li[data-capture="my_drive"] button.resume')  # nothing left
    cookie = page.get_cookie("pedal_session")["value"]
    req = urllib.request.Request(link.get_attribute("href"), headers={"Cookie": f"pedal_session={cookie}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"] == "application/x-tar"
        data = r.read()
    with pytest.raises(urllib.error.HTTPError) as refused:  # no session, no download
        urllib.request.urlopen(link.get_attribute("href"), timeout=10)
    assert refused.value.code == 401
    tar = tarfile.open(fileobj=io.BytesIO(data))
    names = sorted(tar.getnames())
    print(f"download: {len(data) / 2**20:.1f} MiB, {len(names)} files")
    assert all(n.startswith("my_drive/") for n in names)
    targets = [n for n in names if n.startswith("my_drive/target/")]
    assert len(targets) == SETTINGS * 3 and "my_drive/capture.json" in names and "my_drive/knobs.toml" in names
    rows = tar.extractfile("my_drive/knobs.csv").read().decode().strip().splitlines()
    assert rows[0] == "input,target,drive_db,tone,level,split" and len(rows) == 1 + SETTINGS * 3
    ranges = make_signal(SECONDS).split_ranges()
    for split, (a, b) in ranges.items():
        x, sr = sf.read(io.BytesIO(tar.extractfile(f"my_drive/input/{split}.wav").read()), dtype="float32")
        assert sr == 48000 and len(x) == b - a
        for i in range(1, SETTINGS + 1):
            y, _ = sf.read(io.BytesIO(tar.extractfile(f"my_drive/target/pass_{i:03d}_{split}.wav").read()),
                           dtype="float32")
            assert len(y) == b - a, (split, i, len(y))
            assert np.sqrt(np.mean(y ** 2)) > 1e-3  # the pedal's return, not silence
