// SignalTrain-Pi pedal web page: polls /api/panel, sends changes with the session's CSRF token.
// Plain JavaScript, no build step. Everything shown is set through textContent (never innerHTML).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const pollMs = Math.max(100, parseInt(document.querySelector('meta[name="poll-ms"]').content, 10) || 250);
const $ = (id) => document.getElementById(id);
let panel = null;          // the last /api/panel reply
let knobKey = "";          // which bundle's knobs are drawn
const touched = {};        // knob name -> time of the last local change (the slider is left alone meanwhile)
let uploadMax = 32 << 20;

async function post(url, body, headers) {
  const r = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: Object.assign({"X-CSRF-Token": csrf, "Content-Type": "application/json"}, headers || {}),
    body: body instanceof Blob ? body : JSON.stringify(body),
  });
  if (r.status === 401) { location.href = "/login"; return {ok: false, error: "not logged in"}; }
  let reply;
  try { reply = await r.json(); } catch (e) { reply = {ok: false, error: `HTTP ${r.status}`}; }
  if (!r.ok && reply.ok === undefined) reply.ok = false;
  return reply;
}

// --- knobs: slider position 0..1 <-> value, by the knob's taper (device/knobspec.py) ----------
function toValue(k, p) {
  p = Math.min(Math.max(p, 0), 1);
  return k.taper === "log" ? k.minimum * Math.pow(k.maximum / k.minimum, p) : k.minimum + p * (k.maximum - k.minimum);
}
function fmt(v) {
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}
function unit(k) { return k.unit ? (k.unit.startsWith(":") ? k.unit : " " + k.unit) : ""; }

const sendTimers = {};
function sendKnob(name, value, now) {
  // at most one request per 80 ms per knob while dragging; the last value always goes
  clearTimeout(sendTimers[name]);
  const go = async () => {
    const r = await post("/api/knob", {name: name, value: value});
    if (!r.ok) $("daemon-message").textContent = r.error || "knob refused";
  };
  if (now) go(); else sendTimers[name] = setTimeout(go, 80);
}

function drawKnobs(knobs) {
  const box = $("knobs");
  box.replaceChildren();
  for (const k of knobs) {
    const row = document.createElement("div");
    row.className = "knob";
    const label = document.createElement("label");
    label.textContent = k.name;
    label.htmlFor = "knob-" + k.name;
    const value = document.createElement("span");
    value.className = "value";
    value.dataset.value = k.name;
    const source = document.createElement("span");
    source.className = "source";
    source.dataset.source = k.name;
    const slider = document.createElement("input");
    slider.type = "range"; slider.min = "0"; slider.max = "1000"; slider.step = "1";
    slider.id = "knob-" + k.name;
    slider.dataset.knob = k.name;
    slider.value = String(Math.round(k.position * 1000));
    slider.addEventListener("input", () => {
      touched[k.name] = Date.now();
      const v = toValue(k, slider.value / 1000);
      value.textContent = fmt(v) + unit(k);
      sendKnob(k.name, v, false);
    });
    slider.addEventListener("change", () => {
      touched[k.name] = Date.now();
      sendKnob(k.name, toValue(k, slider.value / 1000), true);
    });
    const pot = document.createElement("button");
    pot.type = "button"; pot.textContent = "to pot"; pot.title = "hand this knob back to its pot";
    pot.addEventListener("click", () => post("/api/knob", {name: k.name, pot: true}));
    row.append(label, value, slider, source, pot);
    box.append(row);
  }
}

function showKnobs(knobs) {
  const key = knobs.map((k) => k.name).join(",");
  if (key !== knobKey) { drawKnobs(knobs); knobKey = key; }
  for (const k of knobs) {
    const slider = document.querySelector(`input[data-knob="${k.name}"]`);
    const recent = Date.now() - (touched[k.name] || 0) < 1500;
    if (slider && !recent) slider.value = String(Math.round(k.position * 1000));
    if (!recent) document.querySelector(`[data-value="${k.name}"]`).textContent = fmt(k.value) + unit(k);
    const src = document.querySelector(`[data-source="${k.name}"]`);
    src.textContent = {web: "set here", pot: "pot", fixed: "no pot", automation: "automation"}[k.source] || k.source;
    src.className = "source " + k.source;
  }
}

// --- meters ------------------------------------------------------------------------------------
const held = {in: -120, out: -120};
function meter(which, peakDb, rmsDb) {
  // peak hold with a gentle fall between polls, so a short peak is seen
  held[which] = Math.max(peakDb, held[which] - 6 * pollMs / 250);
  const pct = Math.min(100, Math.max(0, (held[which] + 60) / 60 * 100));  // -60..0 dBFS
  const fill = $("meter-" + which);
  fill.style.width = (100 - pct).toFixed(1) + "%";  // the dark part right of the level
  fill.dataset.db = String(peakDb);
  $(which + "-db").textContent = peakDb <= -120 ? "silence" : `${peakDb.toFixed(1)} dB`;
}

// --- status --------------------------------------------------------------------------------------
function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
function showStatus(d, box) {
  const faults = Object.entries(d.engine_faults || {}).filter(([k]) => k !== "hops").map(([k, v]) => `${k} ${v}`).join(", ");
  const rows = [
    ["audio load", `median ${pct(d.load_median)}, p99 ${pct(d.load_p99)}, max ${pct(d.load_max)} of a period` +
                   ` (last ${(d.load_periods * d.period / d.rate).toFixed(1)} s)`],
    ["daemon CPU", d.daemon_cpu === null ? "–" : pct(d.daemon_cpu) + " of a core"],
    ["box CPU", `${pct(box.cpu)}${box.temp_c ? `, ${box.temp_c} °C` : ""}`],
    ["xruns", `${d.xruns} (${d.xrun_kinds.capture_overrun} capture, ${d.xrun_kinds.playback_underrun} playback, ${d.xrun_kinds.latency_drift} drift)`],
    ["faults", faults || "none"],
    ["sound card", d.device_down ? "LOST (retrying)" : `${d.rate} Hz, period ${d.period} x ${d.periods_buffered}, round trip ${d.latency_ms} ms`],
    ["last load", d.last_load ? `${d.last_load.ok ? "OK" : "REFUSED"}: ${d.last_load.message}` : "–"],
    ["uptime", `${Math.round(d.uptime_s)} s, ${d.swaps} hot swaps`],
  ];
  if (d.knobs_in_fault && d.knobs_in_fault.length) rows.push(["knob ADC", "holding last value: " + d.knobs_in_fault.join(", ")]);
  const dl = $("status");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
}

function showBundles(list, playing) {
  const ul = $("bundles");
  const key = JSON.stringify([list.map((b) => [b.name, b.mtime]), playing]);
  if (ul.dataset.key === key) return;
  ul.dataset.key = key;
  ul.replaceChildren();
  for (const b of list) {
    const li = document.createElement("li");
    li.dataset.name = b.name;
    if (playing === b.path) li.classList.add("playing");
    const text = document.createElement("span");
    const name = document.createElement("span"); name.className = "name"; name.textContent = b.name;
    const info = document.createElement("span"); info.className = "info";
    info.textContent = `${b.effect} · ${(b.bytes / 1048576).toFixed(1)} MiB` + (b.knobs.length ? " · " + b.knobs.join(", ") : "");
    text.append(name, info);
    const play = document.createElement("button");
    play.type = "button"; play.textContent = "Play";
    play.addEventListener("click", async () => {
      const r = await post("/api/bundle", {name: b.name});
      $("upload-message").className = "message" + (r.ok ? " ok" : "");
      $("upload-message").textContent = r.ok ? `loading ${b.name}: it plays once it passes its self-check` : (r.error || "refused");
    });
    li.append(text, play);
    ul.append(li);
  }
}

function show(p) {
  panel = p;
  uploadMax = p.upload_max_bytes;
  showCapture(p.capture);
  const d = p.daemon;
  if (!d) {
    const capturing = p.capture && CAPTURE_BUSY.includes(p.capture.state);
    $("daemon-message").textContent = capturing ? "the pedal daemon is stopped while the capture uses the sound card"
                                                : (p.daemon_error || "the pedal daemon does not answer");
    $("state").textContent = "no daemon"; $("state").className = "badge fault";
    showBundles(p.bundles, null);
    return;
  }
  $("daemon-message").textContent = "";
  $("effect").textContent = d.effect;
  const state = d.device_down ? "sound card lost" : d.in_fault ? "fault: dry" : d.bypassed ? "bypass" : "on";
  $("state").textContent = state;
  $("state").className = "badge " + (d.led === "fault" ? "fault" : d.bypassed ? "bypass" : "");
  $("bypass").classList.toggle("on", d.bypassed);
  $("bypass").textContent = d.bypassed ? "Bypassed" : "Bypass";
  meter("in", d.levels.in_peak_db, d.levels.in_rms_db);
  meter("out", d.levels.out_peak_db, d.levels.out_rms_db);
  showKnobs(d.knob_specs);
  showStatus(d, p.box);
  showBundles(p.bundles, d.bundle_source);
  const log = $("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = d.log.join("\n");
  if (atEnd) log.scrollTop = log.scrollHeight;  // follow the newest lines unless the reader scrolled up
}

async function poll() {
  if (document.visibilityState === "visible") {
    try {
      const r = await fetch("/api/panel", {credentials: "same-origin"});
      if (r.status === 401) { location.href = "/login"; return; }
      show(await r.json());
    } catch (e) {
      $("daemon-message").textContent = "the box does not answer (" + e + ")";
    }
  }
  setTimeout(poll, pollMs);
}

$("bypass").addEventListener("click", async () => {
  const r = await post("/api/bypass", {toggle: true});
  if (!r.ok) $("daemon-message").textContent = r.error || "bypass refused";
});

$("upload-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const msg = $("upload-message");
  const file = $("upload-file").files[0];
  msg.className = "message";
  if (!file) { msg.textContent = "choose a .pedal file first"; return; }
  if (file.size > uploadMax) {
    msg.textContent = `${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; the limit is ${(uploadMax / 1048576).toFixed(0)} MiB`;
    return;
  }
  msg.textContent = `uploading and checking ${file.name} …`;
  $("upload-button").disabled = true;
  try {
    const r = await post("/api/upload?name=" + encodeURIComponent(file.name), file, {"Content-Type": "application/octet-stream"});
    msg.className = "message" + (r.ok ? " ok" : "");
    msg.textContent = r.ok ? `${r.name} accepted (${r.message}); ${r.load && r.load.ok ? "loading it now" : "not loaded: " + ((r.load && r.load.error) || "?")}`
                           : (r.error || "refused");
    msg.dataset.ok = String(!!r.ok);
  } finally {
    $("upload-button").disabled = false;
  }
});

// --- capture: plan, start, follow, go/stop, resume, download ------------------------------------------
const CAPTURE_BUSY = ["starting", "stopping the daemon", "running", "waiting", "stopping"];
let captureState = "";

function captureRequest() {
  return {
    name: $("capture-name").value.trim(),
    knobs: $("capture-knobs").value.split("\n").map((s) => s.trim()).filter((s) => s),
    settings: parseInt($("capture-settings").value, 10) || 0,
    seconds: parseFloat($("capture-seconds").value) || 60,
    level_db: parseFloat($("capture-level").value),
  };
}

function planTable(labels, plan, captured) {
  const table = document.createElement("table");
  const head = document.createElement("tr");
  for (const h of ["#"].concat(labels)) {
    const th = document.createElement("th"); th.textContent = h; head.append(th);
  }
  table.append(head);
  plan.forEach((setting, i) => {
    const tr = document.createElement("tr");
    tr.dataset.setting = String(i + 1);
    const n = document.createElement("td");
    n.textContent = String(i + 1) + (captured && captured[i] ? " ✓" : "");
    if (captured && captured[i]) n.className = "done";
    tr.append(n);
    for (const v of setting) { const td = document.createElement("td"); td.textContent = v; tr.append(td); }
    table.append(tr);
  });
  return table;
}

function duration(s) { return s >= 90 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`; }

function formMessage(text, ok) {
  $("capture-unavailable").className = "message" + (ok ? " ok" : "");
  $("capture-unavailable").textContent = text;
}

$("capture-preview").addEventListener("click", async () => {
  const r = await post("/api/capture/plan", captureRequest());
  const box = $("capture-plan");
  box.replaceChildren();
  if (!r.ok) { formMessage(r.error || "refused"); return; }
  formMessage("");
  const p = document.createElement("p");
  p.id = "capture-plan-summary";
  p.dataset.settings = String(r.settings);
  p.textContent = `${r.settings} settings of ${r.knobs.length} knob${r.knobs.length > 1 ? "s" : ""}, ` +
    `${r.seconds_per_setting} s of signal each: about ${duration(r.playing_s)} of playing, plus the time to set ` +
    `the knobs (${r.knobs_moved_per_pass} move per setting on average); about ` +
    (r.disk_bytes < 1e9 ? `${Math.round(r.disk_bytes / 1e6)} MB` : `${(r.disk_bytes / 1e9).toFixed(1)} GB`) + " on the card";
  box.append(p, planTable(r.knobs.map((k) => k.label), r.plan));
});

async function startCapture(body) {
  const r = await post("/api/capture/start", body);
  if (!r.ok) { formMessage(r.error || "refused"); return; }
  formMessage(r.resumed ? `carrying on ${r.name}` : `capture ${r.name} starting`, true);
  showCapture(r);
}

$("capture-form").addEventListener("submit", (ev) => { ev.preventDefault(); startCapture(captureRequest()); });
$("capture-go").addEventListener("click", async () => {
  $("capture-go").disabled = true;
  const r = await post("/api/capture/go", {});
  if (!r.ok) $("capture-message").textContent = r.error || "refused";
});
$("capture-stop").addEventListener("click", async () => {
  const r = await post("/api/capture/stop", {});
  if (!r.ok) $("capture-message").textContent = r.error || "refused";
});

function attemptText(a) {
  const what = a.pass === 0 ? "reference" : `setting ${a.pass}`;
  const figures = [];
  if (a.latency_samples !== null && a.latency_samples !== undefined) figures.push(`clicks at ${a.latency_samples} samples`);
  if (a.gain_db !== undefined && a.gain_db !== null) figures.push(`gain ${a.gain_db} dB`);
  if (a.peak_dbfs !== undefined && a.peak_dbfs !== null) figures.push(`peak ${a.peak_dbfs} dBFS`);
  if (a.noise_dbfs !== undefined && a.noise_dbfs !== null) figures.push(`noise ${a.noise_dbfs} dBFS`);
  if (a.clipped) figures.push(`${a.clipped} clipped`);
  if (a.xruns) figures.push(`${a.xruns} xruns`);
  const verdict = a.ok ? "good" : "refused: " + (a.problems || []).join("; ");
  return `${what}, try ${a.try || 1}: ${verdict}` + (figures.length ? ` (${figures.join(", ")})` : "");
}

function showCapture(c) {
  const live = $("capture-live");
  if (!c || c.state === "idle") { live.hidden = true; return; }
  live.hidden = false;
  $("capture-title").textContent = c.name;
  $("capture-state").textContent = c.state;
  $("capture-state").dataset.state = c.state;
  $("capture-state").className = "badge " + ({failed: "fault", waiting: "bypass", stopped: "bypass"}[c.state] || "");
  const pr = c.progress;
  if (pr) {
    const bar = $("capture-progress");
    bar.max = Math.max(1, pr.settings); bar.value = pr.done;
    bar.dataset.done = String(pr.done); bar.dataset.total = String(pr.settings);
    const ref = pr.reference
      ? `latency ${pr.latency_samples} samples (${(1000 * pr.latency_samples / pr.sample_rate).toFixed(2)} ms), gain ${pr.reference.gain_db} dB`
      : "the reference is not measured yet";
    $("capture-count").textContent = `${pr.done} of ${pr.settings} settings captured` +
      (pr.next ? ` · next: setting ${pr.next} of ${pr.settings}` : "") + (pr.redone ? ` · ${pr.redone} redone` : "") +
      ` · ${ref} · ${pr.seconds_per_setting} s each`;
    const ol = $("capture-attempts");
    const key = String(pr.attempts_total);
    if (ol.dataset.key !== key) {
      ol.dataset.key = key;
      ol.replaceChildren();
      for (const a of pr.attempts.slice().reverse()) {
        const li = document.createElement("li");
        li.className = a.ok ? "good" : "bad";
        li.dataset.pass = String(a.pass);
        li.textContent = attemptText(a);
        ol.append(li);
      }
    }
  }
  const waiting = c.state === "waiting";
  $("capture-prompt").textContent = waiting ? c.prompt
    : c.state === "running" ? "playing the signal: leave the knobs and cables alone" : "";
  $("capture-go").disabled = !waiting;
  $("capture-stop").disabled = !CAPTURE_BUSY.includes(c.state) || c.state === "stopping";
  $("capture-message").className = "message" + (c.state === "done" ? " ok" : "");
  $("capture-message").textContent = c.message;
  $("capture-daemon").textContent = c.daemon ? "pedal daemon: " + c.daemon : "";
  $("capture-log").textContent = c.log.join("\n");
  if (c.state !== captureState) {
    if (!CAPTURE_BUSY.includes(c.state) || !captureState) loadCaptures();
    captureState = c.state;
  }
}

async function loadCaptures() {
  let d;
  try {
    const r = await fetch("/api/captures", {credentials: "same-origin"});
    if (r.status === 401) { location.href = "/login"; return; }
    d = await r.json();
  } catch (e) { return; }
  if (!d.available) formMessage(d.why);
  else if (!d.daemon_control) formMessage("This web server may not stop the daemon: stop it on the box first (sudo systemctl stop pedal).");
  $("capture-start").disabled = !d.available;
  const ul = $("captures");
  ul.replaceChildren();
  for (const c of d.captures) {
    const li = document.createElement("li");
    li.dataset.capture = c.name;
    const text = document.createElement("span");
    const name = document.createElement("span"); name.className = "name"; name.textContent = c.name;
    const info = document.createElement("span"); info.className = "info";
    info.textContent = `${c.done} of ${c.settings} settings · ${c.knobs.join(", ")} · ${(c.bytes / 1048576).toFixed(1)} MiB`;
    text.append(name, info);
    li.append(text);
    if (c.done < c.settings) {
      const resume = document.createElement("button");
      resume.type = "button"; resume.textContent = "Resume"; resume.className = "resume";
      resume.addEventListener("click", () => startCapture({name: c.name}));
      li.append(resume);
    }
    const link = document.createElement("a");
    link.href = "/api/capture/download?name=" + encodeURIComponent(c.name);
    link.textContent = "Download (.tar)"; link.className = "download";
    link.setAttribute("download", c.name + ".tar");
    li.append(link);
    ul.append(li);
  }
}

$("logout").addEventListener("click", async () => {
  await post("/logout", {});
  location.href = "/login";
});

loadCaptures();
poll();
