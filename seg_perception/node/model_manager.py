"""The node's model: loaded at start-up, swapped in the background at run time, freed on
cleanup.

A swap loads the new model in a loader thread while the old one keeps serving frames; the
inference thread switches between two frames (:meth:`ModelManager.take_loaded`). A failed
load leaves the old model running and says why in :attr:`ModelManager.status`. torch and the
frame path are imported on the first load, not with this module: an unconfigured node does
not carry them.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seg_perception.host_memory import release_freed_memory
from seg_perception.models.registry import BUILTIN_MODELS
from seg_perception.node.params import NodeSettings, ParameterError

if TYPE_CHECKING:
    from seg_perception.core.pipeline import SegmentationPipeline
    from seg_perception.models.loading import LoadedModel

__all__ = [
    "ActiveModel",
    "ModelManager",
    "check_device",
    "check_model_source",
    "in_passing_thread",
    "set_threads",
]


@dataclass(frozen=True)
class ActiveModel:
    """What the inference thread runs: one loaded model and the pipeline built on it."""

    loaded: LoadedModel
    pipeline: SegmentationPipeline

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.loaded.metadata.class_names)

    @property
    def name(self) -> str:
        return self.loaded.metadata.name


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an exception for a log line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"


def check_model_source(settings: NodeSettings) -> None:
    """A missing model file is refused at once, naming the parameter that gave it (a corrupt
    one fails later, in the loader)."""
    source = settings.model_source
    if source in BUILTIN_MODELS:
        return
    path = Path(source).expanduser()
    if not path.is_file():
        raise ParameterError("model_path" if settings.model_path else "model",
                             f"model file not found: {path} (built-in names: "
                             f"{', '.join(BUILTIN_MODELS)})")


def check_device(settings: NodeSettings) -> None:
    """The device exists on this machine, or falls back (ParameterError otherwise)."""
    from seg_perception.device import DeviceError, select_device

    try:
        select_device(settings.device, fallback=settings.device_fallback)
    except DeviceError as exc:
        raise ParameterError("device", str(exc)) from None


def set_threads(count: int) -> int:
    """torch and OpenCV threads of the calling thread (0: the libraries' defaults); the count
    in use."""
    from seg_perception.core.pipeline import configure_threads

    return configure_threads(count)


def load_active_model(settings: NodeSettings) -> ActiveModel:
    """Load, place and warm up the model ``settings`` name (in the calling thread)."""
    from seg_perception.core.pipeline import SegmentationPipeline
    from seg_perception.models.loading import load_model

    set_threads(settings.num_threads)
    loaded = load_model(settings.model_source, device=settings.device,
                        precision=settings.precision, device_fallback=settings.device_fallback)
    return ActiveModel(loaded, SegmentationPipeline(loaded, cuda_graph=settings.cuda_graph))


def in_passing_thread(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` run in a thread that ends with it; its result, or its exception.

    torch's OpenMP keeps one pool of threads per thread that runs parallel work. Loading and
    warming up the model in the main thread would leave a pool there, idle beside the
    inference thread's; with more pool threads than cores, libgomp stops spinning between
    parallel regions and inference slows by about 10 % (measured on 2 cores). A pool ends
    with its thread.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="segmentation-model-loader", daemon=True)
    thread.start()
    thread.join()  # a signal still interrupts the main thread here
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class ModelManager:
    """The running model, a background swap in progress, and what the last swap said."""

    def __init__(self, log_error: Callable[[str], None]) -> None:
        self.active: ActiveModel | None = None
        self.loading: str | None = None  # source being loaded in the background
        self.status = ""  # "loading ..." or the last failure
        self.failed = False
        self._loaded: ActiveModel | None = None  # ready, not yet taken by the worker
        self._log_error = log_error

    def load(self, settings: NodeSettings) -> ActiveModel:
        """Load now (start-up, configure); raises what the loader raises."""
        self.active = in_passing_thread(load_active_model, settings)
        self.status, self.failed = "", False
        return self.active

    def start_swap(self, settings: NodeSettings,
                   check: Callable[[ActiveModel], None]) -> None:
        """Load ``settings``' model in a loader thread; ``check(model)`` must pass (e.g. the
        vehicle classes exist) before it may replace the running one."""
        source = settings.model_source
        self.loading = source
        self.status, self.failed = f"loading {source} on {settings.device}", False

        def load() -> None:
            try:
                model = load_active_model(settings)
                check(model)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
                reason = str(exc) if isinstance(exc, (ValueError, RuntimeError)) else \
                    first_line(exc)
                running = self.active.name if self.active else "nothing"
                self.status = (f"model swap to {source} failed, still running {running}: "
                               f"{reason.splitlines()[0]}")
                self.failed = True
                self._log_error(self.status)
            else:
                self._loaded = model
            finally:
                self.loading = None

        threading.Thread(target=load, name="segmentation-model-loader", daemon=True).start()

    def take_loaded(self) -> ActiveModel | None:
        """A model that finished loading (once), for the inference thread to switch to."""
        model, self._loaded = self._loaded, None
        return model

    def swapped(self, model: ActiveModel) -> ActiveModel:
        """Make ``model`` the running one; the old one is freed (its GPU memory too)."""
        old, self.active = self.active, model
        self.status, self.failed = "", False
        if old is not None and old.loaded.device.type == "cuda":
            import torch

            del old
            torch.cuda.empty_cache()
        return model

    def abandon(self, model: ActiveModel, reason: str) -> None:
        """A loaded model that cannot run after all (e.g. vehicle classes changed meanwhile)."""
        running = self.active.name if self.active else "nothing"
        self.status = f"model swap to {model.name} abandoned, still running {running}: {reason}"
        self.failed = True
        self._log_error(self.status)

    def release(self) -> None:
        """Free the model (lifecycle cleanup): host and GPU memory go back to the system."""
        cuda = self.active is not None and self.active.loaded.device.type == "cuda"
        self.active = self._loaded = None
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()
        release_freed_memory()
