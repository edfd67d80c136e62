"""Config section ``geometry``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import option


@dataclass
class GeometryConfig:
    """Geometry stage: the PAGE-4D network predicts cameras, depth, point maps and dynamic masks."""

    model: str = option("page4d-tiny", "Network: 'page4d-tiny' (bundled, trained by us), 'page4d-1b' (official "
                        "dimensions; needs a checkpoint), or 'oracle' (the scene's ground-truth geometry, for "
                        "synthetic scenes and for measuring the later stages alone).",
                        choices=("page4d-tiny", "page4d-1b", "oracle"))
    checkpoint: str = option("", "Checkpoint file for the network ('' = the bundled model for page4d-tiny; the "
                             "Hugging Face cache for page4d-1b).")
    cameras: str = option("auto", "Cameras used downstream: 'model' (predicted), 'dataset' (the scene's own, with "
                          "the prediction aligned to them by Sim(3)), or 'auto' (dataset where the scene has "
                          "cameras).", choices=("auto", "model", "dataset"))
    mask: str = option("auto", "PAGE-4D attention bias from the mask head: 'auto' (on for checkpoint_mask.pt and "
                       "our checkpoints that record it, off for checkpoint_nomask.pt and VGGT), 'on' or 'off'.",
                       choices=("auto", "on", "off"))
    allow_download: bool = option(True, "Download a missing official checkpoint through huggingface_hub where a "
                                  "network is available (several GB); otherwise only the Hugging Face cache is used.")
    preprocessing: str = option("crop", "Network input: 'crop' (width = the model's input width, height a multiple "
                                "of 14, centre-cropped if taller than wide), 'pad' (longer side = input width, "
                                "padded white to a square) or 'squash' (crop, then resized to a square: the released "
                                "PAGE-4D evaluation input).", choices=("crop", "pad", "squash"))
    input_width: int = option(0, "Network input width in pixels, a multiple of 14 (0 = the model's own: 518 for "
                              "page4d-1b).")
    window: int = option(0, "Frames per forward pass; longer scenes run in overlapping windows joined by a Sim(3) "
                         "fit on the overlap. 0 = the model's own (100 for page4d-1b; 16 for page4d-tiny, the "
                         "longest sequences it was trained on).")
    overlap: int = option(0, "Frames shared by consecutive windows (used for the Sim(3) join); 0 = a fifth of the "
                          "window (20 of 100, 3 of 16).")
    fov_x_deg: float = option(0.0, "Horizontal field of view of the frames in degrees, where it is known (a phone's "
                              "main camera films about 65-75 in landscape); every frame's focal length follows from "
                              "it instead of the network's (which can be far off: docs/geometry.md). 0 = predicted. "
                              "Scenes with their own cameras use theirs.")
    shared_focal: bool = option(True, "Give every frame the median of the predicted focal lengths (fx and fy "
                                "separately; principal points kept): one camera whose zoom does not change, as in "
                                "a video. Applies when all frames have the same size; the network otherwise "
                                "predicts a focal length per frame (set false for frames from several cameras of "
                                "one size, or a zooming video). Scenes with their own cameras use theirs.")
    blend_window_cameras: bool = option(True, "Windows: the frames a window shares with the one before take "
                                        "cameras that move from the earlier window's estimate to the new one's "
                                        "across the overlap (slerp), instead of switching at its middle; where "
                                        "windows disagree the trajectory then turns gradually rather than "
                                        "jumping at one frame. Depth, points and masks still come from the "
                                        "window where a frame is most central.")
    refine_cameras: bool = option(True, "Model cameras: correct every frame's predicted pose by direct photometric "
                                  "alignment - through its own depth, its pixels must land on the same colours in "
                                  "the frames 1, 2, 4 and 8 before and after it (robust to movers; depth and focal "
                                  "length kept). Scenes with their own cameras use theirs (docs/geometry.md).")
    refine_focal: bool = option(False, "Camera refinement: also solve one factor on the focal length of every frame "
                                "(the network's field of view can be off by several degrees; docs/geometry.md).")
    refine_iterations: int = option(30, "Camera refinement: optimizer steps for each frame while tracking the "
                                     "sequence (at the coarsest of three resolutions), then per resolution for all "
                                     "frames together.")
    dpt_chunk: int = option(8, "Frames per pass through the depth/point heads (memory only; results are identical).")
    head_precision: str = option("float32", "Precision of the depth/point heads on CUDA ('float32' as in the "
                                 "official inference, or 'bfloat16'). The CPU always uses float32.",
                                 choices=("float32", "bfloat16"))
    attention: str = option("auto", "Attention kernel on CUDA: 'auto' (time cuDNN, flash and memory-efficient SDPA "
                            "once per shape and keep the fastest), 'default' (PyTorch's choice), or one of "
                            "'cudnn', 'flash', 'efficient', 'math'.",
                            choices=("auto", "default", "cudnn", "flash", "efficient", "math"))
    point_maps: bool = option(False, "Also run the point head and write geometry/point_maps/NAME.npy (float16 "
                              "(H, W, 3) world points at the network resolution) and point_conf/NAME.npy.")
    fusion_percentile: float = option(50.0, "points.ply keeps, per frame, pixels whose depth confidence is at or "
                                      "above this percentile of the frame's confidences (0 = all valid pixels).")
    max_points: int = option(300000, "Most points in points.ply (an even random share per frame).")
    consistency_neighbours: int = option(8, "Dynamic masks: frames each frame's depth is checked against.")
    consistency_gap: int = option(2, "Dynamic masks: offset of the nearest checked neighbours; further ones double it "
                                  "(+-gap, +-2 gap, +-4 gap, ...).")
    consistency_threshold: float = option(0.03, "Dynamic masks: a neighbour votes 'moving' when its observed depth "
                                          "lies behind the reprojected point by more than this fraction of its "
                                          "depth (the static point would be seen through).")
    consistency_vote: float = option(0.2, "Dynamic masks: a pixel is moving when more than this fraction of its "
                                     "valid neighbours vote so.")
    consistency_min_confidence: float = option(0.1, "Dynamic masks: pixels below this per-frame confidence "
                                               "quantile do not vote (0 = all pixels vote).")
    mask_source: str = option("fused", "Dynamic masks from: 'fused' (a supervised mask head's probability blended "
                              "with the depth-consistency votes, weight mask_head_weight, moving above "
                              "consistency_vote), 'head' (the head's probability above 0.5 alone) or 'consistency' "
                              "(the votes alone). 'head' needs a checkpoint whose mask head was trained with mask "
                              "supervision; without one every choice uses the votes.",
                              choices=("fused", "head", "consistency"))
    mask_head_weight: float = option(0.5, "Weight of the mask head's probability in the dynamic masks, used only "
                                     "when the checkpoint records that its mask head was trained with mask "
                                     "supervision (the released PAGE-4D heads were not).")
    mask_photometric_weight: float = option(2.0, "Dynamic masks ('fused'), with refined model cameras only: weight "
                                            "of photometric votes - through its depth, a pixel whose colour differs "
                                            "in a neighbouring frame by more than mask_colour_threshold votes "
                                            "'moving' - in the blend, which is divided by 1 + this weight (0 = off; "
                                            "docs/geometry.md, 'Dynamic masks').")
    mask_colour_threshold: float = option(0.15, "Dynamic masks: the colour difference (largest channel, colours in "
                                          "[0, 1], after a per-pair gain) above which a photometric vote says "
                                          "'moving'.")
