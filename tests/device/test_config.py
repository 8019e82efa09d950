"""The daemon's config file: a pedal.toml with a mistake is refused with a line that names the
file, the table.key and the value as written, and a good one loads, round-trips and matches the
shipped examples. Runs in the system Python: device/config.py needs only the standard library."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from device.config import (DEFAULT_TOML, PRECISIONS, ConfigError, PedalConfig, PotConfig,
                           check_knob_names, load_config, loads_config)

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware_cfg"
COMPRESSOR_KNOBS = ["threshold_db", "ratio", "attack_ms", "release_ms"]
BUNDLE_LINE = '[model]\nbundle = "/var/lib/pedal/bundles/comp4.pedal"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pedal.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    """Load text as a pedal.toml that must be refused; return its problem lines."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = err.value.problems
    assert str(err.value) == "\n".join(lines)
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return [line[len(f"{path}: "):] for line in lines]


def only_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# --- a good file ---------------------------------------------------------------------------------

def test_a_file_with_only_the_bundle_gets_every_documented_default(tmp_path):
    cfg = load_config(write(tmp_path, BUNDLE_LINE))
    a, m, k = cfg.audio, cfg.model, cfg.knobs
    assert (a.capture_device, a.playback_device, a.sample_rate, a.period_frames, a.periods, a.format) == \
        ("hw:0", "hw:0", 48000, 128, 2, "S32_LE")
    assert (a.capture_channels, a.playback_channels, a.input_channel, a.output_channels, a.dry_crossfade_ms) == \
        (2, 2, 0, [0, 1], 10.0)
    assert (m.bundle, m.bundles_dir, m.precision, m.threads) == (Path("/var/lib/pedal/bundles/comp4.pedal"), None, "", 1)
    assert (k.source, k.poll_hz, k.file, k.midi_port, k.i2c_bus, k.i2c_address) == ("none", 200, None, "", 1, 0x48)
    assert (k.smoothing_ms, k.deadband, k.pots) == (30.0, 0.004, [])
    assert (cfg.footswitch.enabled, cfg.footswitch.gpio, cfg.footswitch.long_press_s) == (False, 17, 1.0)
    assert (cfg.led.enabled, cfg.led.gpio) == (False, 18)
    assert (cfg.realtime.priority, cfg.realtime.lock_memory, cfg.realtime.cpu) == (70, True, -1)
    assert (cfg.status.socket, cfg.status.log_level) == (Path("/run/pedal/status.sock"), "info")
    assert cfg.watchdog.enabled is True
    assert cfg == PedalConfig()
    assert cfg.source == str(tmp_path / "pedal.toml")
    assert cfg.latency_ms == pytest.approx(1000 * 128 * 2 / 48000)


def test_every_key_can_be_set(tmp_path):
    cfg = load_config(write(tmp_path, """
        [audio]
        capture_device = "plughw:CARD=Device,DEV=0"
        playback_device = "pedal"
        sample_rate = 44100
        period_frames = 64
        periods = 4
        format = "FLOAT_LE"
        capture_channels = 4
        playback_channels = 6
        input_channel = 3
        output_channels = [4, 5]
        dry_crossfade_ms = 25

        [model]
        bundle = "bundles/drive.pedal"
        bundles_dir = "bundles"
        precision = "dynamic_int8"
        threads = 2

        [knobs]
        source = "ads1115"
        poll_hz = 100
        midi_port = "nanoKONTROL2"
        i2c_bus = 3
        i2c_address = 0x4B
        smoothing_ms = 0
        deadband = 0.01

        [[knobs.pot]]
        knob = "gain_db"
        channel = 3
        raw_min = 0.02
        raw_max = 0.97
        reversed = true

        [footswitch]
        enabled = true
        gpio = 22
        long_press_s = 2.5

        [led]
        enabled = true
        gpio = 27

        [realtime]
        priority = 0
        lock_memory = false
        cpu = 3

        [status]
        socket = ""
        log_level = "debug"

        [watchdog]
        enabled = false
        """))
    assert cfg.audio.sample_rate == 44100 and cfg.audio.output_channels == [4, 5]
    assert cfg.audio.dry_crossfade_ms == 25.0 and isinstance(cfg.audio.dry_crossfade_ms, float)
    assert cfg.model.bundle == tmp_path / "bundles/drive.pedal"  # relative to the file's folder
    assert cfg.model.bundles_dir == tmp_path / "bundles"
    assert cfg.model.precision == "dynamic_int8" and cfg.model.threads == 2
    assert cfg.knobs.i2c_address == 0x4B and cfg.knobs.smoothing_ms == 0.0
    assert cfg.knobs.pots == [PotConfig(knob="gain_db", channel=3, raw_min=0.02, raw_max=0.97, reversed=True)]
    assert cfg.footswitch.long_press_s == 2.5 and cfg.led.gpio == 27
    assert (cfg.realtime.priority, cfg.realtime.lock_memory, cfg.realtime.cpu) == (0, False, 3)
    assert cfg.status.socket is None and cfg.status.log_level == "debug"  # "" disables the socket
    assert cfg.watchdog.enabled is False
    assert loads_config(cfg.to_toml()) == cfg


def test_home_relative_and_parent_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "pedal.toml").write_text('[model]\nbundle = "~/b/comp4.pedal"\nbundles_dir = "../bundles"\n')
    cfg = load_config(sub / "pedal.toml")
    assert cfg.model.bundle == tmp_path / "home/b/comp4.pedal"
    assert cfg.model.bundles_dir == tmp_path / "bundles"  # normalized, no "cfg/.."


def test_to_toml_round_trips_a_config_with_pots_and_unusual_strings(tmp_path):
    cfg = load_config(write(tmp_path, """
        [audio]
        capture_device = "hw:CARD=\\"My \\\\ Card\\",DEV=0"
        [model]
        bundle = "/srv/bundles/comp 4.pedal"
        [knobs]
        source = "midi"
        midi_port = "Ünïcode port\\t1"
        i2c_address = 0x4A
        [[knobs.pot]]
        knob = "ratio"
        channel = 74
        raw_max = 0.5
        """))
    assert cfg.audio.capture_device == 'hw:CARD="My \\ Card",DEV=0'
    text = cfg.to_toml()
    assert "i2c_address = 0x4A" in text and "[[knobs.pot]]" in text
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert load_config(again) == cfg


def test_default_toml_loads_to_the_defaults():
    assert loads_config(DEFAULT_TOML) == PedalConfig()
    assert PedalConfig().to_toml() == DEFAULT_TOML


# --- the shipped examples -------------------------------------------------------------------------

def test_the_pi_config_drives_the_compressor_from_four_pots_on_an_mcp3008():
    cfg = load_config(FIRMWARE / "pedal.toml")
    assert cfg.knobs.source == "mcp3008"
    assert [(p.knob, p.channel) for p in cfg.knobs.pots] == list(zip(COMPRESSOR_KNOBS, range(4)))
    check_knob_names(cfg, COMPRESSOR_KNOBS)
    assert cfg.audio.capture_device == cfg.audio.playback_device == "pedal"  # the asound.conf PCM
    assert cfg.audio.format == "S32_LE"
    assert cfg.model.bundle == Path("/var/lib/pedal/bundles/comp4.pedal")
    assert cfg.model.bundles_dir == Path("/var/lib/pedal/bundles")
    assert cfg.footswitch.enabled and cfg.led.enabled
    assert cfg.latency_ms <= 10.0  # what a player stops feeling, before the model's own latency
    assert loads_config(cfg.to_toml()) == cfg


def test_the_development_config_needs_no_hardware():
    cfg = load_config(FIRMWARE / "pedal-dev.toml")
    assert cfg.knobs.source == "file" and cfg.knobs.file is not None
    assert not cfg.footswitch.enabled and not cfg.led.enabled
    assert cfg.realtime.priority == 0 and not cfg.realtime.lock_memory
    assert not cfg.audio.capture_device.startswith("hw:")
    check_knob_names(cfg, COMPRESSOR_KNOBS)
    assert cfg.model.bundle == REPO / "bundles" / "comp4.pedal"
    assert loads_config(cfg.to_toml()) == cfg


# --- every rule, with the key and value named --------------------------------------------------------

RANGE_CASES = [
    # (table, key, TOML value, what the message must say after "table.key = value: ")
    ("audio", "sample_rate", "96000", "must be one of 48000, 44100"),
    ("audio", "period_frames", "50", "must be 64..256"),
    ("audio", "period_frames", "512", "must be 64..256"),
    ("audio", "periods", "1", "must be 2..4"),
    ("audio", "periods", "5", "must be 2..4"),
    ("audio", "format", '"S24_3LE"', 'must be one of "S16_LE", "S24_LE", "S32_LE", "FLOAT_LE"'),
    ("audio", "format", '"s32_le"', "must be one of"),
    ("audio", "capture_channels", "0", "must be 1..32"),
    ("audio", "playback_channels", "33", "must be 1..32"),
    ("audio", "input_channel", "-1", "must be 0..31"),
    ("audio", "dry_crossfade_ms", "0.0", "must be more than 0.0 and at most 1000.0"),
    ("audio", "dry_crossfade_ms", "5000", "must be more than 0.0 and at most 1000.0"),
    ("audio", "capture_device", '""', "must not be empty"),
    ("audio", "playback_device", '"  "', "must not be empty"),
    ("model", "precision", '"fp16"', 'must be one of "", "float32", "float16", "dynamic_int8", "int8"'),
    ("model", "threads", "0", "must be 1..8"),
    ("model", "bundle", '""', "must not be empty"),
    ("knobs", "source", '"mcp3208"', 'must be one of "mcp3008", "ads1115", "midi", "file", "none"'),
    ("knobs", "poll_hz", "0", "must be 1..1000"),
    ("knobs", "poll_hz", "5000", "must be 1..1000"),
    ("knobs", "i2c_bus", "-1", "must be 0..31"),
    ("knobs", "smoothing_ms", "-1.0", "must be 0.0..1000.0"),
    ("knobs", "deadband", "0.5", "must be 0.0..0.1"),
    ("footswitch", "gpio", "28", "must be 0..27"),
    ("footswitch", "long_press_s", "0.1", "must be 0.2..10.0"),
    ("led", "gpio", "-1", "must be 0..27"),
    ("realtime", "priority", "100", "must be 0..99"),
    ("realtime", "priority", "-1", "must be 0..99"),
    ("realtime", "cpu", "-2", "must be -1..63"),
    ("status", "log_level", '"verbose"', 'must be one of "debug", "info", "warning", "error", "critical"'),
]


@pytest.mark.parametrize("table,key,value,message", RANGE_CASES, ids=[f"{t}.{k}={v}" for t, k, v, _ in RANGE_CASES])
def test_a_value_out_of_range_is_refused_naming_the_key_and_value(tmp_path, table, key, value, message):
    text = f"[{table}]\n{key} = {value}\n"
    if table != "model":
        text += BUNDLE_LINE
    elif key != "bundle":
        text += 'bundle = "/var/lib/pedal/bundles/comp4.pedal"\n'
    line = only_problem(tmp_path, text)
    assert line.startswith(f"{table}.{key} = {value.strip()}: {message}"), line


def test_the_example_message_reads_exactly_as_documented(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\nperiod_frames = 50\n") == "audio.period_frames = 50: must be 64..256"
    with pytest.raises(ConfigError, match=r"^.*/pedal\.toml: audio\.period_frames = 50: must be 64\.\.256$"):
        load_config(write(tmp_path, BUNDLE_LINE + "[audio]\nperiod_frames = 50\n"))


def test_a_near_miss_gets_a_did_you_mean(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + '[audio]\nformat = "S32LE"\n').endswith('(did you mean "S32_LE"?)')
    assert only_problem(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "ads1015"\n').endswith('(did you mean "ads1115"?)')


TYPE_CASES = [
    ("audio", "period_frames", "128.0", "must be an integer"),
    ("audio", "period_frames", '"128"', "must be an integer"),
    ("audio", "sample_rate", "true", "must be an integer"),  # TOML's true is no 1
    ("audio", "dry_crossfade_ms", '"10ms"', "must be a number"),
    ("audio", "dry_crossfade_ms", "nan", "must be a finite number"),
    ("audio", "dry_crossfade_ms", "inf", "must be a finite number"),
    ("audio", "capture_device", "0", "must be a string (in quotes)"),
    ("audio", "output_channels", "0", "must be a list of integers, e.g. [0, 1]"),
    ("audio", "output_channels", '["left"]', "must be a list of integers, e.g. [0, 1]"),
    ("audio", "output_channels", "[true]", "must be a list of integers, e.g. [0, 1]"),
    ("knobs", "file", "1", "must be a path (a string in quotes)"),
    ("footswitch", "enabled", '"yes"', "must be true or false"),
    ("footswitch", "enabled", "1", "must be true or false"),
    ("realtime", "lock_memory", "0", "must be true or false"),
    ("knobs", "i2c_address", '"0x48"', "must be an integer"),
]


@pytest.mark.parametrize("table,key,value,message", TYPE_CASES, ids=[f"{t}.{k}={v}" for t, k, v, _ in TYPE_CASES])
def test_a_value_of_the_wrong_type_is_refused(tmp_path, table, key, value, message):
    line = only_problem(tmp_path, BUNDLE_LINE + f"[{table}]\n{key} = {value}\n")
    assert line == f"{table}.{key} = {value}: {message}", line


def test_the_ads1115_address_is_named_in_hex(tmp_path):
    line = only_problem(tmp_path, BUNDLE_LINE + "[knobs]\ni2c_address = 0x50\n")
    assert line == "knobs.i2c_address = 0x50: must be one of 0x48, 0x49, 0x4A, 0x4B (the ADS1115's ADDR pin)"


def test_an_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\nperiod_frame = 128\n") == \
        'audio.period_frame = 128: unknown key (did you mean "period_frames"?)'
    assert only_problem(tmp_path, BUNDLE_LINE + "[led]\ncolour = \"red\"\n") == 'led.colour = "red": unknown key'
    assert only_problem(tmp_path, '[model]\nbundle = "/b.pedal"\nbundel_dir = "/b"\n') == \
        'model.bundel_dir = "/b": unknown key (did you mean "bundles_dir"?)'


def test_an_unknown_table_is_an_error_with_a_suggestion(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + "[knob]\nsource = \"none\"\n") == \
        "[knob]: unknown table (did you mean [knobs]?)"
    assert only_problem(tmp_path, BUNDLE_LINE + "[reverb]\nmix = 0.5\n") == "[reverb]: unknown table"


def test_a_table_written_as_a_value_is_refused(tmp_path):
    assert only_problem(tmp_path, 'audio = "hw:0"\n' + BUNDLE_LINE) == 'audio = "hw:0": must be a table written [audio]'


def test_the_bundle_is_required(tmp_path):
    assert only_problem(tmp_path, "[audio]\nperiods = 2\n") == \
        'model.bundle: missing (add a [model] table with the bundle to run, e.g. bundle = "/var/lib/pedal/bundles/comp4.pedal")'
    assert only_problem(tmp_path, "[model]\nthreads = 1\n") == \
        'model.bundle: missing (the bundle to run, e.g. bundle = "/var/lib/pedal/bundles/comp4.pedal")'


def test_every_fault_in_a_file_is_reported_at_once(tmp_path):
    found = problems(tmp_path, BUNDLE_LINE + """
        [audio]
        period_frames = 50
        periods = 9
        [realtime]
        priority = 120
        """)
    assert [p.split(":")[0] for p in found] == ["audio.period_frames = 50", "audio.periods = 9", "realtime.priority = 120"]


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path):
    line = only_problem(tmp_path, BUNDLE_LINE + "[audio]\nperiod_frames = \n")
    assert line.startswith("not valid TOML:") and "line 4" in line


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the config"):
        load_config(tmp_path / "nope.toml")


# --- rules between keys ------------------------------------------------------------------------------

def test_the_guitar_channel_must_exist_on_the_capture_device(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\ncapture_channels = 1\ninput_channel = 1\n") == \
        "audio.input_channel = 1: must be 0..0 (audio.capture_channels = 1)"


def test_output_channels_must_exist_be_distinct_and_not_empty(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\noutput_channels = [0, 2]\n") == \
        "audio.output_channels = [0, 2]: channel 2 must be 0..1 (audio.playback_channels = 2)"
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\noutput_channels = [1, 1]\n") == \
        "audio.output_channels = [1, 1]: names a channel twice"
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\noutput_channels = []\n") == \
        "audio.output_channels = []: must name at least one playback channel"
    cfg = load_config(write(tmp_path, BUNDLE_LINE + "[audio]\nplayback_channels = 1\noutput_channels = [0]\n"))
    assert cfg.audio.output_channels == [0]


def test_a_file_source_needs_a_file(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "file"\n') == \
        'knobs.file = "": must name a file when knobs.source = "file"'
    cfg = load_config(write(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "file"\nfile = "knobs.txt"\n'))
    assert cfg.knobs.file == tmp_path / "knobs.txt"


@pytest.mark.parametrize("source,top", [("mcp3008", 7), ("ads1115", 3), ("midi", 127)])
def test_a_pot_channel_must_exist_on_its_source(tmp_path, source, top):
    ok = BUNDLE_LINE + f'[knobs]\nsource = "{source}"\n[[knobs.pot]]\nknob = "ratio"\nchannel = {top}\n'
    assert load_config(write(tmp_path, ok)).knobs.pots[0].channel == top
    if top < 127:
        bad = ok.replace(f"channel = {top}", f"channel = {top + 1}")
        assert only_problem(tmp_path, bad) == f'knobs.pot[0].channel = {top + 1}: must be 0..{top} for knobs.source = "{source}"'
    assert only_problem(tmp_path, ok.replace(f"channel = {top}", "channel = 128")) == "knobs.pot[0].channel = 128: must be 0..127"


def test_a_pot_needs_a_knob_and_a_channel(tmp_path):
    found = problems(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "mcp3008"\n[[knobs.pot]]\nraw_min = 0.1\n')
    assert found == ["knobs.pot[0].knob: missing (the bundle knob this pot turns)",
                     "knobs.pot[0].channel: missing (the ADC channel or MIDI CC number)"]


def test_a_pot_with_a_typo_in_a_key_is_named_by_index(tmp_path):
    found = problems(tmp_path, BUNDLE_LINE + """
        [knobs]
        source = "mcp3008"
        [[knobs.pot]]
        knob = "ratio"
        channel = 0
        [[knobs.pot]]
        knob = "attack_ms"
        chanel = 1
        """)
    assert found == ['knobs.pot[1].chanel = 1: unknown key (did you mean "channel"?)',
                     "knobs.pot[1].channel: missing (the ADC channel or MIDI CC number)"]


def test_a_bad_value_is_reported_once_not_again_by_the_rules_that_use_it(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\nplayback_channels = 1\noutput_channels = [\"L\"]\n") == \
        'audio.output_channels = ["L"]: must be a list of integers, e.g. [0, 1]'
    assert only_problem(tmp_path, BUNDLE_LINE + "[audio]\ncapture_channels = 0\ninput_channel = 1\n") == \
        "audio.capture_channels = 0: must be 1..32"
    assert only_problem(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "file"\nfile = 3\n') == \
        "knobs.file = 3: must be a path (a string in quotes)"
    assert only_problem(tmp_path, BUNDLE_LINE + "[footswitch]\nenabled = true\ngpio = 40\n[led]\nenabled = true\ngpio = 17\n") == \
        "footswitch.gpio = 40: must be 0..27"


def test_pot_calibration_must_be_a_rising_range_inside_0_to_1(tmp_path):
    pot = BUNDLE_LINE + '[knobs]\nsource = "mcp3008"\n[[knobs.pot]]\nknob = "ratio"\nchannel = 0\n'
    assert only_problem(tmp_path, pot + "raw_min = 0.9\nraw_max = 0.1\n") == \
        "knobs.pot[0].raw_max = 0.1: must be more than raw_min = 0.9 (use reversed = true to flip a pot)"
    assert only_problem(tmp_path, pot + "raw_max = 1.5\n") == "knobs.pot[0].raw_max = 1.5: must be 0.0..1.0"
    assert only_problem(tmp_path, pot + "raw_min = -0.1\n") == "knobs.pot[0].raw_min = -0.1: must be 0.0..1.0"
    assert only_problem(tmp_path, pot + 'reversed = "yes"\n') == 'knobs.pot[0].reversed = "yes": must be true or false'


def test_one_knob_per_pot_and_one_pot_per_channel(tmp_path):
    head = BUNDLE_LINE + '[knobs]\nsource = "mcp3008"\n'
    pot = '[[knobs.pot]]\nknob = "{}"\nchannel = {}\n'
    assert only_problem(tmp_path, head + pot.format("ratio", 0) + pot.format("ratio", 1)) == \
        'knobs.pot[1].knob = "ratio": is already turned by knobs.pot[0]'
    assert only_problem(tmp_path, head + pot.format("ratio", 2) + pot.format("attack_ms", 2)) == \
        "knobs.pot[1].channel = 2: is already read by knobs.pot[0]"


def test_pots_written_as_a_single_table_are_refused(tmp_path):
    line = only_problem(tmp_path, BUNDLE_LINE + '[knobs.pot]\nknob = "ratio"\nchannel = 0\n')
    assert line == 'knobs.pot = { knob = "ratio", channel = 0 }: must be tables written [[knobs.pot]]'


def test_switch_and_led_keep_off_the_adc_bus_and_each_other(tmp_path):
    assert only_problem(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "mcp3008"\n[footswitch]\nenabled = true\ngpio = 10\n') == \
        'footswitch.gpio = 10: is SPI0 MOSI, used by the mcp3008 (knobs.source = "mcp3008")'
    assert only_problem(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "ads1115"\n[led]\nenabled = true\ngpio = 3\n') == \
        'led.gpio = 3: is I2C1 SCL, used by the ads1115 (knobs.source = "ads1115")'
    assert only_problem(tmp_path, BUNDLE_LINE + "[footswitch]\nenabled = true\ngpio = 22\n[led]\nenabled = true\ngpio = 22\n") == \
        "led.gpio = 22: is the footswitch's pin too (footswitch.gpio)"
    # A disabled footswitch claims no pin; with MIDI knobs the SPI pins are free.
    load_config(write(tmp_path, BUNDLE_LINE + '[knobs]\nsource = "midi"\n[footswitch]\ngpio = 10\n[led]\nenabled = true\ngpio = 10\n'))


# --- knob names against a bundle ---------------------------------------------------------------------

def test_pots_must_turn_knobs_the_bundle_has():
    cfg = load_config(FIRMWARE / "pedal.toml")
    check_knob_names(cfg, COMPRESSOR_KNOBS + ["makeup_db"])  # more bundle knobs than pots is fine
    with pytest.raises(ConfigError) as err:
        check_knob_names(cfg, ["threshold_db", "ratio", "attack_ms", "release_s"])
    assert err.value.problems == [
        f'{FIRMWARE / "pedal.toml"}: knobs.pot[3].knob = "release_ms": the bundle has no such knob '
        '(did you mean "release_s"?) (bundle knobs: threshold_db, ratio, attack_ms, release_s)']


def test_a_drive_bundle_under_a_compressor_config_names_every_pot():
    cfg = load_config(FIRMWARE / "pedal.toml")
    with pytest.raises(ConfigError) as err:
        check_knob_names(cfg, ["gain_db", "tone"])
    assert len(err.value.problems) == 4
    assert all("(bundle knobs: gain_db, tone)" in p for p in err.value.problems)


# --- the module itself ---------------------------------------------------------------------------------

def test_precisions_agree_with_the_bundle_reader():
    from device import bundle
    assert PRECISIONS == bundle.PRECISIONS


def test_config_needs_only_the_standard_library():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        before = set(sys.modules)
        import device.config
        new = {{m.split(".")[0] for m in set(sys.modules) - before}}
        print(sorted(new - set(sys.stdlib_module_names) - {{"device"}}))
        print(sorted(m for m in sys.modules if m.startswith("device")))
        """)
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "['device', 'device.config']", out
