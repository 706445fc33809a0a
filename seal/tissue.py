"""A deep tissue segmenter from a local weights file, for :func:`hestkit.tissue.segment_tissue`.

:class:`DeepLabTissueSegmenter` is a torchvision DeepLabV3-ResNet50 with a 2-class head
(background, tissue): the architecture of HEST's tissue segmenter
(``hest.HESTData.segment_tissue(method="deep")``, checkpoint ``deeplabv3_seg_v4.ckpt``) and
TRIDENT's ``HESTSegmenter``. Their checkpoints load as they are (a Lightning ``state_dict``
with ``model.`` prefixes; the auxiliary head is dropped). Nothing is downloaded: the
weights are a local file, as for every model of :mod:`seal`.

The segmenter receives the working image of ``segment_tissue`` (at ``target_mpp``), resamples
it to the resolution the network was trained at (``model_mpp``, 1 um/px for HEST's), runs it
on ``tile_px`` tiles (ImageNet normalisation) and maps the tissue class back.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from .errors import WeightsError
from .models import _read_state_dict

__all__ = ["DeepLabTissueSegmenter"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _deeplab() -> torch.nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    model: torch.nn.Module = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=2, aux_loss=False)
    return model


class DeepLabTissueSegmenter:
    """DeepLabV3-ResNet50 tissue segmenter (a :class:`hestkit.tissue.TissueSegmenter`).

    Args:
        weights: local state dict (``.ckpt``/``.pth``/``.pt``/``.bin``/``.safetensors``).
        model_mpp: um/px the network was trained at.
        tile_px: side of the tiles it runs on.
        device: torch device.
        tissue_class: output channel of tissue.
        batch_size: tiles per forward pass.
    """

    name = "deeplabv3"

    def __init__(
        self,
        weights: str | Path,
        *,
        model_mpp: float = 1.0,
        tile_px: int = 512,
        device: str = "cpu",
        tissue_class: int = 1,
        batch_size: int = 4,
    ) -> None:
        path = Path(weights)
        sd = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("aux_classifier")}
        model = _deeplab()
        own = model.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
        if missing or unexpected or bad:
            raise WeightsError(
                f"{path}: not a 2-class DeepLabV3-ResNet50 state dict ({len(missing)} missing keys, e.g. "
                f"{', '.join(missing[:2]) or '-'}; {len(unexpected)} unexpected, e.g. {', '.join(unexpected[:2]) or '-'}; "
                f"{len(bad)} shape mismatches, e.g. {', '.join(bad[:2]) or '-'}). Fix: give HEST's deeplabv3_seg_v4.ckpt "
                "or weights trained with torchvision's deeplabv3_resnet50(num_classes=2)"
            )
        model.load_state_dict(sd, strict=True)
        self.model = model.eval().to(device)
        self.device = device
        self.model_mpp = float(model_mpp)
        self.tile_px = int(tile_px)
        self.tissue_class = int(tissue_class)
        self.batch_size = int(batch_size)
        self.weights = path

    @torch.inference_mode()
    def __call__(self, rgb: NDArray[np.uint8], px_um: float) -> NDArray[np.bool_]:
        import cv2

        h, w = rgb.shape[:2]
        scale = float(px_um) / self.model_mpp  # >1: the network wants finer pixels
        mh, mw = max(1, round(h * scale)), max(1, round(w * scale))
        img = rgb if (mh, mw) == (h, w) else np.asarray(cv2.resize(rgb, (mw, mh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
        t = self.tile_px
        ph, pw = math.ceil(mh / t) * t, math.ceil(mw / t) * t
        padded = np.full((ph, pw, 3), 255, dtype=np.uint8)
        padded[:mh, :mw] = img
        mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_STD).view(1, 3, 1, 1)
        out = np.zeros((ph, pw), dtype=bool)
        corners = [(y, x) for y in range(0, ph, t) for x in range(0, pw, t)]
        for i in range(0, len(corners), self.batch_size):
            batch = corners[i : i + self.batch_size]
            x = torch.from_numpy(np.stack([padded[y : y + t, xx : xx + t] for y, xx in batch])).permute(0, 3, 1, 2).float() / 255.0
            x = ((x - mean) / std).to(self.device)
            logits = self.model(x)["out"]
            pred = (logits.argmax(dim=1) == self.tissue_class).cpu().numpy()
            for (y, xx), p in zip(batch, pred, strict=True):
                out[y : y + t, xx : xx + t] = p
        mask = out[:mh, :mw]
        if (mh, mw) != (h, w):
            mask = np.asarray(cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)) > 0
        return mask
