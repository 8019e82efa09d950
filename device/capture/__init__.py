"""Model your own pedal: the box plays a capture signal through it per knob setting of a plan,
checks every pass and writes a dataset (``python -m device capture``; docs/capture.md).

A tool beside the runtime: nothing the daemon runs imports it."""
