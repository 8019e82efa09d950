"""The one knob spec: a musician's knob with a name, a unit, a range and a taper.

Used the same way everywhere: the dataset renders targets at physical values, the model sees
normalized values in 0..1 (after the taper), the manifest stores the specs, the daemon maps pots
onto them by name, and plots label axes with them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

TAPERS = ("lin", "log")


@dataclass(frozen=True)
class KnobSpec:
    name: str  # unit in the name where it has one: "threshold_db", "attack_ms"
    unit: str  # "dB", "ms", ":1", "" ...
    minimum: float
    maximum: float
    default: float
    taper: str = "lin"  # "log": equal knob travel = equal ratio (times, ratios, frequencies)

    def __post_init__(self):
        where = f"knob {self.name!r}"
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"{where}: name must be letters, digits and '_'")
        if self.taper not in TAPERS:
            raise ValueError(f"{where}: taper {self.taper!r} is not one of {TAPERS}")
        if not (math.isfinite(self.minimum) and math.isfinite(self.maximum)) or self.maximum <= self.minimum:
            raise ValueError(f"{where}: range {self.minimum}..{self.maximum} is empty or not finite")
        if self.taper == "log" and self.minimum <= 0:
            raise ValueError(f"{where}: a log taper needs a positive minimum, got {self.minimum}")
        if not (self.minimum <= self.default <= self.maximum):
            raise ValueError(f"{where}: default {self.default} lies outside {self.minimum}..{self.maximum}")

    def to_normalized(self, value: float) -> float:
        """Physical value -> knob position in 0..1 (clamped)."""
        v = min(max(float(value), self.minimum), self.maximum)
        if self.taper == "log":
            return math.log(v / self.minimum) / math.log(self.maximum / self.minimum)
        return (v - self.minimum) / (self.maximum - self.minimum)

    def from_normalized(self, position: float) -> float:
        """Knob position in 0..1 (clamped) -> physical value."""
        p = min(max(float(position), 0.0), 1.0)
        if self.taper == "log":
            return self.minimum * (self.maximum / self.minimum) ** p
        return self.minimum + p * (self.maximum - self.minimum)

    def label(self) -> str:
        return f"{self.name} [{self.unit}]" if self.unit else self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "knob") -> "KnobSpec":
        missing = [k for k in ("name", "unit", "minimum", "maximum", "default") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        unknown = set(d) - {"name", "unit", "minimum", "maximum", "default", "taper"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
        return cls(name=str(d["name"]), unit=str(d["unit"]), minimum=float(d["minimum"]),
                   maximum=float(d["maximum"]), default=float(d["default"]), taper=str(d.get("taper", "lin")))
