"""``python -m seg_perception.node``: the node, as ``segmentation_node`` runs it."""

import sys

from seg_perception.node import main

sys.exit(main())
