"""Synthetic dynamic scenes with exact ground truth: the embedded demo, test fixtures, metric ground truth and
training data for the bundled PAGE-4D model.

- ``primitives``: analytic ray casting of rooms, boxes, ellipsoids and capsules (exact depth);
- ``textures``: a mip-mapped bank of procedural textures and scikit-image photographs;
- ``scenes``: layouts of primitives with closed-form motions (rigid curves, articulated chains, deforming bodies)
  and the room and object samplers;
- ``cameras``: look-at poses, intrinsics, handheld paths, sphere viewpoints;
- ``render``: the one batched torch renderer (CPU or GPU);
- ``writer``: ``make-scene`` folders (D-NeRF layout, ``frames/``, ``ground_truth/``, README);
- ``batch``: random training batches as tensors on any device;
- ``demo``: ``SCENE=demo``, generated on first use into the cache.

See ``docs/synthetic.md``.
"""
