"""The official checkpoint key set and shapes, written out from the tables of ``shared/spec/page4d.md`` §11.3.

Independent of the model code on purpose: the tests compare the model's state dict against this list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dims:
    C: int = 1024                 # embed dim
    depth: int = 24               # aggregator pairs
    dino_depth: int = 24
    registers: int = 4
    patch: int = 14
    table: int = 37               # position table side
    head_dim: int = 64            # aggregator head dim (q_norm / k_norm size)
    camera_trunk: int = 4
    features: int = 256
    out_channels: tuple = (256, 512, 1024, 1024)
    mask_hidden: int = 256

    @staticmethod
    def of(config) -> "Dims":
        return Dims(config.embed_dim, config.depth, config.dino_depth, config.num_register_tokens,
                    config.patch_size, config.image_size // config.patch_size, config.embed_dim // config.num_heads,
                    config.camera_trunk_depth, config.dpt_features, tuple(config.dpt_out_channels),
                    config.mask_head_hidden)


def _block(prefix: str, dim: int, qk_norm_dim: int = 0) -> dict[str, tuple]:
    keys = {f"{prefix}norm1.weight": (dim,), f"{prefix}norm1.bias": (dim,),
            f"{prefix}norm2.weight": (dim,), f"{prefix}norm2.bias": (dim,),
            f"{prefix}attn.qkv.weight": (3 * dim, dim), f"{prefix}attn.qkv.bias": (3 * dim,),
            f"{prefix}attn.proj.weight": (dim, dim), f"{prefix}attn.proj.bias": (dim,),
            f"{prefix}ls1.gamma": (dim,), f"{prefix}ls2.gamma": (dim,),
            f"{prefix}mlp.fc1.weight": (4 * dim, dim), f"{prefix}mlp.fc1.bias": (4 * dim,),
            f"{prefix}mlp.fc2.weight": (dim, 4 * dim), f"{prefix}mlp.fc2.bias": (dim,)}
    if qk_norm_dim:
        for name in ("q_norm", "k_norm"):
            keys[f"{prefix}attn.{name}.weight"] = (qk_norm_dim,)
            keys[f"{prefix}attn.{name}.bias"] = (qk_norm_dim,)
    return keys


def _dpt(prefix: str, d: Dims, out_dim: int) -> dict[str, tuple]:
    C2, F, oc = 2 * d.C, d.features, d.out_channels
    keys = {f"{prefix}norm.weight": (C2,), f"{prefix}norm.bias": (C2,)}
    for k in range(4):
        keys[f"{prefix}projects.{k}.weight"] = (oc[k], C2, 1, 1)
        keys[f"{prefix}projects.{k}.bias"] = (oc[k],)
        keys[f"{prefix}scratch.layer{k + 1}_rn.weight"] = (F, oc[k], 3, 3)
    for k, kernel in ((0, 4), (1, 2), (3, 3)):
        keys[f"{prefix}resize_layers.{k}.weight"] = (oc[k], oc[k], kernel, kernel)
        keys[f"{prefix}resize_layers.{k}.bias"] = (oc[k],)
    for r in range(1, 5):
        keys[f"{prefix}scratch.refinenet{r}.out_conv.weight"] = (F, F, 1, 1)
        keys[f"{prefix}scratch.refinenet{r}.out_conv.bias"] = (F,)
        for unit in ((2,) if r == 4 else (1, 2)):
            for conv in (1, 2):
                keys[f"{prefix}scratch.refinenet{r}.resConfUnit{unit}.conv{conv}.weight"] = (F, F, 3, 3)
                keys[f"{prefix}scratch.refinenet{r}.resConfUnit{unit}.conv{conv}.bias"] = (F,)
    keys[f"{prefix}scratch.output_conv1.weight"] = (F // 2, F, 3, 3)
    keys[f"{prefix}scratch.output_conv1.bias"] = (F // 2,)
    keys[f"{prefix}scratch.output_conv2.0.weight"] = (32, F // 2, 3, 3)
    keys[f"{prefix}scratch.output_conv2.0.bias"] = (32,)
    keys[f"{prefix}scratch.output_conv2.2.weight"] = (out_dim, 32, 1, 1)
    keys[f"{prefix}scratch.output_conv2.2.bias"] = (out_dim,)
    return keys


def official_shapes(d: Dims = Dims(), layout: str = "page4d") -> dict[str, tuple]:
    """{key: shape} of a VGGT ('vggt') or PAGE-4D ('page4d') checkpoint without the track head."""
    C, C2, R = d.C, 2 * d.C, d.registers
    keys: dict[str, tuple] = {"aggregator.camera_token": (1, 2, 1, C), "aggregator.register_token": (1, 2, R, C)}
    pe = "aggregator.patch_embed."
    keys.update({f"{pe}cls_token": (1, 1, C), f"{pe}pos_embed": (1, 1 + d.table ** 2, C),
                 f"{pe}register_tokens": (1, R, C), f"{pe}mask_token": (1, C),
                 f"{pe}patch_embed.proj.weight": (C, 3, d.patch, d.patch), f"{pe}patch_embed.proj.bias": (C,),
                 f"{pe}norm.weight": (C,), f"{pe}norm.bias": (C,)})
    for i in range(d.dino_depth):
        keys.update(_block(f"{pe}blocks.{i}.", C))
    for kind in ("frame", "global"):
        for i in range(d.depth):
            keys.update(_block(f"aggregator.{kind}_blocks.{i}.", C, d.head_dim))
    ch = "camera_head."
    keys.update({f"{ch}empty_pose_tokens": (1, 1, 9), f"{ch}embed_pose.weight": (C2, 9), f"{ch}embed_pose.bias": (C2,),
                 f"{ch}poseLN_modulation.1.weight": (3 * C2, C2), f"{ch}poseLN_modulation.1.bias": (3 * C2,),
                 f"{ch}token_norm.weight": (C2,), f"{ch}token_norm.bias": (C2,),
                 f"{ch}trunk_norm.weight": (C2,), f"{ch}trunk_norm.bias": (C2,),
                 f"{ch}pose_branch.fc1.weight": (C2 // 2, C2), f"{ch}pose_branch.fc1.bias": (C2 // 2,),
                 f"{ch}pose_branch.fc2.weight": (9, C2 // 2), f"{ch}pose_branch.fc2.bias": (9,)})
    for i in range(d.camera_trunk):
        keys.update(_block(f"{ch}trunk.{i}.", C2))
    keys.update(_dpt("depth_head.", d, 2))
    keys.update(_dpt("point_head.", d, 4))
    if layout == "page4d":
        mh = "aggregator.spatial_mask_head.head0."
        keys.update({f"{mh}0.weight": (C, 1, 3, 3), f"{mh}0.bias": (C,), f"{mh}2.weight": (d.mask_hidden, C, 1, 1),
                     f"{mh}2.bias": (d.mask_hidden,), f"{mh}4.weight": (1, d.mask_hidden, 1, 1), f"{mh}4.bias": (1,)})
    return keys
