"""Web page benchmark: the daemon's per-period work with the web page open and polling, against
without it, in one run of one daemon.

    python -m device.bench_web [--block-s 20] [--rounds 3] [--poll-ms 250] [--bundle B] [--out web.json]

One daemon (``python -m device run`` under ``chrt -f 60``, audio thread pinned to core 0) plays a
looping guitar-like signal through the JACK dummy server (device.jackrig) for the whole run, with
the web server (``python -m device.web serve``, its own process at nice 10, as pedal-web.service
runs it) beside it. The run cycles through three conditions, ``--block-s`` seconds each,
``--rounds`` times, so slow drifts of this shared machine fall on all three alike:

    closed    no client: the web server idles
    page      headless Chromium (apt's, through Selenium) logged in with the page open, polling
              /api/panel every --poll-ms and redrawing meters, knobs, status and log tail
    poller    a plain HTTP client (its own process) asking /api/panel at the same rate: the
              server's and the daemon socket's share of the cost, without a browser on the machine

On the box the browser runs on a phone; here it runs on the same machine, so it is pinned to the
last core (the daemon's audio thread has core 0) and the poller with it. Measured per condition,
from the daemon's own per-period record (``run --stats``), leaving out the first second of each
block: work per period (period arrived -> output queued) median, p99, p99.9 and max as a
fraction of the period; late periods (more than 2 periods after the one before); ALSA xruns; the
CPU time the web server and the daemon used. Speed is judged as a comparison in one run, never
pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from .bench_soak import guitar_like
from .daemon import query_status
from .jackrig import FakeCard, JackServer, alsa_env, chrt_prefix, write_asoundrc

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "bench-web-password"
CONDITIONS = ("closed", "page", "poller")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(url: str, poll_s: float) -> None:
    """A plain HTTP client: log in, then GET /api/panel every ``poll_s`` until SIGTERM; print the
    number of requests. Its own process: in the benchmark's process its Python work would hold
    up the fake card's JACK callback (Python too), which is not what a phone does to the box."""
    import http.cookiejar
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(url + "/login").read().decode()
    token = page.split('name="token" value="')[1].split('"')[0]
    opener.open(urllib.request.Request(url + "/login", data=f"token={token}&password={PASSWORD}".encode(),
                                       method="POST"))
    requests = 0

    def stop(signum, frame):
        print(requests, flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    while True:
        t = time.monotonic()
        json.loads(opener.open(url + "/api/panel").read())
        requests += 1
        time.sleep(max(0.0, poll_s - (time.monotonic() - t)))


def start_poller(url: str, poll_s: float, cpu: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"from device.bench_web import poll; poll({url!r}, {poll_s!r})"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def chromium_driver(profile: Path, cpu: int | None = None):
    """Headless Chromium (apt's) through Selenium, in a phone-sized window, kept off the closed
    network (RECIPES.md: a real browser for web tests); on core ``cpu`` alone if given."""
    from selenium import webdriver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3}})
    everything = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # chromedriver and Chromium inherit it
    try:
        return webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    finally:
        os.sched_setaffinity(0, everything)


def browser(url: str, cpu: int, profile: Path):
    """Chromium on core ``cpu``, logged in, left on a blank page."""
    driver = chromium_driver(profile, cpu)
    driver.get(url + "/login")
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("id", "login-button").click()
    deadline = time.monotonic() + 20
    while driver.find_element("id", "effect").text in ("", "…"):
        if time.monotonic() > deadline:
            raise RuntimeError("the page did not show the daemon's status")
        time.sleep(0.1)
    driver.get("about:blank")
    return driver


def summarise(z, windows: dict[str, list[tuple[float, float]]], skip_s: float) -> dict:
    period_s = int(z["period"]) / int(z["rate"])
    t, work = z["t_period"], z["work_s"].astype(np.float64) / period_s
    valid = t > 0
    xrun_at = z["xrun_at"]
    out = {}
    for cond, spans in windows.items():
        mask = np.zeros(len(t), bool)
        xruns = 0
        for a, b in spans:
            m = valid & (t >= a + skip_s) & (t < b)
            mask |= m
            idx = np.flatnonzero(m)
            if len(idx):
                xruns += int(((xrun_at >= idx[0]) & (xrun_at <= idx[-1])).sum())
        w = work[mask]
        idx = np.flatnonzero(mask)
        gaps = np.diff(t[idx]) / period_s
        gaps = gaps[np.diff(idx) == 1]  # consecutive periods only (not across blocks)
        out[cond] = {"periods": int(len(w)), "work_median": float(np.median(w)), "work_p99": float(np.percentile(w, 99)),
                     "work_p999": float(np.percentile(w, 99.9)), "work_max": float(w.max()),
                     "late_periods": int((gaps > 2.0).sum()), "xruns_alsa": xruns}
    return out


def report(res: dict, cpu: dict, seconds: dict) -> str:
    conds = list(res)
    rows = [("", *conds),
            ("periods measured", *[f"{res[c]['periods']}" for c in conds]),
            ("work median / period", *[f"{100 * res[c]['work_median']:.1f}%" for c in conds]),
            ("work p99", *[f"{100 * res[c]['work_p99']:.1f}%" for c in conds]),
            ("work p99.9", *[f"{100 * res[c]['work_p999']:.1f}%" for c in conds]),
            ("work max", *[f"{100 * res[c]['work_max']:.1f}%" for c in conds]),
            ("late periods (> 2 periods apart)", *[f"{res[c]['late_periods']}" for c in conds]),
            ("xruns ALSA", *[f"{res[c]['xruns_alsa']}" for c in conds]),
            ("web server CPU (% of a core)", *[f"{100 * cpu[c]['web'] / seconds[c]:.1f}%" for c in conds]),
            ("daemon CPU (% of a core)", *[f"{100 * cpu[c]['daemon'] / seconds[c]:.1f}%" for c in conds])]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{w}}  " + "  ".join(f"{c:>10}" for c in r[1:]) for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device.bench_web", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-s", type=float, default=20.0, help="seconds per condition per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--poll-ms", type=int, default=250, help="the page's polling interval (its default: 250)")
    ap.add_argument("--period", type=int, default=128)
    ap.add_argument("--bundle", default=str(REPO / "build/testkit/tiny.pedal"))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        raise SystemExit("bench_web needs apt's chromium and chromium-driver (make system-deps)")
    rate = 48000
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    bundles = work / "bundles"
    bundles.mkdir()
    shutil.copyfile(a.bundle, bundles / "bench.pedal")
    from .web.auth import write_password_file
    write_password_file(work / "pw", PASSWORD)
    sock = Path(tempfile.mkdtemp(prefix="bw", dir="/tmp")) / "s.sock"
    total_s = a.block_s * len(CONDITIONS) * a.rounds
    stats = work / "daemon.npz"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    last_cpu = max(os.sched_getaffinity(0))
    env_base = {**os.environ, "PYTHONPATH": str(REPO)}
    with JackServer(period=a.period, rate=rate, log_path=work / "jackd.log") as server:
        asoundrc = write_asoundrc(work / "asoundrc")
        with FakeCard(server.name, guitar_like(), record_s=0, rate=rate) as card:
            daemon_log = open(work / "daemon.log", "w")
            daemon = subprocess.Popen(
                chrt_prefix(60) + [sys.executable, "-m", "device", "run", "--bundle", str(bundles / "bench.pedal"),
                                   "--capture", "jackcap", "--playback", "jackplay", "--period", str(a.period),
                                   "--priority", "60", "--cpu", "0", "--status-socket", str(sock),
                                   "--seconds", f"{total_s + 40:.0f}", "--stats", str(stats)],
                env={**env_base, **server.env(), **alsa_env(asoundrc)}, cwd=REPO, stdout=daemon_log,
                stderr=subprocess.STDOUT)
            web_log = open(work / "web.log", "w")
            web = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "device.web", "serve", "--socket",
                                    str(sock), "--bundles-dir", str(bundles), "--password-file", str(work / "pw"),
                                    "--host", "127.0.0.1", "--port", str(port), "--poll-ms", str(a.poll_ms)],
                                   env=env_base, cwd=REPO, stdout=web_log, stderr=subprocess.STDOUT)
            driver = poller = None
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if query_status(sock)["periods"] * a.period >= 2 * rate:
                            urllib.request.urlopen(url + "/login", timeout=1)
                            break
                    except (OSError, ValueError):
                        pass
                    if daemon.poll() is not None or web.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"not up: {(work / 'daemon.log').read_text()[-2000:]}"
                                           f"{(work / 'web.log').read_text()[-2000:]}")
                    time.sleep(0.2)
                driver = browser(url, last_cpu, work / "chromium")
                poller_requests = 0
                windows = {c: [] for c in CONDITIONS}
                cpu = {c: {"web": 0.0, "daemon": 0.0} for c in CONDITIONS}
                seconds = {c: 0.0 for c in CONDITIONS}
                print(f"[bench-web] {a.rounds} rounds x {len(CONDITIONS)} conditions x {a.block_s:g} s, "
                      f"page polls every {a.poll_ms} ms", flush=True)
                for r in range(a.rounds):
                    for cond in CONDITIONS:
                        if cond == "page":
                            driver.get(url + "/")
                        if cond == "poller":
                            poller = start_poller(url, a.poll_ms / 1000, last_cpu)
                        c0 = (cpu_seconds(web.pid), cpu_seconds(daemon.pid))
                        t0 = time.perf_counter()
                        time.sleep(a.block_s)
                        t1 = time.perf_counter()
                        c1 = (cpu_seconds(web.pid), cpu_seconds(daemon.pid))
                        if cond == "page":
                            driver.get("about:blank")
                        if poller is not None:
                            poller.terminate()
                            poller_requests += int(poller.communicate(timeout=10)[0].strip() or 0)
                            poller = None
                        windows[cond].append((t0, t1))
                        cpu[cond]["web"] += c1[0] - c0[0]
                        cpu[cond]["daemon"] += c1[1] - c0[1]
                        seconds[cond] += t1 - t0
                        print(f"  round {r + 1} {cond}: done", flush=True)
                st = query_status(sock)
            finally:
                if driver is not None:
                    driver.quit()
                if poller is not None:
                    poller.kill()
                web.send_signal(signal.SIGTERM)
                web.wait(10)
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
                daemon_log.close()
                web_log.close()
    z = np.load(stats)
    res = summarise(z, windows, skip_s=1.0)
    print(f"\nbench-web: period {a.period} x 2 at {rate} Hz ({1000 * a.period / rate:.2f} ms), bundle {a.bundle}, "
          f"{a.rounds} rounds of {a.block_s:g} s per condition; page/poller every {a.poll_ms} ms "
          f"({poller_requests} poller requests); daemon xruns in all {st['xruns']}")
    print(report(res, cpu, seconds))
    print(f"(logs and per-period stats in {work})")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"period": a.period, "block_s": a.block_s, "rounds": a.rounds,
                                           "poll_ms": a.poll_ms, "bundle": a.bundle, "results": res,
                                           "cpu_s": cpu, "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
