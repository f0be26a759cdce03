"""Model classes -> data-set classes, so that any model can be scored on any labelled set.

A mapping is a YAML file (``classes: {data-set class: [model classes]}``); the project ships
one per known (model label set, data set) pair in ``config/mappings``, picked automatically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception.core.labels import LabelSet, find_label_set
from seg_perception.errors import SegPerceptionError

__all__ = ["ClassMapping", "MappingError", "class_id", "default_mapping_path", "mappings_dir"]


class MappingError(SegPerceptionError, ValueError):
    """A class-mapping file is unreadable or names classes that do not exist."""


def class_id(label_set: LabelSet, name: str) -> int:
    """The id of class ``name`` in ``label_set`` (case-insensitive, surrounding blanks ignored)."""
    key = name.strip().casefold()
    for index, known in enumerate(label_set.class_names):
        if known.casefold() == key:
            return index
    raise MappingError(f"{label_set.name} has no class {name!r}; its classes: "
                       + ", ".join(label_set.class_names))


def mappings_dir() -> Path:
    """Where the shipped mapping files live: the checkout's ``config/mappings`` or the
    installed package's ``share/seg_perception/config/mappings``."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / "mappings"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("seg_perception")) / "config"
                          / "mappings")
    except Exception:  # no ROS, or the package is not installed through ament: fine
        pass
    candidates.append(Path(sys.prefix) / "share" / "seg_perception" / "config" / "mappings")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def default_mapping_path(class_names: Sequence[str], dataset: str) -> Path | None:
    """The shipped mapping for (model classes, data set), if the project has one."""
    source = find_label_set(tuple(class_names))
    if source is None:
        return None
    path = mappings_dir() / f"{source.name}_to_{dataset}.yaml"
    return path if path.is_file() else None


@dataclass(frozen=True)
class ClassMapping:
    """Model class ids -> data-set class ids, applied to label maps through a 256-entry table.

    ``table[target] = [source names]``; model classes listed nowhere map to ``unmapped`` (the
    id ``target.num_classes``), i.e. a prediction that is wrong for every labelled pixel.
    """

    source_names: tuple[str, ...]
    target: LabelSet
    table: dict[str, tuple[str, ...]]
    path: str | None = None
    lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lut = np.full(256, self.unmapped_id, dtype=np.uint8)
        by_key: dict[str, list[int]] = {}
        for index, name in enumerate(self.source_names):
            by_key.setdefault(name.casefold(), []).append(index)
        where = f" in {self.path}" if self.path else ""
        claimed: dict[str, str] = {}
        for target_name, sources in self.table.items():
            target_id = class_id(self.target, target_name)
            for source in sources:
                key = source.strip().casefold()
                if key not in by_key:
                    raise MappingError(
                        f"unknown model class {source!r}{where}; the model's classes: "
                        + ", ".join(self.source_names))
                if key in claimed and claimed[key] != target_name:
                    raise MappingError(f"model class {source!r} is mapped to both "
                                       f"{claimed[key]!r} and {target_name!r}{where}")
                claimed[key] = target_name
                lut[by_key[key]] = target_id
        lut.setflags(write=False)
        object.__setattr__(self, "lut", lut)

    @property
    def unmapped_id(self) -> int:
        return self.target.num_classes

    @property
    def unmapped_sources(self) -> tuple[str, ...]:
        return tuple(n for i, n in enumerate(self.source_names) if self.lut[i] == self.unmapped_id)

    @classmethod
    def by_name(cls, source_names: Sequence[str], target: LabelSet) -> ClassMapping:
        """Identity by (case-insensitive) name: each data-set class from the same-named model
        class. Used when the model already speaks the data set's classes."""
        keys = {n.casefold() for n in source_names}
        missing = [n for n in target.class_names if n.casefold() not in keys]
        if missing:
            raise MappingError(f"the model lacks the {target.name} classes {missing}: give a "
                               "--mapping file")
        return cls(tuple(source_names), target, {n: (n,) for n in target.class_names})

    @classmethod
    def from_file(cls, path: str | os.PathLike, source_names: Sequence[str],
                  target: LabelSet) -> ClassMapping:
        """Read a mapping YAML (``classes: {target: [sources]}``; see config/mappings)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise MappingError(f"cannot read mapping {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise MappingError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
            raise MappingError(f"{path} needs a 'classes' mapping (target class: [model "
                               "classes])")
        declared = data.get("target")
        if declared is not None and str(declared).casefold() != target.name:
            raise MappingError(f"{path} maps onto {declared!r}, not {target.name!r}")
        table: dict[str, tuple[str, ...]] = {}
        for target_name, sources in data["classes"].items():
            if sources is None:
                sources = []
            if isinstance(sources, str):
                sources = [sources]
            if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
                raise MappingError(f"{path}: {target_name!r} must list model class names")
            table[str(target_name)] = tuple(sources)
        return cls(tuple(source_names), target, table, str(path))

    @classmethod
    def resolve(cls, source_names: Sequence[str], target: LabelSet,
                path: str | os.PathLike | None = None) -> ClassMapping:
        """The given file, else the shipped mapping for this pair, else identity by name."""
        if path is None:
            path = default_mapping_path(source_names, target.name)
        if path is not None:
            return cls.from_file(path, source_names, target)
        try:
            return cls.by_name(source_names, target)
        except MappingError:
            shipped = ", ".join(p.name for p in sorted(mappings_dir().glob("*.yaml")))
            raise MappingError(
                f"no class mapping ships for this model onto {target.name}: give --mapping "
                f"FILE (shipped: {shipped or 'none'})") from None

    def apply(self, label_map: np.ndarray) -> np.ndarray:
        """Model label map (uint8) -> data-set ids (uint8; ``unmapped_id`` where unmapped)."""
        label_map = np.asarray(label_map)
        if label_map.dtype != np.uint8:
            raise ValueError(f"label maps are uint8 class ids, got {label_map.dtype}")
        return self.lut[label_map]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "target": self.target.name,
            "classes": {k: list(v) for k, v in self.table.items()},
            "unmapped": list(self.unmapped_sources),
        }
