"""What the project's tests, examples and benchmarks share: real targets (``targets.py``), the network test
bed and its traffic tools (``network_bed.py``), targets that show a pause (``pausing.py``), and the check
that a run left nothing behind (``leftovers.py``). An importable package: no ``sys.path`` edits, and
``--import-mode=importlib`` works."""
