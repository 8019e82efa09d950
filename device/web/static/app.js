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
  $("capture").textContent = p.capture
    ? "Capturing your own pedal is not on this page yet: run python -m device capture on the box over ssh (docs/capture.md)."
    : "Capturing your own pedal is not on this box yet (this version has no python -m device capture).";
  const d = p.daemon;
  if (!d) {
    $("daemon-message").textContent = p.daemon_error || "the pedal daemon does not answer";
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

$("logout").addEventListener("click", async () => {
  await post("/logout", {});
  location.href = "/login";
});

poll();
