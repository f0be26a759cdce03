"""ament_python package: ``colcon build`` on a ROS 2 install, or ``pip install -e .``."""

from glob import glob
from os.path import isfile

from setuptools import find_packages, setup

package_name = "seg_perception"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.*")),
        ("share/" + package_name + "/config", [p for p in glob("config/*") if isfile(p)]),
        ("share/" + package_name + "/config/mappings", glob("config/mappings/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="seg_perception developers",
    maintainer_email="seg-perception@example.com",
    description="Semantic segmentation node with a vehicle-ahead decision for ROS 2 cameras",
    license="MIT",
    entry_points={
        "console_scripts": [
            "seg-perception = seg_perception.cli:main",
            "segmentation_node = seg_perception.node:main",
            "segmentation_lifecycle_node = seg_perception.node:lifecycle_main",
        ],
    },
)
