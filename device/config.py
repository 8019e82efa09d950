"""The daemon's configuration: one TOML file, read once at start (``/etc/pedal/pedal.toml``).

    cfg = load_config("/etc/pedal/pedal.toml")   # PedalConfig, or ConfigError naming every fault
    check_knob_names(cfg, [k.name for k in bundle.manifest.knobs])

Every table of the file is a small dataclass below, one field per key, with the key's default,
type and rule beside it. A bad file is refused as a whole, with one line per fault that names the
file, the ``table.key`` and the value as written:

    pedal.toml: audio.period_frames = 50: must be 64..256
    pedal.toml: knobs.pot[1].chanel = 2: unknown key (did you mean "channel"?)

Unknown keys and tables are errors, not warnings: a misspelt key that is silently ignored is a
knob that silently does nothing on stage. Relative paths are taken relative to the file's own
folder. Standard library only: this runs before anything else on the Pi, and in any Python 3.11.
"""
from __future__ import annotations

import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

# == device.bundle.PRECISIONS (tests check); copied so this module needs nothing but the stdlib.
PRECISIONS = ("float32", "float16", "dynamic_int8", "int8")
SAMPLE_RATES = (48000, 44100)
FORMATS = ("S16_LE", "S24_LE", "S32_LE", "FLOAT_LE")
KNOB_SOURCES = ("mcp3008", "ads1115", "midi", "file", "none")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# How many channels each knob source has: MCP3008 CH0..CH7 (datasheet), ADS1115 AIN0..AIN3
# single-ended, MIDI control change numbers 0..127. A file source numbers its readings freely.
SOURCE_CHANNELS = {"mcp3008": 8, "ads1115": 4, "midi": 128, "file": 128, "none": 128}
# ADS1115 I2C address is set by wiring its ADDR pin to GND, VDD, SDA or SCL (datasheet table 4).
ADS1115_ADDRESSES = (0x48, 0x49, 0x4A, 0x4B)
# BCM GPIO numbers on the 40-pin header; the pins the ADC's bus already owns cannot be buttons.
GPIO_RANGE = (0, 27)
SPI0_PINS = {7: "SPI0 CE1", 8: "SPI0 CE0", 9: "SPI0 MISO", 10: "SPI0 MOSI", 11: "SPI0 SCLK"}
I2C1_PINS = {2: "I2C1 SDA", 3: "I2C1 SCL"}

DEFAULT_BUNDLE = "/var/lib/pedal/bundles/comp4.pedal"


class ConfigError(ValueError):
    """A config the daemon must not start with. ``problems`` holds one line per fault."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- how a value is written back in messages and in to_toml() --------------------------------------

def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _show(value, hex_int: bool = False) -> str:
    """A value as TOML would write it: what the user typed, or what to_toml() writes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:02X}" if hex_int and value >= 0 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Path):
        return _toml_str(str(value))
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v, hex_int) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + " }"
    return str(value)


def _did_you_mean(word: str, options, form: str = '"{}"') -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


# --- rules: each returns a problem ("must be ...") or None ---------------------------------------

def _between(lo, hi):
    def check(v):
        return None if lo <= v <= hi else f"must be {lo}..{hi}"
    return check


def _above(lo, hi):
    def check(v):
        return None if lo < v <= hi else f"must be more than {lo} and at most {hi}"
    return check


def _one_of(options):
    def check(v):
        if v in options:
            return None
        listed = ", ".join(_show(o) for o in options)
        return f"must be one of {listed}" + (_did_you_mean(v, options) if isinstance(v, str) else "")
    return check


def _ads1115_address(v):
    if v in ADS1115_ADDRESSES:
        return None
    return "must be one of " + ", ".join(f"0x{a:02X}" for a in ADS1115_ADDRESSES) + " (the ADS1115's ADDR pin)"


def _not_empty(v):
    return None if str(v).strip() else "must not be empty"


# --- the schema: dataclass fields carry their TOML kind and rule ---------------------------------
# kinds: int, float, bool, str, path (required, relative to the file), optpath ("" = None),
# intlist, hexint (an int written back as 0x..).

def _key(default, kind: str, check=None, required: bool = False):
    meta = {"kind": kind, "check": check, "required": required}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class AudioConfig:
    """[audio]: the ALSA side. Latency = period_frames * periods / sample_rate + the model's own."""
    capture_device: str = _key("hw:0", "str", _not_empty)  # any ALSA PCM name ("pedal", "hw:CARD=x")
    playback_device: str = _key("hw:0", "str", _not_empty)
    sample_rate: int = _key(48000, "int", _one_of(SAMPLE_RATES))
    period_frames: int = _key(128, "int", _between(64, 256))
    periods: int = _key(2, "int", _between(2, 4))
    format: str = _key("S32_LE", "str", _one_of(FORMATS))
    capture_channels: int = _key(2, "int", _between(1, 32))
    playback_channels: int = _key(2, "int", _between(1, 32))
    input_channel: int = _key(0, "int", _between(0, 31))  # the capture channel carrying the guitar
    output_channels: list[int] = _key([0, 1], "intlist")  # playback channels that get the mono out
    dry_crossfade_ms: float = _key(10.0, "float", _above(0.0, 1000.0))  # wet <-> dry on faults, bypass


@dataclass
class ModelConfig:
    """[model]: which bundle to run."""
    bundle: Path = _key(Path(DEFAULT_BUNDLE), "path", required=True)  # a .pedal archive or a bundle dir
    bundles_dir: Path | None = _key(None, "optpath")  # long press steps through *.pedal here
    # a copy of the last bundle that loaded, kept by the daemon: it starts from this one when
    # `bundle` is partial or bad (a copy cut off by a power cut, a broken file); "" = none
    last_good: Path | None = _key(None, "optpath")
    # where the daemon records the bundle it last switched to (footswitch, status socket `load`,
    # web page): it starts with that one after a restart or a power cut, unless `bundle` above was
    # changed since (then the config wins); "" = always start with `bundle`
    choice: Path | None = _key(None, "optpath")
    precision: str = _key("", "str", _one_of(("",) + PRECISIONS))  # "" = the bundle's default
    threads: int = _key(1, "int", _between(1, 8))  # TFLite interpreter threads


@dataclass
class PotConfig:
    """[[knobs.pot]]: one potentiometer (or MIDI CC) steering one knob of the bundle."""
    knob: str = _key("", "str", _not_empty, required=True)  # a bundle knob name, e.g. "threshold_db"
    channel: int = _key(0, "int", _between(0, 127), required=True)  # ADC channel or MIDI CC number
    raw_min: float = _key(0.0, "float", _between(0.0, 1.0))  # reading (0..1) at the knob's minimum
    raw_max: float = _key(1.0, "float", _between(0.0, 1.0))  # reading (0..1) at the knob's maximum
    reversed: bool = _key(False, "bool")  # pot wired backwards: full clockwise = knob minimum


@dataclass
class KnobsConfig:
    """[knobs]: where knob positions come from and how they are cleaned up."""
    source: str = _key("none", "str", _one_of(KNOB_SOURCES))
    poll_hz: int = _key(200, "int", _between(1, 1000))
    file: Path | None = _key(None, "optpath")  # readings for source = "file" (development)
    midi_port: str = _key("", "str")  # "" = the first MIDI input port
    i2c_bus: int = _key(1, "int", _between(0, 31))  # /dev/i2c-N for the ADS1115
    i2c_address: int = _key(0x48, "hexint", _ads1115_address)
    smoothing_ms: float = _key(30.0, "float", _between(0.0, 1000.0))  # 0 = none; longer = slower knobs
    deadband: float = _key(0.004, "float", _between(0.0, 0.1))  # fraction of travel a knob must move
    pots: list[PotConfig] = field(default_factory=list, metadata={"kind": "pots", "key": "pot"})


@dataclass
class FootswitchConfig:
    """[footswitch]: a momentary switch to ground on a GPIO (internal pull-up)."""
    enabled: bool = _key(False, "bool")
    gpio: int = _key(17, "int", _between(*GPIO_RANGE))  # BCM numbering
    long_press_s: float = _key(1.0, "float", _between(0.2, 10.0))  # held this long: next bundle


@dataclass
class LedConfig:
    """[led]: steady = effect on, dim = bypass, blinking = fault (docs/hardware.md)."""
    enabled: bool = _key(False, "bool")
    gpio: int = _key(18, "int", _between(*GPIO_RANGE))  # BCM numbering


@dataclass
class RealtimeConfig:
    """[realtime]: what the audio thread asks the kernel for."""
    priority: int = _key(70, "int", _between(0, 99))  # SCHED_FIFO priority; 0 = don't ask
    lock_memory: bool = _key(True, "bool")  # mlockall: no page faults in the audio loop
    cpu: int = _key(-1, "int", _between(-1, 63))  # pin the audio thread to this core; -1 = no


@dataclass
class StatusConfig:
    """[status]: a unix socket that answers with the pedal's state, and the log level."""
    socket: Path | None = _key(Path("/run/pedal/status.sock"), "optpath")  # "" disables
    log_level: str = _key("info", "str", _one_of(LOG_LEVELS))


@dataclass
class WatchdogConfig:
    """[watchdog]: ping systemd (WATCHDOG_USEC) while the audio loop is alive."""
    enabled: bool = _key(True, "bool")


@dataclass
class PedalConfig:
    """The whole file. ``source`` is where it was read from (for messages)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    knobs: KnobsConfig = field(default_factory=KnobsConfig)
    footswitch: FootswitchConfig = field(default_factory=FootswitchConfig)
    led: LedConfig = field(default_factory=LedConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    source: str = field(default="<defaults>", compare=False)

    @property
    def latency_ms(self) -> float:
        """What ALSA's buffering alone adds, input to output (the model's own latency comes on top)."""
        return 1000.0 * self.audio.period_frames * self.audio.periods / self.audio.sample_rate

    def to_toml(self) -> str:
        """This config as a TOML file that load_config reads back to an equal PedalConfig."""
        out = ["# SignalTrain-Pi pedal daemon config (written by device.config)"]
        for section in SECTION_ORDER:
            obj = getattr(self, section)
            out += ["", f"[{section}]"]
            for f in fields(obj):
                if f.metadata.get("kind") == "pots":
                    continue
                out.append(f"{_toml_key(f)} = {_show(_to_toml_value(getattr(obj, f.name)), f.metadata['kind'] == 'hexint')}")
            if section == "knobs":
                for pot in self.knobs.pots:
                    out += ["", "[[knobs.pot]]"]
                    out += [f"{_toml_key(f)} = {_show(getattr(pot, f.name))}" for f in fields(pot)]
        return "\n".join(out) + "\n"


SECTION_ORDER = ("audio", "model", "knobs", "footswitch", "led", "realtime", "status", "watchdog")
SECTIONS = {f.name: f.default_factory for f in fields(PedalConfig) if f.name != "source"}


def _toml_key(f) -> str:
    return f.metadata.get("key") or f.name


def _to_toml_value(v):
    return "" if v is None else v


# --- reading ------------------------------------------------------------------------------------

class _Reader:
    """Turns TOML tables into the dataclasses above, collecting every problem on the way."""

    def __init__(self, source: str, base_dir: Path | None):
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.faulty: set[str] = set()  # "table.key" already reported: cross checks leave them be

    def fault(self, where: str, value, problem: str, hex_int: bool = False) -> None:
        self.problems.append(f"{self.source}: {where} = {_show(value, hex_int)}: {problem}")
        self.faulty.add(where)

    def missing(self, where: str, hint: str) -> None:
        self.problems.append(f"{self.source}: {where}: missing ({hint})")
        self.faulty.add(where)

    def sound(self, *keys: str) -> bool:
        """True when none of these keys (or a pot's keys, given "knobs.pot[i]") was reported."""
        return not any(f == k or f.startswith(k + ".") for k in keys for f in self.faulty)

    def path(self, text: str) -> Path:
        p = Path(text).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = Path(os.path.normpath(self.base_dir / p))  # "cfg/../bundles" reads as "bundles"
        return p

    def convert(self, kind: str, value):
        """(converted value, None) or (None, problem) for one TOML value of a kind."""
        if kind in ("int", "hexint"):
            if isinstance(value, bool) or not isinstance(value, int):
                return None, "must be an integer"
            return value, None
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None, "must be a number"
            if not math.isfinite(value):
                return None, "must be a finite number"
            return float(value), None
        if kind == "bool":
            return (value, None) if isinstance(value, bool) else (None, "must be true or false")
        if kind == "str":
            return (value, None) if isinstance(value, str) else (None, "must be a string (in quotes)")
        if kind in ("path", "optpath"):
            if not isinstance(value, str):
                return None, "must be a path (a string in quotes)"
            if not value.strip():
                return (None, None) if kind == "optpath" else (None, "must not be empty")
            return self.path(value), None
        if kind == "intlist":
            if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                return None, "must be a list of integers, e.g. [0, 1]"
            return list(value), None
        raise AssertionError(kind)

    def table(self, cls, table, where: str, hints: dict[str, str] | None = None):
        """One dataclass from one TOML table; unknown keys, wrong types and rule breaks are problems."""
        keyed = {_toml_key(f): f for f in fields(cls) if "kind" in f.metadata}
        for key, value in table.items():
            if key not in keyed:
                self.fault(f"{where}.{key}", value, "unknown key" + _did_you_mean(key, keyed))
        values = {}
        for key, f in keyed.items():
            kind = f.metadata["kind"]
            if kind == "pots":
                values[f.name] = self.pots(table.get(key, []), f"{where}.{key}")
                continue
            if key not in table:
                if f.metadata["required"]:
                    self.missing(f"{where}.{key}", (hints or {}).get(key, "required"))
                continue
            raw = table[key]
            value, problem = self.convert(kind, raw)
            check = f.metadata["check"]
            if problem is None and check is not None and value is not None:
                problem = check(value)
            if problem:
                self.fault(f"{where}.{key}", raw, problem, kind == "hexint")
            else:
                values[f.name] = value
        return cls(**values)

    def pots(self, items, where: str) -> list[PotConfig]:
        if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
            self.fault(where, items, "must be tables written [[knobs.pot]]")
            return []
        return [self.table(PotConfig, t, f"{where}[{i}]", {"knob": "the bundle knob this pot turns",
                                                          "channel": "the ADC channel or MIDI CC number"})
                for i, t in enumerate(items)]

    def config(self, data: dict) -> PedalConfig:
        for name, value in data.items():
            if name not in SECTIONS:
                self.problems.append(f"{self.source}: [{name}]: unknown table"
                                     + _did_you_mean(name, SECTIONS, "[{}]"))
            elif not isinstance(value, dict):
                self.fault(name, value, f"must be a table written [{name}]")
        hints = {"bundle": f'the bundle to run, e.g. bundle = "{DEFAULT_BUNDLE}"'}
        if not isinstance(data.get("model"), dict):
            self.missing("model.bundle", f"add a [model] table with {hints['bundle']}")
        sections = {}
        for name, cls in SECTIONS.items():
            table = data.get(name)
            if isinstance(table, dict):
                sections[name] = self.table(cls, table, name, hints)
        cfg = PedalConfig(**sections, source=self.source)
        self.cross_check(cfg)
        return cfg

    def cross_check(self, cfg: PedalConfig) -> None:
        """Rules that involve more than one key."""
        a, k = cfg.audio, cfg.knobs
        if self.sound("audio.input_channel", "audio.capture_channels") and a.input_channel >= a.capture_channels:
            self.fault("audio.input_channel", a.input_channel,
                       f"must be 0..{a.capture_channels - 1} (audio.capture_channels = {a.capture_channels})")
        if self.sound("audio.output_channels", "audio.playback_channels"):
            if not a.output_channels:
                self.fault("audio.output_channels", a.output_channels, "must name at least one playback channel")
            for ch in a.output_channels:
                if not 0 <= ch < a.playback_channels:
                    self.fault("audio.output_channels", a.output_channels,
                               f"channel {ch} must be 0..{a.playback_channels - 1} "
                               f"(audio.playback_channels = {a.playback_channels})")
            if len(set(a.output_channels)) != len(a.output_channels):
                self.fault("audio.output_channels", a.output_channels, "names a channel twice")

        if k.source == "file" and k.file is None and self.sound("knobs.file", "knobs.source"):
            self.fault("knobs.file", "", 'must name a file when knobs.source = "file"')
        limit = SOURCE_CHANNELS[k.source]
        seen_knobs: dict[str, int] = {}
        seen_channels: dict[int, int] = {}
        for i, pot in enumerate(k.pots):
            where = f"knobs.pot[{i}]"
            if not self.sound(where, "knobs.source"):
                continue
            if pot.channel >= limit:
                self.fault(f"{where}.channel", pot.channel,
                           f'must be 0..{limit - 1} for knobs.source = "{k.source}"')
            if pot.raw_min >= pot.raw_max:
                self.fault(f"{where}.raw_max", pot.raw_max,
                           f"must be more than raw_min = {pot.raw_min!r} (use reversed = true to flip a pot)")
            if pot.knob and pot.knob in seen_knobs:
                self.fault(f"{where}.knob", pot.knob, f"is already turned by knobs.pot[{seen_knobs[pot.knob]}]")
            if pot.channel in seen_channels:
                self.fault(f"{where}.channel", pot.channel,
                           f"is already read by knobs.pot[{seen_channels[pot.channel]}]")
            seen_knobs.setdefault(pot.knob, i)
            seen_channels.setdefault(pot.channel, i)

        bus = SPI0_PINS if k.source == "mcp3008" else I2C1_PINS if k.source == "ads1115" else {}
        users = [(name, getattr(cfg, name).gpio) for name in ("footswitch", "led")
                 if getattr(cfg, name).enabled and self.sound(f"{name}.gpio", f"{name}.enabled", "knobs.source")]
        for name, gpio in users:
            if gpio in bus:
                self.fault(f"{name}.gpio", gpio, f'is {bus[gpio]}, used by the {k.source} (knobs.source = "{k.source}")')
        if len(users) == 2 and users[0][1] == users[1][1]:
            self.fault("led.gpio", cfg.led.gpio, "is the footswitch's pin too (footswitch.gpio)")


def loads_config(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> PedalConfig:
    """Parse and validate config text. ``source`` names it in messages; relative paths are taken
    relative to ``base_dir`` (kept relative when None). Raises ConfigError listing every fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: not valid TOML: {e}"]) from None
    reader = _Reader(source, Path(base_dir) if base_dir is not None else None)
    cfg = reader.config(data)
    if reader.problems:
        raise ConfigError(reader.problems)
    return cfg


def load_config(path: str | Path) -> PedalConfig:
    """Read and validate a pedal.toml. Raises ConfigError whose lines name the file, the
    ``table.key`` and the bad value, e.g. ``pedal.toml: audio.period_frames = 50: must be 64..256``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config ({e.strerror or e})"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e})"]) from None
    return loads_config(text, source=str(path), base_dir=path.resolve().parent)


def check_knob_names(config: PedalConfig, knob_names) -> None:
    """Every [[knobs.pot]] must turn a knob the bundle has; raises ConfigError naming the pot,
    the name as written, the closest bundle knob and the bundle's list."""
    names = list(knob_names)
    listed = ", ".join(names) if names else "none"
    problems = []
    for i, pot in enumerate(config.knobs.pots):
        if pot.knob not in names:
            problems.append(f"{config.source}: knobs.pot[{i}].knob = {_show(pot.knob)}: the bundle has no such "
                            f"knob{_did_you_mean(pot.knob, names)} (bundle knobs: {listed})")
    if problems:
        raise ConfigError(problems)


DEFAULT_TOML = PedalConfig().to_toml()
