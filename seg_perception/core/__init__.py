"""The ROS-free core: decode, preprocess, infer, postprocess, decide.

Nothing here imports rclpy: the node, the command-line tools and the tests all drive these
modules directly, on numpy arrays and torch tensors.
"""
