"""LPIPS (Zhang et al. 2018, v0.1) with the unmodified ``lpips`` package and offline backbone weights.

``lpips.LPIPS(net=..., pnet_rand=True)`` builds the AlexNet / VGG16 trunk without downloading anything and loads the
package's own v0.1 linear heads; we then copy the ImageNet features from :mod:`stages.evaluate.lpips_weights` into
``net.sliceK.N``. Conventions (``../shared/spec/metrics-and-data.md`` §3):

* standard LPIPS: images in [0, 1] are mapped to [-1, 1] (x * 2 - 1) before the scaling layer (``normalize=True``);
* ``lpips_vgg_3dgs``: VGG fed [0, 1] directly, as 3DGS / 4DGaussians' ``lpipsPyTorch`` does (10-30 % lower);
* DyCheck mLPIPS: AlexNet's spatial map on masked images (masked pixels become 0, i.e. -1 after the mapping),
  averaged over the mask.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Union

import numpy as np
import torch

from stages.evaluate.lpips_weights import load_backbone

Image = Union[np.ndarray, torch.Tensor]


class LPIPS:
    """A frozen LPIPS model for one backbone ("alex" or "vgg") on ``device``."""

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu", prefer_torchvision: bool = True):
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice for `pretrained=`
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        state, self.source = load_backbone(net, prefer_torchvision)
        missing, unexpected = self.model.net.load_state_dict(state, strict=False)
        if unexpected or any(k.endswith((".weight", ".bias")) for k in missing):
            raise RuntimeError(f"LPIPS {net}: backbone keys do not match (missing {missing}, unexpected {unexpected})")
        self.net = net
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    def _pair(self, prediction: Image, target: Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (H, W, 3) images in [0, 1] -> two [1, 3, H, W] float32 tensors on the device."""
        def to_tensor(image: Image) -> torch.Tensor:
            t = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
            return t.to(self.device, torch.float32).permute(2, 0, 1)[None]  # (H,W,3) -> [1,3,H,W]

        a, b = to_tensor(prediction), to_tensor(target)
        if a.shape != b.shape or a.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (H, W, 3) images of the same size, got {tuple(a.shape)}, "
                             f"{tuple(b.shape)}")
        return a, b

    @torch.no_grad()
    def __call__(self, prediction: Image, target: Image, inputs_in_minus1_1: bool = True) -> float:
        """LPIPS distance of two (H, W, 3) images in [0, 1].

        inputs_in_minus1_1: True = standard LPIPS (inputs mapped to [-1, 1]); False = the 3DGS convention
        ([0, 1] fed straight into the scaling layer)."""
        a, b = self._pair(prediction, target)
        self.model.spatial = False
        return float(self.model(a, b, normalize=inputs_in_minus1_1).reshape(()))

    @torch.no_grad()
    def masked(self, prediction: Image, target: Image, mask: Image) -> float:
        """DyCheck mLPIPS: spatial LPIPS of the masked images, averaged over the (H, W) mask."""
        m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
        m = (m.to(self.device, torch.float32).reshape(m.shape[0], m.shape[1]) > 0.5).float()  # (H, W)
        a, b = self._pair(prediction, target)
        self.model.spatial = True
        try:
            spatial = self.model(a * m, b * m, normalize=True)[0, 0]  # (H, W), upsampled to the input size
        finally:
            self.model.spatial = False
        total = m.sum()
        return float((spatial * m).sum() / total) if total > 0 else float("nan")


@lru_cache(maxsize=4)
def get_lpips(net: str = "alex", device: str = "cpu") -> LPIPS:
    """A shared :class:`LPIPS` per (net, device): building VGG16 takes a few seconds."""
    return LPIPS(net, device)
