"""resexp: config-driven experiments with residual networks.

Its commands are the modules `python -m` runs, each one the command itself (keys, main, output):
`resexp` (__main__.py: train, Hydra overrides), `resexp.predict`, `resexp.evaluate`, `resexp.export`,
`resexp.summary`, `resexp.report`, `resexp.pack`; what they share is resexp/cli.py (the README's
"Architecture" shows the layers below them)."""

__version__ = "0.1.0"
