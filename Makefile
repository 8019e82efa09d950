# SignalTrain-Pi. Two commands matter on a fresh machine:  make demo  and  make test.
#
# Two environments, on purpose: the host (training + conversion: torch, onnx2tf, tensorflow) and
# the device (what a Raspberry Pi runs: ai-edge-litert, numpy 2, pyalsaaudio, gpiozero). Running
# the device code and tests in the device environment proves it never needs the training stack.

SHELL := /bin/bash
PY ?= python3
HOST := .venv-host/bin/python
DEV := .venv-device/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PYTHONPATH := $(CURDIR)

EFFECT ?= comp4
MINUTES ?= 5
DATA := data/$(EFFECT)-demo
RUN := runs/$(EFFECT)
BUNDLE := build/$(EFFECT)
DEMO := out/demo
TESTKIT := build/testkit

.PHONY: demo pedal pedal-steps test test-host test-device test-pi image test-image envs system-deps data train evaluate convert selftest clean distclean \
        datasets-deps data-full bench bench-stream bench-context bench-loader bench-train bench-soak bench-effects bench-demo-spread bench-web

# ---------------------------------------------------------------------------------------------------
# set-up (idempotent: stamps are rewritten only when a requirements file changes)
system-deps: .stamps/system
.stamps/system:
	@mkdir -p .stamps
	@if command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    alsa-utils libasound2-dev libasound2-plugins jackd2 gcc python3-dev chromium chromium-driver >/dev/null; \
	else echo "no apt-get: install alsa-lib headers (libasound2-dev), alsa-utils, jackd2, gcc, chromium and chromedriver yourself"; fi
	@touch $@

.venv-host/.stamp: requirements/host.txt
	$(PY) -m venv .venv-host
	.venv-host/bin/pip install -q --upgrade pip
	.venv-host/bin/pip install -q -r requirements/host.txt
	# tinysoundfont's pyaudio dependency is only for live playback and does not build: skip it
	.venv-host/bin/pip install -q --no-deps tinysoundfont
	@touch $@

.venv-device/.stamp: requirements/device.txt requirements/device-test.txt .stamps/system
	$(PY) -m venv .venv-device
	.venv-device/bin/pip install -q --upgrade pip
	.venv-device/bin/pip install -q -r requirements/device.txt -r requirements/device-test.txt
	@touch $@

envs: .venv-host/.stamp .venv-device/.stamp

# ---------------------------------------------------------------------------------------------------
# the main job: data -> train -> evaluate -> convert -> device self-test -> device render -> report
demo: envs
	@mkdir -p $(DEMO); : > $(DEMO)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory data && echo "data $$(( $$(date +%s) - t ))" >> $(DEMO)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory train && echo "train $$(( $$(date +%s) - t ))" >> $(DEMO)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory evaluate && echo "evaluate $$(( $$(date +%s) - t ))" >> $(DEMO)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory convert && echo "convert $$(( $$(date +%s) - t ))" >> $(DEMO)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory selftest && echo "selftest $$(( $$(date +%s) - t ))" >> $(DEMO)/timings.txt
	@t=$$(date +%s); $(HOST) -m training.demo prepare --data $(DATA) --out $(DEMO) && \
	  $(DEV) -m device render --bundle $(BUNDLE).pedal --input $(DEMO)/input.wav --knobs $(DEMO)/knobs.csv --out $(DEMO)/model.wav && \
	  echo "render $$(( $$(date +%s) - t ))" >> $(DEMO)/timings.txt
	@$(HOST) -m training.demo report --out $(DEMO) --run $(RUN) --bundle $(BUNDLE) --timings $(DEMO)/timings.txt
	@echo
	@echo "demo done. Listen and look:"
	@echo "  $(DEMO)/input.wav  $(DEMO)/target.wav  $(DEMO)/model.wav   (held-out audio, knob sweep in $(DEMO)/knobs.csv)"
	@echo "  $(DEMO)/demo.png   $(DEMO)/report.md   $(RUN)/loss.png  $(RUN)/eval_settings.png  $(RUN)/level_curves.png"
	@echo "  bundle for the box: $(BUNDLE).pedal   (python -m device inspect $(BUNDLE).pedal)"

# your own pedal, from a folder of recordings (knobs.csv + knobs.toml, docs/datasets.md) to a verified bundle:
#   make pedal DATA=recordings/my_fuzz [NAME=my_fuzz] [MINUTES=5]
# checks the recordings (python -m training.recordings), trains, evaluates, converts, runs the device
# self-test, renders held-out recorded pairs through the device engine and writes a short report:
# build/NAME.pedal, runs/NAME/, out/NAME/report.md (NAME: the folder's name unless given)
NAME ?= $(notdir $(abspath $(DATA)))
pedal: envs
	@[ "$(origin DATA)" = "command line" ] || { echo "usage: make pedal DATA=DIR [NAME=name] [MINUTES=$(MINUTES)]" >&2; exit 2; }
	$(HOST) -m training.recordings $(DATA)
	@$(MAKE) --no-print-directory pedal-steps EFFECT=$(NAME)

# (the steps of `pedal`, with EFFECT set to NAME so RUN and BUNDLE name the pedal)
pedal-steps:
	@mkdir -p out/$(EFFECT); : > out/$(EFFECT)/timings.txt
	@t=$$(date +%s); $(HOST) -m training.train --data $(DATA) --out $(RUN) --minutes $(MINUTES) && echo "train $$(( $$(date +%s) - t ))" >> out/$(EFFECT)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory evaluate && echo "evaluate $$(( $$(date +%s) - t ))" >> out/$(EFFECT)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory convert && echo "convert $$(( $$(date +%s) - t ))" >> out/$(EFFECT)/timings.txt
	@t=$$(date +%s); $(MAKE) --no-print-directory selftest && echo "selftest $$(( $$(date +%s) - t ))" >> out/$(EFFECT)/timings.txt
	@t=$$(date +%s); $(HOST) -m training.demo prepare --data $(DATA) --out out/$(EFFECT) && \
	  $(DEV) -m device render --bundle $(BUNDLE).pedal --input out/$(EFFECT)/input.wav --knobs out/$(EFFECT)/knobs.csv --out out/$(EFFECT)/model.wav && \
	  echo "render $$(( $$(date +%s) - t ))" >> out/$(EFFECT)/timings.txt
	@$(HOST) -m training.demo report --out out/$(EFFECT) --run $(RUN) --bundle $(BUNDLE) --timings out/$(EFFECT)/timings.txt
	@echo
	@echo "pedal done: $(BUNDLE).pedal   (python -m device inspect $(BUNDLE).pedal; copy it to the box)"
	@echo "  report out/$(EFFECT)/report.md; held-out recorded audio: out/$(EFFECT)/{input,target,model}.wav"

data: $(DATA)/dataset.json
$(DATA)/dataset.json: | .venv-host/.stamp
	$(HOST) -m training.data --effect $(EFFECT) --out $(DATA)

train: .venv-host/.stamp $(DATA)/dataset.json
	$(HOST) -m training.train --data $(DATA) --out $(RUN) --minutes $(MINUTES)

evaluate: .venv-host/.stamp
	$(HOST) -m training.evaluate --checkpoint $(RUN)/best.pt --data $(DATA) --out $(RUN)

convert: .venv-host/.stamp
	$(HOST) -m convert --checkpoint $(RUN)/best.pt --data $(DATA) --out $(BUNDLE) --report $(RUN)/eval.json

selftest: .venv-device/.stamp
	$(DEV) -m device selftest --bundle $(BUNDLE).pedal

# ---------------------------------------------------------------------------------------------------
# tests: host side (torch, onnx2tf) first, which also builds a small bundle; then the device side,
# in the device environment, against that bundle and real alsa-lib.
test: envs
	$(MAKE) --no-print-directory test-host
	$(MAKE) --no-print-directory test-device

test-host: .venv-host/.stamp $(TESTKIT)/tiny.pedal
	$(HOST) -m pytest -q tests/host

test-device: .venv-device/.stamp $(TESTKIT)/tiny.pedal
	PEDAL_TEST_BUNDLE=$(TESTKIT)/tiny.pedal $(DEV) -m pytest -q tests/device

# the device side on the box's own OS, emulated: a Debian bookworm arm64 root (Raspberry Pi OS's
# base, Python 3.11.2) under qemu-user with the Pi 4's CPU (PI_CPU=cortex-a76 for a Pi 5);
# provision.sh run twice there (the second run must change nothing), then the device tests and the
# self-test of every precision. Needs root and apt; the root is cached in build/pi-root. Too slow
# for CI (README: Tests and benchmarks), so not part of `make test`.
test-pi: $(TESTKIT)/tiny.pedal
	$(SUDO) PEDAL_TEST_BUNDLE=$(TESTKIT)/tiny.pedal tests/pi/test-pi.sh

# the box's systemd units started by a live systemd: a Debian bookworm root (this machine's
# architecture) provisioned with provision.sh and booted with systemd-nspawn; pedal.service and
# pedal-web.service checked running (user, SCHED_FIFO, locked memory, status socket, HTTP), the live
# `systemd-analyze security` figures, the self-test unit, no failed units. Sound card: JACK's dummy
# backend. Needs root, debootstrap and systemd-container (apt); the root is cached in build/sd-root.
# Not part of `make test`.
.PHONY: test-systemd
test-systemd: $(TESTKIT)/tiny.pedal
	$(SUDO) PEDAL_TEST_BUNDLE=$(TESTKIT)/tiny.pedal tests/pi/test-systemd.sh

# a pedal SD card image from a stock Raspberry Pi OS Lite image (bookworm, 64-bit; .img or .img.xz),
# written as a file: no root, no mounts, nothing downloaded (sfdisk reads the partition table, mtools
# writes the boot partition, debugfs the root). The box finishes its set-up on the first boot: it runs
# provision.sh there (apt and PyPI: the box needs the network), disables that step and reboots.
# BUNDLE: .pedal files to put on it, the first one played (firmware_cfg/image/README.md).
#   make image BASE=2024-11-19-raspios-bookworm-arm64-lite.img.xz [OUT=build/pedal.img] [BUNDLE=build/comp4.pedal]
IMAGE_OUT := $(if $(filter command line,$(origin OUT)),$(OUT),build/pedal.img)
image:
	@[ -n "$(BASE)" ] || { echo "usage: make image BASE=RASPIOS-lite.img[.xz] [OUT=build/pedal.img] [BUNDLE=\"a.pedal b.pedal\"]" >&2; exit 2; }
	firmware_cfg/image/make-image.sh --base "$(BASE)" --out "$(IMAGE_OUT)" $(if $(filter command line,$(origin BUNDLE)),$(foreach b,$(BUNDLE),--bundle "$(b)"))

# make image on a stand-in Raspberry Pi OS image (same layout, built here without mounting), checked
# file by file with debugfs and mtools; as root with build/pi-root cached (make test-pi), also the
# first boot in the emulated arm64 root. Needs fdisk, mtools, dosfstools (apt). Not in `make test`.
test-image:
	tests/pi/test-image.sh

# a small trained-and-converted bundle the device tests run against (about a minute to make)
$(TESTKIT)/tiny.pedal: training/model.py training/train.py training/data.py training/demo.py convert/pipeline.py tests/make_testkit.py | .venv-host/.stamp
	$(HOST) -m tests.make_testkit --out $(TESTKIT)

# ---------------------------------------------------------------------------------------------------
# datasets beyond the demo tier (docs/datasets.md)
datasets-deps:
	$(SUDO) apt-get install -y --no-install-recommends fluid-soundfont-gm avldrums.lv2-soundfont

data-full: .venv-host/.stamp
	$(HOST) -m training.data --effect $(EFFECT) --tier full --progress --out data/$(EFFECT)-full

# ---------------------------------------------------------------------------------------------------
# benchmarks: ratios within one run, never pass/fail (these machines are shared and noisy)
bench: bench-stream bench-context bench-loader

bench-stream: envs $(TESTKIT)/tiny.pedal
	$(HOST) -m convert.bench_stream

bench-context: .venv-host/.stamp
	$(HOST) -m training.bench_context

bench-loader: .venv-host/.stamp $(DATA)/dataset.json
	$(HOST) -m training.bench_loader --data $(DATA)

# the daemon for SOAK_MINUTES at 128- and 64-frame periods on the JACK dummy, the other core busy,
# beside a do-nothing pass-through, the two alternating in SOAK_ROUNDS rounds (about 4 x SOAK_MINUTES
# + a minute)
SOAK_MINUTES ?= 10
SOAK_ROUNDS ?= 3
SOAK_BUNDLE ?= $(TESTKIT)/tiny.pedal
bench-soak: .venv-device/.stamp $(TESTKIT)/tiny.pedal
	@mkdir -p out/bench
	$(DEV) -m device.bench_soak --minutes $(SOAK_MINUTES) --rounds $(SOAK_ROUNDS) --period 128 --bundle $(SOAK_BUNDLE) --out out/bench/soak-128.json
	$(DEV) -m device.bench_soak --minutes $(SOAK_MINUTES) --rounds $(SOAK_ROUNDS) --period 64 --bundle $(SOAK_BUNDLE) --out out/bench/soak-64.json

# the engine's work per period (64, 128, 256 frames) against the model's bare invokes, interleaved
# in one run, this thread's CPU time (docs/realtime.md; a few seconds)
.PHONY: bench-step
bench-step: .venv-device/.stamp $(TESTKIT)/tiny.pedal
	@mkdir -p out/bench
	$(DEV) -m device.bench_step --bundle $(SOAK_BUNDLE) --periods 64 128 256 | tee out/bench/step.json

# the daemon's per-period work with the web page open and polling (headless Chromium), with a plain
# HTTP poller, and with no client, in one run of one daemon on the JACK dummy (about 3.5 minutes)
WEB_BLOCK_S ?= 20
bench-web: .venv-device/.stamp .stamps/system $(TESTKIT)/tiny.pedal
	@mkdir -p out/bench
	$(DEV) -m device.bench_web --block-s $(WEB_BLOCK_S) --rounds 3 --out out/bench/web.json

# every catalogue effect trained at one fixed CPU budget (BENCH_MINUTES each, 2 threads) and
# evaluated on held-out sources x held-out knobs; the knob LSTM and FiLM TCN beside it for drive and
# echo; BENCH_SEEDS="0 1 2" for the median and range over seeds (docs/effects.md)
BENCH_MINUTES ?= 3
BENCH_SEEDS ?= 0
bench-effects: .venv-host/.stamp
	OMP_WAIT_POLICY=PASSIVE $(HOST) -m training.bench_effects --minutes $(BENCH_MINUTES) --seeds $(BENCH_SEEDS) --baselines lstm tcn --baseline-effects drive amp echo

# the demo's spread: comp4, 3 seeds x 5 minutes (CPU clock, 2 threads), each seed on its own freshly
# drawn dataset as a fresh clone's `make demo` would be (README, "What the demo reaches")
bench-demo-spread: .venv-host/.stamp
	OMP_WAIT_POLICY=PASSIVE $(HOST) -m training.bench_effects --effects comp4 --seeds 0 1 2 --minutes 5 --fresh-data --out out/bench-demo

# held-out ESR against the number of captured knob settings (8, 16, 32, 64) for comp4 and drive, Latin
# hypercube against random draws: captures made offline through device/capture's signal, checks and
# writer, BENCH_MINUTES of training each (16 models: about an hour at 3 minutes; docs/capture.md).
# A smoke run: make bench-capture BENCH_MINUTES=0.2 CAPTURE_ARGS="--effects drive --settings 8 --seconds 20 --test-settings 4"
.PHONY: bench-capture
CAPTURE_ARGS ?=
bench-capture: .venv-host/.stamp
	$(HOST) -m training.bench_capture --minutes $(BENCH_MINUTES) $(CAPTURE_ARGS)

# attention vs no attention, same data and budget each (2 x MINUTES of training)
bench-train: .venv-host/.stamp $(DATA)/dataset.json
	OMP_WAIT_POLICY=PASSIVE $(HOST) -m training.bench_train --data $(DATA) --minutes $(MINUTES)

# Neural Amp Modeler's WaveNet (standard, lite) beside ours: MAC/s and time per audio second, PyTorch
# and TFLite. Its own environment (NAM 0.12.3: the last release with those presets; torch 2.13.0 CPU)
.PHONY: bench-nam
.venv-nam/.stamp:
	$(PY) -m venv .venv-nam
	.venv-nam/bin/pip install -q --upgrade pip
	.venv-nam/bin/pip install -q torch==2.13.0 neural-amp-modeler==0.12.3 onnx onnxscript
	@touch $@
bench-nam: .venv-nam/.stamp .venv-host/.stamp .venv-device/.stamp
	.venv-nam/bin/python -m training.bench_nam

# ---------------------------------------------------------------------------------------------------
clean:
	rm -rf build out runs .stamps

distclean: clean
	rm -rf .venv-host .venv-device data
