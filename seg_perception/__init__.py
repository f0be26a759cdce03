"""seg_perception: semantic segmentation and a vehicle-ahead decision for ROS 2 cameras."""

__version__ = "0.1.0"
