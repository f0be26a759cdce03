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
    FrameJob,
    HostBuffers,
    HostSegmentation,
    OutputRequest,
    Timer,
    class_maps,
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
        self._upload_done: dict[int, torch.cuda.Event] = {}  # per slot
        self._graphs: dict[tuple[int, int, str, OutputRequest], _CudaGraph] = {}
        torch.backends.cudnn.benchmark = True  # fixed sizes: pick the fastest conv once

    @contextmanager
    def _on_stream(self):
        """The enclosed GPU work on the back end's stream, ordered after the caller's."""
        caller = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(caller)
        with torch.cuda.stream(self._stream), torch.inference_mode():
            yield
        caller.wait_stream(self._stream)

    def upload(self, pixels: np.ndarray, out: torch.Tensor | None = None,
               slot: int = 0) -> torch.Tensor:
        """HxWx3 uint8 (any strides) -> device tensor: one host copy into the slot's reused
        pinned buffer, then a non-blocking copy on the back end's stream."""
        staging = self._host.tensor(f"upload{slot}", tuple(pixels.shape))
        done = self._upload_done.setdefault(slot, torch.cuda.Event())
        done.synchronize()  # the previous frame's copy has left the buffer
        np.copyto(staging.numpy(), pixels)
        with self._on_stream():
            if out is None:
                out = torch.empty(staging.shape, dtype=torch.uint8, device=self.device)
            out.copy_(staging, non_blocking=True)
            done.record(self._stream)
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

    def finish(self, frame: torch.Tensor, scores: torch.Tensor, job: FrameJob,
               weight: int | torch.Tensor | None, stage: Timer) -> tuple[torch.Tensor, ...]:
        """A frame's 1xCxhxw network output -> (labels, confidence, colour mask, overlay; the
        last three None when not asked for), all on the GPU."""
        height, width = frame.shape[:2]
        request, smoother = job.request, job.smoother
        if smoother is not None:
            with stage("smoothing"):
                scores = smoother.update(scores, job.stamp_s)
        with stage("postprocess"):
            small_labels, small_conf = class_maps(scores, smoother is not None,
                                                  request.confidence, request.min_confidence)
            labels = upsample_labels(small_labels, height, width)
            conf = None if small_conf is None else upsample_labels(small_conf, height, width)
        colour = overlay = None
        if request.color_mask or weight is not None:
            with stage("color_mask"):
                colour = self._palette[labels.long()]
        if weight is not None:
            with stage("overlay"):
                rgb = frame if job.channel_order == "rgb" else frame.flip(2)
                overlay = blend(rgb, colour, weight)
        return labels, conf, colour, overlay

    def device_frame(self, frame: torch.Tensor, job: FrameJob,
                     weight: int | torch.Tensor | None, stage: Timer) -> tuple[torch.Tensor, ...]:
        """Device frame -> :meth:`finish`'s outputs: the whole frame on the GPU."""
        with stage("preprocess"):
            x = self.preprocess(frame, job.channel_order)
        with stage("forward"):
            scores = run_network(self.model, x)
        return self.finish(frame, scores, job, weight, stage)

    def network_input(self, pixels: np.ndarray, channel_order: str) -> torch.Tensor:
        frame = self.upload(pixels)
        with self._on_stream():
            return self.preprocess(frame, channel_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._on_stream():
            return run_network(self.model, x)

    def segment_to_host(self, job: FrameJob, stage: Timer, slot: int = 0) -> HostSegmentation:
        weight = _blend_weight(job.request)
        if self.cuda_graph and job.smoother is None:  # a smoother's state lives outside
            pixels = job.pixels
            graph = self._graph_for(pixels.shape[0], pixels.shape[1], job.channel_order,
                                    job.request)
            with stage("graph"):
                self.upload(pixels, out=graph.frame, slot=slot)
                with self._on_stream():
                    graph.replay(weight)
                outputs = (graph.labels, graph.confidence, graph.colour, graph.overlay)
                return self._download([(outputs, job.request, slot)])[0]
        with stage("upload"):
            frame = self.upload(job.pixels, slot=slot)
        with self._on_stream():
            outputs = self.device_frame(frame, job, weight, stage)
        with stage("download"):
            return self._download([(outputs, job.request, slot)])[0]

    def segment_batch(self, jobs: list[FrameJob], stage: Timer) -> list[HostSegmentation]:
        """One network call for all the frames (same network input size), one wait."""
        if len(jobs) == 1:
            return [self.segment_to_host(jobs[0], stage)]
        with stage("upload"):
            frames = [self.upload(job.pixels, slot=slot) for slot, job in enumerate(jobs)]
        with self._on_stream():
            with stage("preprocess"):
                x = torch.cat([self.preprocess(frame, job.channel_order)
                               for frame, job in zip(frames, jobs, strict=True)])
            with stage("forward"):
                scores = run_network(self.model, x)
            outputs = [self.finish(frame, scores[index:index + 1], job,
                                   _blend_weight(job.request), stage)
                       for index, (frame, job) in enumerate(zip(frames, jobs, strict=True))]
        with stage("download"):
            return self._download([(out, job.request, slot)
                                   for slot, (out, job) in enumerate(zip(outputs, jobs,
                                                                          strict=True))])

    def _download(self, frames: list[tuple[tuple[torch.Tensor | None, ...], OutputRequest, int]]
                  ) -> list[HostSegmentation]:
        """Non-blocking copies of each frame's labels and the confidence, colour mask and
        overlay it asked for into its slot's reused pinned buffers, then one wait."""
        names = ("label_map", "confidence", "color_mask", "overlay")
        results = []
        with self._on_stream():
            for outputs, request, slot in frames:
                wanted = (True, request.confidence, request.color_mask,
                          request.overlay_alpha is not None)
                host: list[np.ndarray | None] = []
                for name, tensor, keep in zip(names, outputs, wanted, strict=True):
                    if tensor is None or not keep:
                        host.append(None)
                        continue
                    buffer = self._host.tensor(f"{name}{slot}", tuple(tensor.shape))
                    buffer.copy_(tensor, non_blocking=True)
                    host.append(buffer.numpy())
                labels, conf, colour, overlay = host
                results.append(HostSegmentation(labels, colour, overlay, conf))
            self._done.record(self._stream)
        self._done.synchronize()
        return results

    def _graph_for(self, height: int, width: int, channel_order: str,
                   request: OutputRequest) -> _CudaGraph:
        # The graph always makes every image; whether it computes confidence and which
        # min_confidence it applies are baked into it.
        baked = OutputRequest(True, 0.5, request.confidence, request.min_confidence)
        key = (height, width, channel_order, baked)
        graph = self._graphs.pop(key, None)
        if graph is None:
            while len(self._graphs) >= _MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))  # least recently used
            graph = _CudaGraph(self, height, width, channel_order, baked)
        self._graphs[key] = graph  # most recently used last
        return graph


def _blend_weight(request: OutputRequest) -> int | None:
    alpha = request.overlay_alpha
    return None if alpha is None else round(alpha * ALPHA_ONE)


class _CudaGraph:
    """:meth:`CudaBackend.device_frame` captured once for one frame size, with colours.

    The graph reads a static device frame and a 0-d blend weight and writes static outputs.
    """

    def __init__(self, backend: CudaBackend, height: int, width: int, order: str,
                 request: OutputRequest) -> None:
        device = backend.device
        self.frame = torch.zeros((height, width, 3), dtype=torch.uint8, device=device)
        self.weight = torch.zeros((), dtype=torch.int16, device=device)
        self._weight_value = 0
        stream = backend._stream
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # TorchScript profiles and fuses, cuDNN picks kernels
                self._body(backend, order, request)
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=stream):
            self.labels, self.confidence, self.colour, self.overlay = self._body(
                backend, order, request)

    def _body(self, backend: CudaBackend, order: str, request: OutputRequest):
        return backend.device_frame(self.frame, FrameJob(self.frame, order, request),
                                    self.weight, untimed)

    def replay(self, weight: int | None) -> None:
        """On the back end's stream (the caller's context): set the blend weight, replay."""
        if weight is not None and weight != self._weight_value:
            self.weight.fill_(weight)
            self._weight_value = weight
        self.graph.replay()
