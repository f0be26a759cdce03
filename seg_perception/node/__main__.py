"""``python -m seg_perception.node [--managed]``: the node as ``segmentation_node`` (or,
with ``--managed``, ``segmentation_lifecycle_node``) runs it."""

import sys

from seg_perception.node import lifecycle_main, main

if "--managed" in sys.argv[1:sys.argv.index("--ros-args") if "--ros-args" in sys.argv else None]:
    sys.argv.remove("--managed")
    sys.exit(lifecycle_main())
sys.exit(main())
