"""The contenders of the core part: our frame path, and the tutorial-style pipeline it
replaces. Both take a message and return the three image messages, timing named stages."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from seg_perception.core.image_codec import ImageMessageWriter, decode_image_msg
from seg_perception.tools.bench.frames import image_type, make_image


class OurPipeline:
    """The package's frame path on one frame, exactly as the node runs it, stage by stage:
    decode, :func:`~seg_perception.core.frame.process_frame`, messages."""

    name = "pipeline"

    def __init__(self, loaded: Any, vehicle_config: Any, alpha: float, cuda_graph: bool,
                 confidence: bool = False):
        from seg_perception.core.frame import OutputRequest, StreamState
        from seg_perception.core.pipeline import SegmentationPipeline

        self.pipeline = SegmentationPipeline(loaded, cuda_graph=cuda_graph)
        self.stream = StreamState(vehicle_config)
        # ``confidence``: also the confidence map and its message, as the node does for a
        # subscriber of segmentation/confidence.
        self.request = OutputRequest(color_mask=True, overlay_alpha=alpha, confidence=confidence)
        outputs = 4 if confidence else 3
        self.writers = [ImageMessageWriter(image_type() or SimpleNamespace)
                        for _ in range(outputs)]

    def __call__(self, msg: Any, timer: Callable[[str], Any]) -> list[Any]:
        from seg_perception.core.frame import process_frame

        with timer("msg_to_array"):
            decoded = decode_image_msg(msg)
        result = process_frame(self.pipeline, decoded, self.stream, self.request, timer=timer)
        with timer("array_to_msg"):
            label_map, color_mask, overlay = self.writers[:3]
            messages = [label_map(result.label_map, "mono8", msg.header),
                        color_mask(result.color_mask, "rgb8", msg.header),
                        overlay(result.overlay, "rgb8", msg.header)]
            if result.confidence is not None:
                messages.append(self.writers[3](result.confidence, "mono8", msg.header))
            return messages

    def network_input(self, msg: Any) -> Any:
        """The input tensor the pipeline feeds the network for this frame."""
        decoded = decode_image_msg(msg)
        return self.pipeline.network_input(decoded.pixels, decoded.channel_order)


class NaivePipeline:
    """The usual way, done competently: what a tutorial-based node would do per frame.

    PIL image from the message bytes; ``torchvision.transforms.functional`` to_tensor /
    resize (bilinear, no antialias: the same maths as ours) / normalize on CPU float
    tensors; the eager network (NCHW, fp32) under ``torch.no_grad()`` with the same weights;
    argmax on the CPU at network resolution and a nearest resize of the uint8 labels; the
    palette by numpy indexing; ``cv2.addWeighted``. Vectorised throughout, same threads.
    """

    name = "naive"

    def __init__(self, loaded: Any, vehicle_config: Any, alpha: float,
                 network_size: Callable[[int, int], tuple[int, int]]) -> None:
        import torch

        from seg_perception.core.vehicle_ahead import VehicleAheadDetector
        from seg_perception.models.registry import BUILTIN_MODELS

        meta = loaded.metadata
        spec = BUILTIN_MODELS.get(meta.name)
        if spec is not None:
            self.model = spec.build(pretrained=True).eval()
            self.what = f"eager {type(self.model).__name__} from the registry"
        else:  # an exported file: its TorchScript as saved (no freezing, NCHW, fp32)
            self.model = torch.jit.load(str(loaded.path), map_location="cpu").eval().float()
            self.what = "TorchScript as saved (not frozen, NCHW)"
        self.device = loaded.device
        self.model = self.model.to(self.device)
        self.meta = meta
        scale, bias = meta.affine()
        # y = v * scale + bias for v in 0..255 == normalize(v / 255, mean, std):
        self.std = [1.0 / (255.0 * s) for s in scale]
        self.mean = [-b * sd for b, sd in zip(bias, self.std, strict=True)]
        self.palette = np.zeros((max(meta.num_classes, 256), 3), np.uint8)
        self.palette[: meta.num_classes] = meta.palette
        self.detector = VehicleAheadDetector(vehicle_config)
        self.alpha = alpha
        self.network_size = network_size  # (H, W) for a frame: the same input as ours

    def __call__(self, msg: Any, timer: Callable[[str], Any]) -> list[Any]:
        import torch
        import torchvision.transforms.functional as TF
        from PIL import Image as PILImage

        with timer("msg_to_array"):
            array = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            image = PILImage.fromarray(array)  # rgb8
        with timer("preprocess"):
            tensor = TF.to_tensor(image)  # 3xHxW float in 0..1
            if self.meta.channel_order == "bgr":
                tensor = tensor[[2, 1, 0]]
            size = self.network_size(msg.height, msg.width)
            tensor = TF.resize(tensor, list(size), interpolation=TF.InterpolationMode.BILINEAR,
                               antialias=False)
            tensor = TF.normalize(tensor, self.mean, self.std).unsqueeze(0).to(self.device)
        with timer("forward"), torch.no_grad():
            logits = self.model(tensor)
        with timer("postprocess"):
            labels = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            labels = cv2.resize(labels, (msg.width, msg.height),
                                interpolation=cv2.INTER_NEAREST)
        with timer("color_mask"):
            colour = self.palette[labels]
        with timer("overlay"):
            overlay = cv2.addWeighted(array, 1.0 - self.alpha, colour, self.alpha, 0.0)
        with timer("vehicle"):
            self.detector.update(labels)
        with timer("array_to_msg"):
            return [make_image(labels, "mono8", msg.header), make_image(colour, "rgb8", msg.header),
                    make_image(overlay, "rgb8", msg.header)]
