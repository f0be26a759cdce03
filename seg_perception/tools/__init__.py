"""Command-line tools; see :mod:`seg_perception.cli`."""
