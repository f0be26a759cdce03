"""The ROS-free segmentation core: frame in, label map / colour mask / overlay out.

Everything after the upload happens on the model's device and in as few passes as possible:
the uint8 frame is resized, reordered and normalised there, the network runs, the class map is
taken at the network's resolution and brought to the frame size with nearest-neighbour (class
ids are never interpolated), and only uint8 results come back to the host, on request.

Two back ends do the same maths:

* CPU: the host *is* the device, so the cheap passes use single-pass OpenCV / numpy kernels
  that stay fast on a busy 2-core machine (measured, see ``seg-perception bench``): uint8
  resize, a float look-up table that normalises straight into the reused channels-last network
  input, nearest upsampling by precomputed exact indices, a palette look-up and an
  ``addWeighted`` blend. Only the network and the argmax use torch.
* CUDA: uint8 frames go through a reused pinned buffer with a non-blocking copy on the
  pipeline's own stream; all the maths is torch on the GPU; results come back with
  non-blocking copies into reused pinned buffers and the caller waits once, on one event.
  With ``cuda_graph=True`` :meth:`SegmentationPipeline.segment_to_host` replays one captured
  graph per frame size (launch overhead gone).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from seg_perception.models.loading import LoadedModel, run_network
from seg_perception.models.metadata import ModelMetadata

ChannelOrder = Literal["rgb", "bgr"]
Upsample = Literal["labels", "logits"]
# ``timer("stage")`` wraps each stage of a frame (e.g. seg_perception.benchmarking.StageTimer).
Timer = Callable[[str], AbstractContextManager[object]]

# torch warns when wrapping read-only buffers (ROS message data); we never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_ALPHA_ONE = 128  # overlay blending in int16 fixed point: alpha 1.0 == 128, no overflow
_MAX_GRAPHS = 2  # captured CUDA graphs kept (one per frame size / channel order)


def _untimed(name: str) -> AbstractContextManager[object]:
    return nullcontext()


def _check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be within [0, 1], got {alpha}")
    return float(alpha)


def _check_order(channel_order: str) -> None:
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {channel_order!r}")


def configure_threads(num_threads: int) -> int:
    """Use ``num_threads`` CPU threads for torch and OpenCV (0: leave both as they are).

    Both libraries run parts of the CPU pipeline; giving them the same count keeps them from
    oversubscribing the cores. Returns torch's thread count afterwards.
    """
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, not {num_threads}")
    if num_threads:
        torch.set_num_threads(num_threads)
        cv2.setNumThreads(num_threads)
    return torch.get_num_threads()


# --- small kernels shared by both back ends ------------------------------------------------


@lru_cache(maxsize=16)
def _nearest_indices(small: int, large: int) -> np.ndarray:
    """Source index of each output pixel for nearest-exact scaling (pixel centres aligned).

    Exact integer form of ``floor((i + 0.5) * small / large)``: torch's ``nearest-exact``
    except where its float scale falls just short of an exact tie (OpenCV's
    INTER_NEAREST_EXACT is off by one more often). CPU and CUDA both use these indices.
    """
    index = ((2 * np.arange(large, dtype=np.int64) + 1) * small) // (2 * large)
    index = np.minimum(index, small - 1).astype(np.intp)
    index.setflags(write=False)
    return index


@lru_cache(maxsize=16)
def _nearest_index_tensor(small: int, large: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_nearest_indices(small, large).astype(np.int64)).to(device)


def _upsample_labels_torch(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """hxw class map -> HxW with the same exact indices as the CPU path (two gathers)."""
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    rows = _nearest_index_tensor(h, height, labels.device)
    cols = _nearest_index_tensor(w, width, labels.device)
    return labels.index_select(0, rows).index_select(1, cols)


def _upsample_labels_cpu(small: np.ndarray, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Nearest-exact scaling of an hxw uint8 map into ``out`` (HxW): two gathers, one thread.

    ``rows`` is scratch of shape (H, w).
    """
    h, w = small.shape
    height, width = out.shape
    if (h, w) == (height, width):
        np.copyto(out, small)
        return out
    np.take(small, _nearest_indices(h, height), axis=0, out=rows, mode="clip")
    return np.take(rows, _nearest_indices(w, width), axis=1, out=out, mode="clip")


def _blend_torch(frame: torch.Tensor, colour: torch.Tensor, weight: int | torch.Tensor):
    """``((128 - w) * frame + w * colour + 64) >> 7`` in int16: a rounded alpha blend."""
    mixed = frame.to(torch.int16) * (_ALPHA_ONE - weight)
    mixed += colour.to(torch.int16) * weight
    mixed += _ALPHA_ONE // 2
    return (mixed >> 7).to(torch.uint8)  # >> 7 == // _ALPHA_ONE


def _blend_cpu(frame: np.ndarray, colour: np.ndarray, alpha: float, out: np.ndarray | None):
    """``(1 - alpha) * frame + alpha * colour``, rounded: one OpenCV pass."""
    return cv2.addWeighted(frame, 1.0 - alpha, colour, alpha, 0.0, dst=out)


def _palette_lut(palette: np.ndarray) -> np.ndarray:
    """256x1x3 uint8 table for ``cv2.applyColorMap``; ids without a colour map to black."""
    lut = np.zeros((256, 1, 3), np.uint8)
    count = min(len(palette), 256)
    lut[:count, 0] = palette[:count]
    return lut


# --- results -------------------------------------------------------------------------------


@dataclass(eq=False)
class Segmentation:
    """One frame's result on the model's device; the RGB frame and the colours are lazy.

    ``source`` is the frame as given (``channel_order``); on the CPU it may be a zero-copy view
    of the caller's buffer, so keep that buffer unchanged while the result is in use. The
    tensors returned by the methods are cached: do not modify them in place.
    """

    label_map: torch.Tensor  # HxW uint8 class ids at the frame's resolution
    source: torch.Tensor  # HxWx3 uint8 frame on the device, in channel_order
    palette: torch.Tensor  # Kx3 uint8 RGB
    channel_order: ChannelOrder = "rgb"
    _lut: np.ndarray | None = field(default=None, repr=False)  # CPU: palette look-up table
    _rgb: torch.Tensor | None = field(default=None, init=False, repr=False)
    _colour: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def frame(self) -> torch.Tensor:
        """HxWx3 uint8 RGB (the source itself for RGB input; converted once for BGR)."""
        if self._rgb is None:
            if self.channel_order == "rgb":
                self._rgb = self.source
            elif self.source.device.type == "cpu":
                self._rgb = torch.from_numpy(cv2.cvtColor(self.source.numpy(), cv2.COLOR_BGR2RGB))
            else:
                self._rgb = self.source.flip(2)
        return self._rgb

    def _on_cpu(self) -> bool:
        return self.label_map.device.type == "cpu"

    def color_mask(self) -> torch.Tensor:
        """HxWx3 uint8 RGB, one palette colour per class."""
        if self._colour is None:
            if self._on_cpu():
                lut = self._lut if self._lut is not None else _palette_lut(self.palette.numpy())
                self._colour = torch.from_numpy(cv2.applyColorMap(self.label_map.numpy(), lut))
            else:
                with torch.inference_mode():
                    self._colour = self.palette[self.label_map.long()]
        return self._colour

    def overlay(self, alpha: float, color_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(1 - alpha) * frame + alpha * colour``, rounded, HxWx3 uint8 RGB."""
        alpha = _check_alpha(alpha)
        colour = self.color_mask() if color_mask is None else color_mask
        if self._on_cpu():
            return torch.from_numpy(_blend_cpu(self.frame.numpy(), colour.numpy(), alpha, None))
        with torch.inference_mode():
            return _blend_torch(self.frame, colour, round(alpha * _ALPHA_ONE))


@dataclass
class HostSegmentation:
    """A frame's results as host arrays, ready for ``bytes(...)`` into messages.

    The arrays are the pipeline's reused output buffers: valid until its next
    ``fetch``/``segment_to_host`` call. Copy what you keep longer.
    """

    label_map: np.ndarray  # HxW uint8 class ids
    color_mask: np.ndarray | None = None  # HxWx3 uint8 RGB
    overlay: np.ndarray | None = None  # HxWx3 uint8 RGB


class _HostBuffers:
    """Reused host arrays by name; pinned (page-locked) when they serve CUDA copies."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self._tensors: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, shape: tuple[int, ...], dtype=torch.uint8) -> torch.Tensor:
        found = self._tensors.get(name)
        if found is None or tuple(found.shape) != shape or found.dtype != dtype:
            # A stream rarely changes size: keep only the latest shape per name.
            found = torch.empty(shape, dtype=dtype, pin_memory=self.pinned)
            self._tensors[name] = found
        return found

    def array(self, name: str, shape: tuple[int, ...], dtype=torch.uint8) -> np.ndarray:
        return self.tensor(name, shape, dtype).numpy()


# --- the pipeline --------------------------------------------------------------------------


class SegmentationPipeline:
    """Preprocess, infer and postprocess frames for one loaded model.

    ``upsample="labels"`` (default) takes the argmax at network resolution and scales the
    uint8 class map; ``"logits"`` interpolates the logits to the frame first (smoother edges,
    slower). ``cuda_graph=True`` (CUDA only, ignored on the CPU) makes
    :meth:`segment_to_host` capture one CUDA graph per frame size and replay it.

    Not thread-safe: one pipeline per inference thread. On CUDA it queues its work on its own
    stream and makes the caller's current stream wait for the tensors it returns.
    """

    def __init__(
        self, model: LoadedModel, upsample: Upsample = "labels", cuda_graph: bool = False
    ) -> None:
        if upsample not in ("labels", "logits"):
            raise ValueError(f"upsample must be 'labels' or 'logits', not {upsample!r}")
        self.model = model
        self.upsample = upsample
        meta = model.metadata
        device = model.device
        self._cuda = device.type == "cuda"
        self.cuda_graph = bool(cuda_graph) and self._cuda
        scale, bias = meta.affine()
        self._scale = torch.tensor(scale, device=device, dtype=model.dtype).view(1, 3, 1, 1)
        self._bias = torch.tensor(bias, device=device, dtype=model.dtype).view(1, 3, 1, 1)
        palette = np.zeros((max(meta.num_classes, 1), 3), np.uint8)
        palette[: meta.num_classes] = meta.palette
        self.palette = torch.from_numpy(palette).to(device)
        self._palette_lut = _palette_lut(palette)
        # CPU normalisation as a look-up table: value v of channel c -> v * scale[c] + bias[c]
        # (same float32 maths as a multiply-add, but one pass straight into the input buffer).
        values = np.arange(256, dtype=np.float32)[:, None]
        lut = values * np.float32(scale) + np.float32(bias)
        self._normalise_lut = np.ascontiguousarray(lut.astype(np.float32).reshape(256, 1, 3))
        self._cpu_fast = device.type == "cpu" and model.dtype == torch.float32
        self._host = _HostBuffers(pinned=self._cuda)  # outputs handed to the caller
        self._work = _HostBuffers(pinned=False)  # CPU scratch (input, argmax) never handed out
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._done = torch.cuda.Event(blocking=True) if self._cuda else None  # waits sleep
        self._upload_done = torch.cuda.Event() if self._cuda else None
        self._graphs: dict[tuple[int, int, str], _CudaGraphRunner] = {}
        if self._cuda:
            torch.backends.cudnn.benchmark = True  # fixed sizes: pick the fastest conv once

    @property
    def metadata(self) -> ModelMetadata:
        return self.model.metadata

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network is fed at for a frame of the given size."""
        meta = self.metadata
        if meta.input_size is not None:
            return meta.input_size[1], meta.input_size[0]
        m = meta.size_multiple
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    # --- CUDA stream discipline ------------------------------------------------------------

    @contextmanager
    def _on_stream(self):
        """Run the enclosed GPU work on the pipeline's stream, ordered after the caller's."""
        if self._stream is None:
            yield
            return
        caller = torch.cuda.current_stream(self.model.device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream):
            yield
        caller.wait_stream(self._stream)

    def _hand_over(self, *tensors: torch.Tensor | None) -> None:
        """Tell the caching allocator that the caller's stream uses these tensors too."""
        if self._stream is None:
            return
        caller = torch.cuda.current_stream(self.model.device)
        if caller == self._stream:
            return
        for tensor in tensors:
            if tensor is not None and tensor.is_cuda:
                tensor.record_stream(caller)

    # --- stages ----------------------------------------------------------------------------

    def upload(self, pixels: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 (any strides) -> device tensor, without a host float copy.

        CPU: a zero-copy view. CUDA: one copy into a reused pinned buffer, then a
        non-blocking copy to the device on the pipeline's stream.
        """
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {pixels.dtype} {pixels.shape}")
        if not self._cuda:
            return torch.from_numpy(pixels)
        staging = self._host.tensor("upload", tuple(pixels.shape))
        self._upload_done.synchronize()  # the previous frame's copy has left the buffer
        np.copyto(staging.numpy(), pixels)
        with self._on_stream():
            frame = torch.empty(staging.shape, dtype=torch.uint8, device=self.model.device)
            frame.copy_(staging, non_blocking=True)
            self._upload_done.record(self._stream)
        self._hand_over(frame)
        return frame

    def preprocess(
        self, frame: torch.Tensor, channel_order: ChannelOrder, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Device uint8 HxWx3 -> normalised 1x3xhxw network input (channels-last).

        ``out`` (a channels-last tensor of the right shape) is filled and returned instead of
        a new tensor.
        """
        _check_order(channel_order)
        if self._cpu_fast:
            height, width = frame.shape[:2]
            size = self.network_size(height, width)
            if out is None:
                out = _new_input(size, frame.device)
            return self._preprocess_cpu(frame.numpy(), channel_order, out)
        with self._on_stream(), torch.inference_mode():
            x = self._preprocess_torch(frame, channel_order)
            if out is not None:
                out.copy_(x)
                x = out
        self._hand_over(x)
        return x

    def _preprocess_cpu(self, pixels: np.ndarray, order: str, out: torch.Tensor) -> torch.Tensor:
        """uint8 resize, channel swap and a float LUT into ``out``'s NHWC memory: 3 passes."""
        height, width = out.shape[-2:]
        small = pixels
        if pixels.shape[:2] != (height, width):
            small = self._work.array("resized", (height, width, 3))
            cv2.resize(pixels, (width, height), dst=small, interpolation=cv2.INTER_LINEAR)
        if order != self.metadata.channel_order:
            swapped = self._work.array("swapped", (height, width, 3))
            small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR, dst=swapped)  # same swap both ways
        nhwc = out.permute(0, 2, 3, 1)[0].numpy()  # channels-last: a contiguous HxWx3 view
        cv2.LUT(small, self._normalise_lut, dst=nhwc)
        return out

    def _preprocess_torch(self, frame: torch.Tensor, channel_order: str) -> torch.Tensor:
        height, width = frame.shape[:2]
        size = self.network_size(height, width)
        x = frame.permute(2, 0, 1).unsqueeze(0)  # a view: channels-last strides already
        if channel_order != self.metadata.channel_order:
            x = x.flip(1)
        if size != (height, width):
            if x.device.type == "cpu":  # uint8 resize is vectorised on CPU: resize, then widen
                x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size,
                                  mode="bilinear", align_corners=False)
                x = x.to(self.model.dtype)
            else:
                x = F.interpolate(x.to(self.model.dtype), size=size, mode="bilinear",
                                  align_corners=False)
        else:
            x = x.to(self.model.dtype)
        x = torch.addcmul(self._bias, x, self._scale)
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network alone (on the pipeline's stream on CUDA)."""
        with self._on_stream():
            logits = run_network(self.model, x)
        self._hand_over(logits)
        return logits

    def postprocess(
        self, logits: torch.Tensor, height: int, width: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """NCHW logits -> HxW uint8 class map at the frame's resolution (into ``out`` if given)."""
        if logits.device.type == "cpu" and self.upsample == "labels":
            labels = out if out is not None else torch.empty((height, width), dtype=torch.uint8)
            self._postprocess_cpu(logits, labels.numpy())
            return labels
        with self._on_stream(), torch.inference_mode():
            labels = self._postprocess_torch(logits, height, width)
            if out is not None:
                out.copy_(labels)
                labels = out
        self._hand_over(labels)
        return labels

    def _postprocess_cpu(self, logits: torch.Tensor, out: np.ndarray) -> np.ndarray:
        """argmax at network resolution (torch), then uint8 and exact nearest gathers (numpy)."""
        h, w = logits.shape[-2:]
        index = self._work.tensor("argmax", (1, h, w), torch.int64)
        with torch.inference_mode():
            torch.argmax(logits, 1, out=index)
        small = self._work.array("labels_small", (h, w))
        np.copyto(small, index.numpy()[0], casting="unsafe")
        rows = self._work.array("labels_rows", (out.shape[0], w))
        return _upsample_labels_cpu(small, out, rows)

    def _postprocess_torch(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.upsample == "logits" and logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear",
                                   align_corners=False)
        labels = logits.argmax(1)[0].to(torch.uint8)
        return _upsample_labels_torch(labels, height, width)

    # --- whole frames ----------------------------------------------------------------------

    def segment(self, pixels: np.ndarray, channel_order: ChannelOrder = "rgb") -> Segmentation:
        """Segment one HxWx3 uint8 frame given in ``channel_order``; results stay on device."""
        _check_order(channel_order)
        frame = self.upload(pixels)
        return self._infer(frame, pixels, channel_order, None, _untimed)

    def _infer(
        self,
        frame: torch.Tensor,
        pixels: np.ndarray,
        channel_order: str,
        labels_out: torch.Tensor | None,
        stage: Timer,
    ) -> Segmentation:
        """Preprocess, network and postprocess of an uploaded frame."""
        height, width = frame.shape[:2]
        if self._cpu_fast:
            size = self.network_size(height, width)
            with stage("preprocess"):
                x = self._work.tensor("input", (1, *size, 3), torch.float32).permute(0, 3, 1, 2)
                x = self._preprocess_cpu(pixels, channel_order, x)  # NCHW view, NHWC memory
            with stage("forward"):
                logits = run_network(self.model, x)
            with stage("postprocess"):
                labels = self.postprocess(logits, height, width, out=labels_out)
        else:
            with self._on_stream(), torch.inference_mode():
                with stage("preprocess"):
                    x = self._preprocess_torch(frame, channel_order)
                with stage("forward"):
                    logits = run_network(self.model, x)
                with stage("postprocess"):
                    labels = self._postprocess_torch(logits, height, width)
                    if labels_out is not None:
                        labels = labels_out.copy_(labels)
            self._hand_over(labels)
        lut = self._palette_lut if not self._cuda else None
        return Segmentation(labels, frame, self.palette, channel_order, lut)

    def fetch(
        self,
        result: Segmentation,
        *,
        color_mask: bool = False,
        overlay_alpha: float | None = None,
        timer: Timer | None = None,
    ) -> HostSegmentation:
        """Bring the label map (and the colour mask / overlay if asked) to the host.

        The arrays are reused output buffers (pinned on CUDA, filled by non-blocking copies;
        the caller waits once, for all of them): valid until the next call.
        """
        alpha = None if overlay_alpha is None else _check_alpha(overlay_alpha)
        stage = timer or _untimed
        if self._cuda:
            return self._fetch_cuda(result, color_mask, alpha, stage)
        height, width = result.label_map.shape
        labels = result.label_map.numpy()
        colour = overlay = None
        if color_mask or alpha is not None:
            with stage("color_mask"):
                colour = self._host.array("color_mask", (height, width, 3))
                lut = result._lut if result._lut is not None else self._palette_lut
                cv2.applyColorMap(labels, lut, dst=colour)
        if alpha is not None:
            with stage("overlay"):
                overlay = self._host.array("overlay", (height, width, 3))
                _blend_cpu(self._rgb_frame_cpu(result), colour, alpha, overlay)
        return HostSegmentation(labels, colour if color_mask else None, overlay)

    def _rgb_frame_cpu(self, result: Segmentation) -> np.ndarray:
        """The RGB frame for a blend; BGR sources are converted into scratch, not cached."""
        if result.channel_order == "rgb" or result._rgb is not None:
            return result.frame.numpy()
        rgb = self._work.array("rgb_frame", tuple(result.source.shape))
        return cv2.cvtColor(result.source.numpy(), cv2.COLOR_BGR2RGB, dst=rgb)

    def _fetch_cuda(
        self, result: Segmentation, color_mask: bool, alpha: float | None, stage: Timer
    ) -> HostSegmentation:
        height, width = result.label_map.shape
        host_labels = self._host.tensor("label_map", (height, width))
        host_colour = host_overlay = colour = overlay = None
        with self._on_stream(), torch.inference_mode():
            if color_mask or alpha is not None:
                with stage("color_mask"):
                    colour = result.color_mask()
            if alpha is not None:
                with stage("overlay"):
                    overlay = result.overlay(alpha, colour)
            with stage("download"):
                host_labels.copy_(result.label_map, non_blocking=True)
                if color_mask:
                    host_colour = self._host.tensor("color_mask", (height, width, 3))
                    host_colour.copy_(colour, non_blocking=True)
                if overlay is not None:
                    host_overlay = self._host.tensor("overlay", (height, width, 3))
                    host_overlay.copy_(overlay, non_blocking=True)
                self._done.record(self._stream)
                self._done.synchronize()  # the one wait: every copy above has landed
        return HostSegmentation(
            host_labels.numpy(),
            None if host_colour is None else host_colour.numpy(),
            None if host_overlay is None else host_overlay.numpy(),
        )

    def segment_to_host(
        self,
        pixels: np.ndarray,
        channel_order: ChannelOrder = "rgb",
        *,
        color_mask: bool = False,
        overlay_alpha: float | None = None,
        timer: Timer | None = None,
    ) -> HostSegmentation:
        """Frame in, host arrays out, through reused buffers: the node's hot path.

        Same results as ``fetch(segment(...))``. On CUDA with ``cuda_graph=True`` one
        captured graph per frame size replaces the per-op launches (timed as one "graph"
        stage). ``timer`` wraps each stage, for the benchmark.
        """
        _check_order(channel_order)
        alpha = None if overlay_alpha is None else _check_alpha(overlay_alpha)
        stage = timer or _untimed
        if self.cuda_graph and self.upsample == "labels":
            if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
                raise ValueError(
                    f"expected an HxWx3 uint8 image, got {pixels.dtype} {pixels.shape}")
            runner = self._graph_for(pixels.shape[0], pixels.shape[1], channel_order)
            with stage("graph"):
                return runner.run(pixels, color_mask, alpha)
        with stage("upload"):
            frame = self.upload(pixels)
        height, width = frame.shape[:2]
        labels_out = None if self._cuda else self._host.tensor("label_map", (height, width))
        result = self._infer(frame, pixels, channel_order, labels_out, stage)
        return self.fetch(result, color_mask=color_mask, overlay_alpha=alpha, timer=stage)

    def _graph_for(self, height: int, width: int, channel_order: str) -> _CudaGraphRunner:
        key = (height, width, channel_order)
        runner = self._graphs.pop(key, None)
        if runner is None:
            while len(self._graphs) >= _MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))  # least recently used
            runner = _CudaGraphRunner(self, height, width, channel_order)
        self._graphs[key] = runner  # most recently used last
        return runner


class _CudaGraphRunner:
    """Preprocess, network, postprocess, colours and blend captured once for one frame size.

    The graph reads a static device frame and a 0-d blend weight and writes static outputs;
    the copies in and out are issued around each replay (pinned buffers, non-blocking), so
    the host only waits once per frame, on one event.
    """

    def __init__(self, pipeline: SegmentationPipeline, height: int, width: int, order: str):
        self.pipeline = pipeline
        self.shape = (height, width)
        device = pipeline.model.device
        stream = pipeline._stream
        self.frame = torch.zeros((height, width, 3), dtype=torch.uint8, device=device)
        self.weight = torch.zeros((), dtype=torch.int16, device=device)
        self._weight_value = 0
        self.order = order
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # TorchScript profiles and fuses, cuDNN picks kernels
                self._body()
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=stream):
            self.labels, self.colour, self.overlay = self._body()

    def _body(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.pipeline
        x = p._preprocess_torch(self.frame, self.order)
        logits = run_network(p.model, x)
        labels = p._postprocess_torch(logits, *self.shape)
        colour = p.palette[labels.long()]
        rgb = self.frame if self.order == "rgb" else self.frame.flip(2)
        return labels, colour, _blend_torch(rgb, colour, self.weight)

    def run(self, pixels: np.ndarray, color_mask: bool, alpha: float | None) -> HostSegmentation:
        p = self.pipeline
        height, width = self.shape
        staging = p._host.tensor("upload", (height, width, 3))
        p._upload_done.synchronize()
        np.copyto(staging.numpy(), pixels)
        host_labels = p._host.tensor("label_map", (height, width))
        host_colour = p._host.tensor("color_mask", (height, width, 3)) if color_mask else None
        host_overlay = None
        stream = p._stream
        stream.wait_stream(torch.cuda.current_stream(p.model.device))
        with torch.cuda.stream(stream):
            self.frame.copy_(staging, non_blocking=True)
            p._upload_done.record(stream)
            if alpha is not None:
                weight = round(alpha * _ALPHA_ONE)
                if weight != self._weight_value:
                    self.weight.fill_(weight)
                    self._weight_value = weight
            self.graph.replay()
            host_labels.copy_(self.labels, non_blocking=True)
            if host_colour is not None:
                host_colour.copy_(self.colour, non_blocking=True)
            if alpha is not None:
                host_overlay = p._host.tensor("overlay", (height, width, 3))
                host_overlay.copy_(self.overlay, non_blocking=True)
            p._done.record(stream)
        p._done.synchronize()
        return HostSegmentation(
            host_labels.numpy(),
            None if host_colour is None else host_colour.numpy(),
            None if host_overlay is None else host_overlay.numpy(),
        )


def _new_input(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """An empty float32 1x3xhxw network input in channels-last memory."""
    height, width = size
    return torch.empty((1, height, width, 3), dtype=torch.float32, device=device).permute(
        0, 3, 1, 2)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Device uint8 tensor -> contiguous host array (a copy only when on another device)."""
    return tensor.contiguous().cpu().numpy()
