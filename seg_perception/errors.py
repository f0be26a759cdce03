"""The exception types that mean "the user asked for something impossible".

Tools print these as one line and exit with status 2; anything else is a bug and keeps its
traceback.
"""

from seg_perception.device import DeviceError
from seg_perception.models.export import ExportError
from seg_perception.models.loading import ModelLoadError
from seg_perception.models.metadata import MetadataError
from seg_perception.models.registry import WeightsError
from seg_perception.shared_data import SharedDataError

USER_ERRORS: tuple[type[Exception], ...] = (
    DeviceError,
    ExportError,
    ModelLoadError,
    MetadataError,
    WeightsError,
    SharedDataError,
    FileNotFoundError,
    ValueError,
)
