"""The ROS 2 segmentation node (``segmentation_node``, ``segmentation_lifecycle_node``).

Importing this package first sets up malloc for a process that infers frame after frame,
before rclpy, numpy and OpenCV start threads (see :mod:`seg_perception.host_memory`).
"""

from seg_perception.host_memory import keep_freed_memory

keep_freed_memory()


def main(args: list[str] | None = None) -> int:
    """``segmentation_node``: configure and activate at once; exit 2 if it cannot start."""
    from seg_perception.node.main import run

    return run(args, managed=False)


def lifecycle_main(args: list[str] | None = None) -> int:
    """``segmentation_lifecycle_node``: wait, unconfigured, for a lifecycle manager."""
    from seg_perception.node.main import run

    return run(args, managed=True)
