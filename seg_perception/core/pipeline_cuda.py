"""The CUDA back end: everything on the GPU, one wait per frame.

uint8 frames go through a reused pinned buffer with a non-blocking copy on the back end's own
stream; resize, channel order, normalisation, network, argmax, nearest upsampling, colours and
blend are torch on the GPU (:meth:`CudaBackend.device_frame`, the one definition of that
maths); results come back with non-blocking copies into reused pinned buffers and the caller
waits once, on one event. With ``cuda_graph=True`` the same :meth:`~CudaBackend.device_frame`
is captured once per frame size and replayed (no per-op launch overhead).

Not yet measured on a GPU: the tests that need CUDA skip on machines without one, and
``scripts/device_check.sh`` runs them with the benchmark where CUDA is present.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from seg_perception.core.pipeline_base import (
    ALPHA_ONE,
    Backend,
    HostBuffers,
    HostSegmentation,
    Timer,
    nearest_indices,
    untimed,
)
from seg_perception.models.loading import LoadedModel, run_network

_MAX_GRAPHS = 2  # captured CUDA graphs kept (one per frame size / channel order)


@lru_cache(maxsize=16)
def _index_tensor(small: int, large: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(nearest_indices(small, large).astype(np.int64)).to(device)


def upsample_labels(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """hxw class map -> HxW with the same exact indices as the CPU back end (two gathers)."""
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    rows = _index_tensor(h, height, labels.device)
    cols = _index_tensor(w, width, labels.device)
    return labels.index_select(0, rows).index_select(1, cols)


def blend(frame: torch.Tensor, colour: torch.Tensor, weight: int | torch.Tensor) -> torch.Tensor:
    """``((128 - w) * frame + w * colour + 64) >> 7`` in int16: a rounded alpha blend."""
    mixed = frame.to(torch.int16) * (ALPHA_ONE - weight)
    mixed += colour.to(torch.int16) * weight
    mixed += ALPHA_ONE // 2
    return (mixed >> 7).to(torch.uint8)  # >> 7 == // ALPHA_ONE


class CudaBackend(Backend):
    """Frames through one model on one CUDA device; not thread-safe (one per thread).

    Work is queued on the back end's own stream; the host waits once per frame.
    """

    def __init__(self, model: LoadedModel, cuda_graph: bool = False) -> None:
        super().__init__(model)
        device = model.device
        self.device = device
        self.cuda_graph = cuda_graph
        self._scale = torch.tensor(self.scale, device=device, dtype=model.dtype).view(1, 3, 1, 1)
        self._bias = torch.tensor(self.bias, device=device, dtype=model.dtype).view(1, 3, 1, 1)
        self._palette = torch.from_numpy(self.palette).to(device)
        self._host = HostBuffers(pinned=True)
        self._stream = torch.cuda.Stream(device)
        self._done = torch.cuda.Event(blocking=True)  # the host sleeps instead of spinning
        self._upload_done = torch.cuda.Event()
        self._graphs: dict[tuple[int, int, str], _CudaGraph] = {}
        torch.backends.cudnn.benchmark = True  # fixed sizes: pick the fastest conv once

    @contextmanager
    def _on_stream(self):
        """The enclosed GPU work on the back end's stream, ordered after the caller's."""
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream), torch.inference_mode():
            yield
        caller.wait_stream(self._stream)

    def upload(self, pixels: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """HxWx3 uint8 (any strides) -> device tensor: one host copy into the reused pinned
        buffer, then a non-blocking copy on the back end's stream."""
        staging = self._host.tensor("upload", tuple(pixels.shape))
        self._upload_done.synchronize()  # the previous frame's copy has left the buffer
        np.copyto(staging.numpy(), pixels)
        with self._on_stream():
            if out is None:
                out = torch.empty(staging.shape, dtype=torch.uint8, device=self.device)
            out.copy_(staging, non_blocking=True)
            self._upload_done.record(self._stream)
        return out

    def preprocess(self, frame: torch.Tensor, channel_order: str) -> torch.Tensor:
        """Device uint8 HxWx3 -> normalised 1x3xhxw network input (channels-last)."""
        height, width = frame.shape[:2]
        size = self.network_size(height, width)
        x = frame.permute(2, 0, 1).unsqueeze(0)
        if channel_order != self.metadata.channel_order:
            x = x.flip(1)
        x = x.to(self.model.dtype)
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = torch.addcmul(self._bias, x, self._scale)
        return x.contiguous(memory_format=torch.channels_last)

    def device_frame(self, frame: torch.Tensor, channel_order: str, colours: bool,
                     weight: int | torch.Tensor | None, stage: Timer):
        """Device frame -> (labels, colour mask or None, overlay or None), all on the GPU."""
        height, width = frame.shape[:2]
        with stage("preprocess"):
            x = self.preprocess(frame, channel_order)
        with stage("forward"):
            logits = run_network(self.model, x)
        with stage("postprocess"):
            labels = upsample_labels(logits.argmax(1)[0].to(torch.uint8), height, width)
        colour = overlay = None
        if colours or weight is not None:
            with stage("color_mask"):
                colour = self._palette[labels.long()]
        if weight is not None:
            with stage("overlay"):
                rgb = frame if channel_order == "rgb" else frame.flip(2)
                overlay = blend(rgb, colour, weight)
        return labels, colour, overlay

    def network_input(self, pixels: np.ndarray, channel_order: str) -> torch.Tensor:
        frame = self.upload(pixels)
        with self._on_stream():
            return self.preprocess(frame, channel_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._on_stream():
            return run_network(self.model, x)

    def segment_to_host(self, pixels: np.ndarray, channel_order: str, color_mask: bool,
                        overlay_alpha: float | None, stage: Timer) -> HostSegmentation:
        weight = None if overlay_alpha is None else round(overlay_alpha * ALPHA_ONE)
        if self.cuda_graph:
            graph = self._graph_for(pixels.shape[0], pixels.shape[1], channel_order)
            with stage("graph"):
                self.upload(pixels, out=graph.frame)
                with self._on_stream():
                    graph.replay(weight)
                return self._download(graph.labels, graph.colour if color_mask else None,
                                      graph.overlay if weight is not None else None)
        with stage("upload"):
            frame = self.upload(pixels)
        with self._on_stream():
            labels, colour, overlay = self.device_frame(frame, channel_order, color_mask,
                                                        weight, stage)
        with stage("download"):
            return self._download(labels, colour if color_mask else None, overlay)

    def _download(self, labels: torch.Tensor, colour: torch.Tensor | None,
                  overlay: torch.Tensor | None) -> HostSegmentation:
        """Non-blocking copies into reused pinned buffers, then the frame's one wait."""
        host = [None, None, None]
        with self._on_stream():
            for index, (name, tensor) in enumerate(
                    (("label_map", labels), ("color_mask", colour), ("overlay", overlay))):
                if tensor is not None:
                    host[index] = self._host.tensor(name, tuple(tensor.shape))
                    host[index].copy_(tensor, non_blocking=True)
            self._done.record(self._stream)
        self._done.synchronize()
        return HostSegmentation(*(None if t is None else t.numpy() for t in host))

    def _graph_for(self, height: int, width: int, channel_order: str) -> _CudaGraph:
        key = (height, width, channel_order)
        graph = self._graphs.pop(key, None)
        if graph is None:
            while len(self._graphs) >= _MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))  # least recently used
            graph = _CudaGraph(self, height, width, channel_order)
        self._graphs[key] = graph  # most recently used last
        return graph


class _CudaGraph:
    """:meth:`CudaBackend.device_frame` captured once for one frame size, with colours.

    The graph reads a static device frame and a 0-d blend weight and writes static outputs.
    """

    def __init__(self, backend: CudaBackend, height: int, width: int, order: str) -> None:
        device = backend.device
        self.frame = torch.zeros((height, width, 3), dtype=torch.uint8, device=device)
        self.weight = torch.zeros((), dtype=torch.int16, device=device)
        self._weight_value = 0
        stream = backend._stream
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # TorchScript profiles and fuses, cuDNN picks kernels
                self._body(backend, order)
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=stream):
            self.labels, self.colour, self.overlay = self._body(backend, order)

    def _body(self, backend: CudaBackend, order: str):
        return backend.device_frame(self.frame, order, True, self.weight, untimed)

    def replay(self, weight: int | None) -> None:
        """On the back end's stream (the caller's context): set the blend weight, replay."""
        if weight is not None and weight != self._weight_value:
            self.weight.fill_(weight)
            self._weight_value = weight
        self.graph.replay()
