"""PAGE-4D (VGGT with a dynamics-aware aggregator), written from ``shared/spec/page4d.md``.

Modules: layers (attention, RoPE-2D, blocks), dino (patch embed ViT), aggregator, mask_head, camera_head, dpt_head,
pose (pose encoding), model (PAGE4D), config (ModelConfig), checkpoint (safe loading), preprocess, inference.
"""

from stages.geometry.page4d.config import ModelConfig
from stages.geometry.page4d.model import PAGE4D
from stages.geometry.page4d.pose import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri

__all__ = ["PAGE4D", "ModelConfig", "pose_encoding_to_extri_intri", "extri_intri_to_pose_encoding"]
