"""From the config's [knobs] table to pots, a KnobProcessor and a running KnobPoller."""
from __future__ import annotations

from .knobspec import KnobSpec
from .pots import ADS1115Pot, FileKnobs, KnobPoller, KnobProcessor, MCP3008Pot, MidiCCKnobs, PotCalibration


def open_pots(config, specs: list[KnobSpec]) -> dict:
    """knob name -> pot source, as the config says. Raises with the source's own message."""
    k = config.knobs
    if k.source == "mcp3008":
        return {p.knob: MCP3008Pot(p.channel) for p in k.pots}
    if k.source == "ads1115":
        from smbus2 import SMBus
        bus = SMBus(k.i2c_bus)
        return {p.knob: ADS1115Pot(bus, p.channel, k.i2c_address) for p in k.pots}
    if k.source == "file":
        table = FileKnobs(k.file)
        return {p.knob: table.pot(p.channel) for p in k.pots}
    if k.source == "midi":
        table = MidiCCKnobs({p.channel: p.knob for p in k.pots}, k.midi_port or None)
        return {p.knob: table.pot(p.knob) for p in k.pots}
    return {}


def start_poller(config, specs: list[KnobSpec]) -> KnobPoller:
    k = config.knobs
    pots = open_pots(config, specs)
    cal = {p.knob: PotCalibration(p.raw_min, p.raw_max, p.reversed) for p in k.pots}
    proc = KnobProcessor(specs, pots, cal, deadband=k.deadband, smoothing_ms=k.smoothing_ms, poll_hz=k.poll_hz)
    return KnobPoller(proc).start()
