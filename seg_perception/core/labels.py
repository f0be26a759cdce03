"""Label sets: the classes of a model or a data set, their colours and which are vehicles.

One home for the Cityscapes, CamVid and PASCAL VOC class tables: the model registry builds
model metadata from them and the evaluation reads data-set labels with them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelSet:
    """Class names by id, their palette, the vehicle classes and the void ids.

    ``void_ids`` are label values that mean "not labelled" in a data set's label images (they
    are ignored by every metric); a model's label set has none.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    vehicle_names: tuple[str, ...] = ()
    void_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.class_names):
            raise ValueError(f"label set {self.name}: {len(self.palette)} colours for "
                             f"{len(self.class_names)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labelled(self) -> LabelSet:
        """The classes that count in metrics: ids below the first void id."""
        if not self.void_ids:
            return self
        count = min(self.void_ids)
        return LabelSet(self.name, self.class_names[:count], self.palette[:count],
                        self.vehicle_names, self.void_ids)

    @property
    def vehicle_ids(self) -> tuple[int, ...]:
        keys = {name.casefold() for name in self.vehicle_names}
        return tuple(i for i, name in enumerate(self.class_names) if name.casefold() in keys)


def voc_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved class index); fine for any count <= 256."""
    colours = []
    for index in range(count):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


CITYSCAPES = LabelSet(
    name="cityscapes",
    class_names=(
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus",
        "train", "motorcycle", "bicycle", "background",
    ),
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 0),
    ),
    vehicle_names=("car", "truck", "bus", "train"),
)  # fmt: skip

CAMVID = LabelSet(
    name="camvid",
    class_names=(
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
        "Pedestrian", "Bicyclist", "Unlabelled",
    ),
    palette=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
        (0, 128, 192), (0, 0, 0),
    ),
    vehicle_names=("Car",),
    void_ids=(11,),
)  # fmt: skip

_VOC_NAMES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC = LabelSet("voc", _VOC_NAMES, voc_palette(len(_VOC_NAMES)),
               vehicle_names=("car", "bus", "train"))

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (CITYSCAPES, CAMVID, VOC)}


def find_label_set(class_names: tuple[str, ...] | list[str]) -> LabelSet | None:
    """The known label set whose class names these are (case-insensitive), or None."""
    keys = tuple(n.casefold() for n in class_names)
    for label_set in LABEL_SETS.values():
        if keys == tuple(n.casefold() for n in label_set.class_names):
            return label_set
    return None
