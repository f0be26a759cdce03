"""The ROS 2 segmentation node (``segmentation_node``, ``segmentation_lifecycle_node``).

Importing this package first sets up malloc and OpenMP for a process that infers frame after
frame on a shared computer, before rclpy, numpy, OpenCV and torch start threads (see
:mod:`seg_perception.process_setup`).
"""

from seg_perception.process_setup import prepare_process

prepare_process()


def main(args: list[str] | None = None) -> int:
    """``segmentation_node``: configure and activate at once; exit 2 if it cannot start."""
    from seg_perception.node.main import run

    return run(args, managed=False)


def lifecycle_main(args: list[str] | None = None) -> int:
    """``segmentation_lifecycle_node``: wait, unconfigured, for a lifecycle manager."""
    from seg_perception.node.main import run

    return run(args, managed=True)
