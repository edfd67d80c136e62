"""Scene descriptions: primitives with motions that are closed-form functions of time, batched in torch.

A scene is a :class:`Layout` (a fixed list of primitive slots: kind, parent, object name; shared by a batch) and a
:class:`SceneSpec` (per-scene parameters, tensors (B, P, ...)). :func:`pose` evaluates them at any times:

- each slot has a *frame* relative to its parent's frame (or the world): rotation
  ``base_rotation @ Rot(spin_axis, spin_rate * t + sum_k swing_k sin(2 pi f_k t + phi_k))`` and translation
  ``offset + sum_k wave_k sin(2 pi g_k t + psi_k)``. Chained frames give articulated figures (a limb is a capsule
  hanging from a joint), a root frame moving along sinusoids gives smooth rigid curves;
- the primitive's geometry sits at ``pivot`` in its frame, with size ``size * (1 + pulse sin(2 pi h t + chi))``:
  a pulsing ellipsoid is a non-rigid (deforming) body whose texture stays on its material points.

A slot is *dynamic* when it or an ancestor has any motion term; this, not a threshold on displacement, defines the
dynamic masks. Two samplers build specs: :func:`sample_room` (a furnished room with 1-3 moving objects; used for
``make-scene room``, the demo and training batches) and :func:`sample_object` (a D-NeRF-like articulated figure with
orbiting parts on a pedestal). Both draw every number from one ``torch.Generator`` in a fixed order, so a seed
determines the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from pipeline.synthetic.cameras import HandheldPath, fov_x_from_longer_side
from pipeline.synthetic.primitives import KINDS, MATERIAL_GROUPS

WAVES = 3  # sinusoids per motion term


@dataclass(frozen=True)
class Slot:
    name: str          # e.g. "arm.link2"
    kind: str          # one of primitives.KINDS
    parent: int = -1   # index of an earlier slot, or -1 for the world
    group: str = ""    # the object this primitive belongs to ("arm"); dynamic objects are switched on per group


@dataclass(frozen=True)
class Layout:
    slots: tuple[Slot, ...]

    def __post_init__(self) -> None:
        for i, s in enumerate(self.slots):
            if s.kind not in KINDS or not -1 <= s.parent < i:
                raise ValueError(f"bad slot {i}: {s}")

    def __len__(self) -> int:
        return len(self.slots)

    def index(self, name: str) -> int:
        return [s.name for s in self.slots].index(name)

    def indices(self, kind: str) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.kind == kind]

    def group(self, group: str) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.group == group]

    @property
    def has_room(self) -> bool:
        return bool(self.indices("room"))


@dataclass
class SceneSpec:
    """Parameters of B scenes with one layout of P slots. Lengths in metres, time t in [0, 1], angles in radians,
    frequencies in cycles per unit time."""

    layout: Layout
    offset: Tensor            # (B, P, 3) frame origin in the parent frame
    wave_amplitude: Tensor    # (B, P, K, 3)
    wave_frequency: Tensor    # (B, P, K)
    wave_phase: Tensor        # (B, P, K, 3)
    base_rotation: Tensor     # (B, P, 3, 3) frame rotation at rest, relative to the parent
    spin_axis: Tensor         # (B, P, 3) unit axis of the joint (in the frame after base_rotation)
    spin_rate: Tensor         # (B, P) radians per unit time
    swing_amplitude: Tensor   # (B, P, K) radians
    swing_frequency: Tensor   # (B, P, K)
    swing_phase: Tensor       # (B, P, K)
    pivot: Tensor             # (B, P, 3) geometry centre in the slot's frame
    size: Tensor              # (B, P, 3) at rest (see primitives.py for each kind)
    pulse_amplitude: Tensor   # (B, P, 3) relative size change
    pulse_frequency: Tensor   # (B, P)
    pulse_phase: Tensor       # (B, P, 3)
    active: Tensor            # (B, P) bool: inactive slots are not rendered
    texture: Tensor           # (B, P, G) long index into the texture bank, per material group
    tiles_per_meter: Tensor   # (B, P, G) texture repeats per metre
    tint: Tensor              # (B, P, G, 3) albedo multiplier
    uv_offset: Tensor         # (B, P, G, 2)
    light_position: Tensor    # (B, 3) point light
    light_amplitude: Tensor   # (B, 3) light motion (0 = static light)
    light_frequency: Tensor   # (B,)
    light_phase: Tensor       # (B, 3)
    ambient: Tensor           # (B,) fraction of light that does not depend on the light direction
    exposure: Tensor          # (B,) multiplier of the shaded colour (clipped at 1), constant over the scene
    camera_path: HandheldPath | None = None  # rooms: the handheld path the scene was sampled with
    fov_x: Tensor | None = None               # (B,) horizontal field of view of that path, radians

    @classmethod
    def empty(cls, layout: Layout, batch: int, device="cpu", dtype=torch.float32) -> "SceneSpec":
        """All slots static, at the origin, unit size, active, texture 0; light above the origin."""
        P, K, G = len(layout), WAVES, MATERIAL_GROUPS

        def z(*shape):
            return torch.zeros(batch, *shape, device=device, dtype=dtype)

        axis = z(P, 3)
        axis[..., 2] = 1.0
        return cls(layout=layout, offset=z(P, 3), wave_amplitude=z(P, K, 3), wave_frequency=z(P, K),
                   wave_phase=z(P, K, 3),
                   base_rotation=torch.eye(3, device=device, dtype=dtype).expand(batch, P, 3, 3).clone(),
                   spin_axis=axis, spin_rate=z(P), swing_amplitude=z(P, K), swing_frequency=z(P, K),
                   swing_phase=z(P, K), pivot=z(P, 3), size=z(P, 3) + 1.0, pulse_amplitude=z(P, 3),
                   pulse_frequency=z(P), pulse_phase=z(P, 3),
                   active=torch.ones(batch, P, dtype=torch.bool, device=device),
                   texture=torch.zeros(batch, P, G, dtype=torch.long, device=device), tiles_per_meter=z(P, G) + 1.0,
                   tint=z(P, G, 3) + 1.0, uv_offset=z(P, G, 2), light_position=z(3), light_amplitude=z(3),
                   light_frequency=z(), light_phase=z(3), ambient=z() + 0.3, exposure=z() + 1.0)

    @property
    def batch(self) -> int:
        return self.offset.shape[0]

    @property
    def device(self) -> torch.device:
        return self.offset.device

    def _map(self, fn) -> "SceneSpec":
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = fn(value)
            elif isinstance(value, HandheldPath):
                value = HandheldPath(**{g.name: fn(getattr(value, g.name)) for g in fields(value)})
            out[f.name] = value
        return SceneSpec(**out)

    def to(self, dtype: torch.dtype | None = None, device=None) -> "SceneSpec":
        """The same scenes with floating tensors in ``dtype`` and everything on ``device``."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() and dtype else None))

    def select(self, keep_active: Tensor) -> "SceneSpec":
        """A copy whose ``active`` is ``active & keep_active`` (B, P)."""
        out = self._map(lambda t: t)
        out.active = self.active & keep_active
        return out

    def moving(self) -> Tensor:
        """(B, P) bool: the slot's own frame or size changes with time (ignoring its parents)."""
        return ((self.wave_amplitude != 0).flatten(2).any(-1) | (self.spin_rate != 0)
                | (self.swing_amplitude != 0).any(-1) | (self.pulse_amplitude != 0).any(-1))

    def dynamic(self) -> Tensor:
        """(B, P) bool: the slot or one of its ancestors moves."""
        moving = self.moving()
        columns = []
        for i, slot in enumerate(self.layout.slots):
            columns.append(moving[:, i] | columns[slot.parent] if slot.parent >= 0 else moving[:, i])
        return torch.stack(columns, dim=1)


def matmul3(a: Tensor, b: Tensor) -> Tensor:
    """(..., 3, 3) @ (..., 3, 3) as explicit sums (bitwise reproducible, no BLAS)."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def apply3(matrix: Tensor, vector: Tensor) -> Tensor:
    """(..., 3, 3) @ (..., 3) as explicit sums."""
    return (matrix * vector[..., None, :]).sum(-1)


def axis_angle(axis: Tensor, angle: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) about unit ``axis`` (..., 3) by ``angle`` (...) radians (Rodrigues)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*x.shape, 3, 3)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    return eye + s * cross + (1 - c) * matmul3(cross, cross)


def _sinusoids(amplitude: Tensor, frequency: Tensor, phase: Tensor, times: Tensor) -> Tensor:
    """amplitude (B, P, K[, 3]), frequency (B, P, K), phase like amplitude, times (B, S) -> (B, S, P[, 3])."""
    t = times[:, :, None, None]                                        # (B, S, 1, 1)
    angle = 2 * math.pi * frequency[:, None] * t                       # (B, S, P, K)
    if amplitude.dim() == 4:
        return (amplitude[:, None] * torch.sin(angle[..., None] + phase[:, None])).sum(3)
    return (amplitude[:, None] * torch.sin(angle + phase[:, None])).sum(3)


@dataclass
class PosedScene:
    """The primitives of B scenes at S times each (world frame, z up)."""

    layout: Layout
    rotation: Tensor      # (B, S, P, 3, 3) local-to-world rotation of each primitive
    translation: Tensor   # (B, S, P, 3) world position of each primitive's centre
    size: Tensor          # (B, S, P, 3) current size
    rest_size: Tensor     # (B, P, 3)
    active: Tensor        # (B, P) bool
    dynamic: Tensor       # (B, P) bool
    light: Tensor         # (B, S, 3) light position
    ambient: Tensor       # (B,)
    exposure: Tensor      # (B,)
    texture: Tensor       # (B, P, G) long
    tiles_per_meter: Tensor  # (B, P, G)
    tint: Tensor          # (B, P, G, 3)
    uv_offset: Tensor     # (B, P, G, 2)


def pose(spec: SceneSpec, times: Tensor) -> PosedScene:
    """Evaluate the scenes at ``times`` (B, S) in [0, 1]."""
    angle = spec.spin_rate[:, None] * times[..., None] + _sinusoids(
        spec.swing_amplitude, spec.swing_frequency, spec.swing_phase, times)             # (B, S, P)
    B, S, P = angle.shape
    joint = axis_angle(spec.spin_axis[:, None].expand(B, S, P, 3), angle)
    local_rotation = matmul3(spec.base_rotation[:, None].expand(B, S, P, 3, 3), joint)  # (B, S, P, 3, 3)
    local_translation = spec.offset[:, None] + _sinusoids(
        spec.wave_amplitude, spec.wave_frequency, spec.wave_phase, times)               # (B, S, P, 3)
    rotations, translations = [], []
    for i, slot in enumerate(spec.layout.slots):  # parents come first: compose frames down each chain
        R, T = local_rotation[:, :, i], local_translation[:, :, i]
        if slot.parent >= 0:
            R_parent, T_parent = rotations[slot.parent], translations[slot.parent]
            R, T = matmul3(R_parent, R), apply3(R_parent, T) + T_parent
        rotations.append(R)
        translations.append(T)
    rotation = torch.stack(rotations, dim=2)
    frame_origin = torch.stack(translations, dim=2)
    centre = frame_origin + apply3(rotation, spec.pivot[:, None].expand(B, S, P, 3))
    pulse = spec.pulse_amplitude[:, None] * torch.sin(
        2 * math.pi * spec.pulse_frequency[:, None, :, None] * times[:, :, None, None] + spec.pulse_phase[:, None])
    size = spec.size[:, None] * (1.0 + pulse)
    light = spec.light_position[:, None] + spec.light_amplitude[:, None] * torch.sin(
        2 * math.pi * spec.light_frequency[:, None, None] * times[..., None] + spec.light_phase[:, None])
    return PosedScene(spec.layout, rotation, centre, size, spec.size, spec.active, spec.dynamic(), light,
                      spec.ambient, spec.exposure, spec.texture, spec.tiles_per_meter, spec.tint, spec.uv_offset)


# ----------------------------------------------------------------------------------------------------------------
# Sampling helpers
# ----------------------------------------------------------------------------------------------------------------

class _Draw:
    """Random draws (B, ...) from one generator, in call order."""

    def __init__(self, generator: torch.Generator, batch: int, dtype=torch.float32):
        self.generator, self.batch, self.dtype = generator, batch, dtype
        self.device = generator.device

    def uniform(self, lo: float | Tensor, hi: float | Tensor, *shape) -> Tensor:
        """Uniform in [lo, hi) (numbers or tensors broadcastable to (B, *shape)). Numbers stay Python scalars, so
        no tiny host-to-device copies are made on a GPU."""
        u = torch.rand(self.batch, *shape, generator=self.generator, device=self.device, dtype=self.dtype)
        return u * (hi - lo) + lo

    def sign(self, *shape) -> Tensor:
        return torch.where(self.uniform(0, 1, *shape) < 0.5, -1.0, 1.0).to(self.dtype)

    def integers(self, lo: int, hi: int, *shape) -> Tensor:
        """Uniform in [lo, hi)."""
        return torch.randint(lo, hi, (self.batch, *shape), generator=self.generator, device=self.device)

    def chance(self, p, *shape) -> Tensor:
        return self.uniform(0, 1, *shape) < p

    def unit_vector(self, *shape) -> Tensor:
        v = torch.randn(self.batch, *shape, 3, generator=self.generator, device=self.device, dtype=self.dtype)
        return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-6)


def _rot_z(angle: Tensor) -> Tensor:
    axis = torch.zeros(*angle.shape, 3, dtype=angle.dtype, device=angle.device)
    axis[..., 2] = 1.0
    return axis_angle(axis, angle)


def _rot_y(angle: Tensor) -> Tensor:
    axis = torch.zeros(*angle.shape, 3, dtype=angle.dtype, device=angle.device)
    axis[..., 1] = 1.0
    return axis_angle(axis, angle)


def _wander(spec: SceneSpec, draw: _Draw, slot: int, amplitude: Tensor, min_frequency: float = 0.4,
            max_frequency: float = 1.5) -> None:
    """A smooth random curve for ``slot``: per axis, WAVES sinusoids with amplitudes of 0.2-0.5 times
    ``amplitude`` (B, 3) each, so the curve stays within 1.5 ``amplitude`` of ``offset``."""
    spec.wave_amplitude[:, slot] = amplitude[:, None] * draw.uniform(0.2, 0.5, WAVES, 3)
    spec.wave_frequency[:, slot] = draw.uniform(min_frequency, max_frequency, WAVES)
    spec.wave_phase[:, slot] = draw.uniform(0, 2 * math.pi, WAVES, 3)


def _materials(spec: SceneSpec, draw: _Draw, slots: list[int], bank_size: int, tiles: tuple[float, float]) -> None:
    """Random textures, scales, tints and offsets for every material group of ``slots``."""
    n, G = len(slots), MATERIAL_GROUPS
    spec.texture[:, slots] = draw.integers(0, bank_size, n, G)
    spec.tiles_per_meter[:, slots] = draw.uniform(tiles[0], tiles[1], n, G)
    spec.tint[:, slots] = draw.uniform(0.75, 1.1, n, G, 3) * draw.uniform(0.8, 1.15, n, G, 1)
    spec.uv_offset[:, slots] = draw.uniform(0, 1, n, G, 2)


# ----------------------------------------------------------------------------------------------------------------
# Rooms
# ----------------------------------------------------------------------------------------------------------------

FURNITURE = 6
DYNAMIC_OBJECTS = ("flyer", "tumbler", "arm", "blob", "worm")   # rigid, rigid, articulated, non-rigid, non-rigid
NON_RIGID_OR_ARTICULATED = ("arm", "blob", "worm")
WORM_SEGMENTS = 4


def room_layout() -> Layout:
    slots = [Slot("room", "room", group="room")]
    slots += [Slot(f"cabinet{i}", "box", group=f"cabinet{i}") for i in range(FURNITURE)]
    cabinet = {i: 1 + i for i in range(FURNITURE)}                      # slot indices of the cabinets
    slots += [Slot("vase0", "ellipsoid", parent=cabinet[0], group="vase0"),   # on the left wall's first cabinet
              Slot("vase1", "ellipsoid", parent=cabinet[4], group="vase1")]   # on the back wall's first cabinet
    slots += [Slot(f"pillar{i}", "capsule", group=f"pillar{i}") for i in range(2)]
    slots += [Slot("flyer", "ellipsoid", group="flyer"), Slot("tumbler", "box", group="tumbler")]
    arm = len(slots)
    slots += [Slot("arm", "none", group="arm"), Slot("arm.link1", "capsule", arm, "arm"),
              Slot("arm.link2", "capsule", arm + 1, "arm"), Slot("arm.link3", "capsule", arm + 2, "arm")]
    slots += [Slot("blob", "ellipsoid", group="blob")]
    worm = len(slots)
    slots += [Slot("worm", "none", group="worm")]
    slots += [Slot(f"worm.segment{i}", "ellipsoid", worm, "worm") for i in range(WORM_SEGMENTS)]
    return Layout(tuple(slots))


@dataclass
class RoomOptions:
    """What :func:`sample_room` varies and within which bounds."""

    fov_deg: tuple[float, float] = (40.0, 90.0)   # field of view of the image's longer side
    dynamic_objects: tuple[int, int] = (1, 3)      # how many of DYNAMIC_OBJECTS move in each room (inclusive)
    moving_light: float = 0.0                      # probability that the light moves
    dolly_m: float = 1.0                           # largest forward camera travel over t in [0, 1], metres
    pan_m: float = 1.0                             # largest horizontal pan at the target, metres
    shake_m: float = 0.012                         # largest hand-shake amplitude per sinusoid, metres


def _choose_dynamic(draw: _Draw, options: RoomOptions) -> Tensor:
    """(B, len(DYNAMIC_OBJECTS)) bool: which objects move; at least one articulated or non-rigid."""
    n = len(DYNAMIC_OBJECTS)
    lo, hi = options.dynamic_objects
    count = draw.integers(lo, hi + 1)                                              # (B,)
    forced = torch.tensor([DYNAMIC_OBJECTS.index(g) for g in NON_RIGID_OR_ARTICULATED], device=draw.device)
    first = forced[draw.integers(0, len(forced))]                                 # (B,)
    score = draw.uniform(0, 1, n)
    score[torch.arange(draw.batch, device=draw.device), first] = 2.0              # always ranked first
    rank = torch.argsort(torch.argsort(score, dim=1, descending=True), dim=1)    # 0 = highest score
    return rank < count[:, None]


def sample_room(generator: torch.Generator, batch: int, bank_size: int, width: int, height: int,
                options: RoomOptions | None = None, dtype=torch.float32) -> SceneSpec:
    """B random furnished rooms with moving objects and a handheld camera path that keeps them in view.

    World: z up, floor at z = 0, the room centred on the z axis; the camera starts near the front wall (-y) and
    looks into the room (+y). Furniture stands against the side and back walls, pillars in the back corners, vases
    on two cabinets; the moving objects share the middle of the room on separate lanes.
    """
    options = options or RoomOptions()
    draw = _Draw(generator, batch, dtype)
    layout = room_layout()
    spec = SceneSpec.empty(layout, batch, draw.device, dtype)
    idx = layout.index
    half_w = draw.uniform(2.3, 3.5)                 # room half-width (x)
    half_d = draw.uniform(2.6, 4.0)                 # room half-depth (y)
    half_h = draw.uniform(1.25, 1.6)                # room half-height (z)
    room = idx("room")
    spec.offset[:, room] = torch.stack([torch.zeros_like(half_h), torch.zeros_like(half_h), half_h], -1)
    spec.size[:, room] = torch.stack([half_w, half_d, half_h], -1)

    eye = torch.stack([draw.uniform(-0.4, 0.4) * (half_w - 1.2), -half_d + draw.uniform(0.8, 1.3),
                       draw.uniform(1.0, 1.5)], -1)
    zone_y0 = eye[:, 1] + 2.5                        # moving objects live in y in [zone_y0, zone_y1]
    zone_y1 = torch.maximum(half_d - 1.1, zone_y0 + 0.3)
    zone_x = half_w - 1.1

    # Furniture: cabinets 0, 1 on the left wall, 2, 3 on the right, 4, 5 at the back, one per half of the wall.
    extent = draw.uniform(0.0, 1.0, FURNITURE, 3)
    depth = 0.18 + 0.27 * extent[..., 0]             # half-extent away from the wall
    along = 0.25 + 0.45 * extent[..., 1]             # half-extent along the wall
    tall = 0.25 + 0.75 * extent[..., 2]              # half-height
    where = draw.uniform(0.1, 0.9, FURNITURE)
    yaw = draw.uniform(-0.12, 0.12, FURNITURE)
    side_y0, side_y1 = eye[:, 1:2] + 0.6, half_d[:, None] - 0.3
    for i in range(FURNITURE):
        slot = idx(f"cabinet{i}")
        half = i % 2                                  # which half of the wall
        if i < 4:
            sign = -1.0 if i < 2 else 1.0
            lo = side_y0[:, 0] + (side_y1[:, 0] - side_y0[:, 0]) * 0.5 * half
            y = lo + (side_y1[:, 0] - side_y0[:, 0]) * 0.5 * where[:, i]
            x = sign * (half_w - depth[:, i] - 0.03)
            size = torch.stack([depth[:, i], along[:, i], tall[:, i]], -1)
        else:
            x = -half_w + 0.4 + (2 * half_w - 0.8) * 0.5 * (half + where[:, i])
            y = half_d - depth[:, i] - 0.03
            size = torch.stack([along[:, i], depth[:, i], tall[:, i]], -1)
        spec.offset[:, slot] = torch.stack([x, y, tall[:, i]], -1)
        spec.size[:, slot] = size
        spec.base_rotation[:, slot] = _rot_z(yaw[:, i])
    for name, cabinet in (("vase0", 0), ("vase1", 4)):
        slot = idx(name)
        radius = draw.uniform(0.1, 0.22)
        stretch = draw.uniform(0.8, 1.5)
        spec.size[:, slot] = torch.stack([radius, radius, radius * stretch], -1)
        spec.offset[:, slot] = torch.stack([torch.zeros_like(radius), torch.zeros_like(radius),
                                            tall[:, cabinet] + radius * stretch], -1)
        spec.active[:, slot] = draw.chance(0.75)
    for i, sign in enumerate((-1.0, 1.0)):
        slot = idx(f"pillar{i}")
        radius = draw.uniform(0.08, 0.2)
        length = half_h * draw.uniform(0.5, 1.0) - radius
        spec.size[:, slot] = torch.stack([radius, radius, length], -1)
        spec.offset[:, slot] = torch.stack([sign * (half_w - radius - 0.05), half_d - radius - 0.05,
                                            length + radius], -1)
        spec.active[:, slot] = draw.chance(0.7)

    # Moving objects: one lane (x position) each, a random depth in the zone.
    moving = _choose_dynamic(draw, options)                                       # (B, 5)
    lane = torch.argsort(draw.uniform(0, 1, len(DYNAMIC_OBJECTS)), dim=1)        # a permutation per room
    lane_x = (lane.to(dtype) / (len(DYNAMIC_OBJECTS) - 1) * 2 - 1) * zone_x[:, None] * 0.85
    lane_y = zone_y0[:, None] + (zone_y1 - zone_y0)[:, None] * draw.uniform(0.1, 0.9, len(DYNAMIC_OBJECTS))
    for k, group in enumerate(DYNAMIC_OBJECTS):
        for slot in layout.group(group):
            spec.active[:, slot] = moving[:, k]
    lanes = {g: (lane_x[:, k], lane_y[:, k]) for k, g in enumerate(DYNAMIC_OBJECTS)}

    def floor_point(group: str, z: Tensor) -> Tensor:
        return torch.stack([lanes[group][0], lanes[group][1], z], -1)

    slot = idx("flyer")                                                           # a ball on a smooth curve
    radius = draw.uniform(0.18, 0.32)
    spec.size[:, slot] = radius[:, None] * draw.uniform(0.85, 1.2, 3)
    spec.offset[:, slot] = floor_point("flyer", draw.uniform(0.7, 1.3))
    _wander(spec, draw, slot, torch.stack([draw.uniform(0.2, 0.45), draw.uniform(0.1, 0.4),
                                           draw.uniform(0.1, 0.35)], -1))
    spec.spin_axis[:, slot] = draw.unit_vector()
    spec.spin_rate[:, slot] = draw.sign() * draw.uniform(1.5, 5.0)

    slot = idx("tumbler")                                                         # a tumbling box
    spec.size[:, slot] = draw.uniform(0.14, 0.3, 3)
    spec.offset[:, slot] = floor_point("tumbler", draw.uniform(0.6, 1.2))
    _wander(spec, draw, slot, torch.stack([draw.uniform(0.15, 0.4), draw.uniform(0.1, 0.35),
                                           draw.uniform(0.1, 0.3)], -1))
    spec.spin_axis[:, slot] = draw.unit_vector()
    spec.spin_rate[:, slot] = draw.sign() * draw.uniform(2.0, 6.0)

    # An articulated arm: a post turning about z, then two links swinging about their y axes.
    root = idx("arm")
    spec.offset[:, root] = floor_point("arm", torch.zeros_like(half_h))
    spec.base_rotation[:, root] = _rot_z(draw.uniform(0, 2 * math.pi))
    lengths = torch.stack([draw.uniform(0.25, 0.4), draw.uniform(0.16, 0.28), draw.uniform(0.14, 0.24)], -1)
    radii = draw.uniform(0.06, 0.1)[:, None] * torch.tensor([1.0, 0.85, 0.7], device=draw.device, dtype=dtype)
    for j in range(3):
        slot = idx(f"arm.link{j + 1}")
        spec.size[:, slot] = torch.stack([radii[:, j], radii[:, j], lengths[:, j]], -1)
        spec.pivot[:, slot, 2] = lengths[:, j]
        if j == 0:
            spec.spin_axis[:, slot] = torch.tensor([0.0, 0.0, 1.0], device=draw.device, dtype=dtype)
            spec.swing_amplitude[:, slot, 0] = draw.uniform(0.5, 1.3)
        else:
            spec.offset[:, slot, 2] = 2 * lengths[:, j - 1]
            spec.base_rotation[:, slot] = _rot_y(draw.sign() * draw.uniform(0.3, 0.9))
            spec.spin_axis[:, slot] = torch.tensor([0.0, 1.0, 0.0], device=draw.device, dtype=dtype)
            spec.swing_amplitude[:, slot, 0] = draw.sign() * draw.uniform(0.4, 0.9)
            spec.swing_amplitude[:, slot, 1] = draw.uniform(0.0, 0.2)
        spec.swing_frequency[:, slot, :2] = draw.uniform(0.5, 1.5, 2)
        spec.swing_phase[:, slot, :2] = draw.uniform(0, 2 * math.pi, 2)

    slot = idx("blob")                                                            # a pulsing, drifting ellipsoid
    rest = torch.stack([draw.uniform(0.22, 0.4), draw.uniform(0.18, 0.35), draw.uniform(0.18, 0.35)], -1)
    pulse = draw.uniform(0.12, 0.3, 3)
    spec.size[:, slot] = rest
    spec.pulse_amplitude[:, slot] = pulse
    spec.pulse_frequency[:, slot] = draw.uniform(1.0, 2.5)
    spec.pulse_phase[:, slot] = draw.uniform(0, 2 * math.pi, 3)
    spec.offset[:, slot] = floor_point("blob", rest[:, 2] * (1 + pulse[:, 2]) + draw.uniform(0.02, 0.4))
    _wander(spec, draw, slot, torch.stack([draw.uniform(0.05, 0.25), draw.uniform(0.05, 0.25),
                                           torch.zeros_like(half_h)], -1), 0.3, 0.8)
    spec.spin_rate[:, slot] = draw.sign() * draw.uniform(0.3, 1.5)

    # A worm: spheres in a row on a crawling root, a travelling wave running along them.
    root = idx("worm")
    spec.offset[:, root] = floor_point("worm", torch.zeros_like(half_h))
    spec.base_rotation[:, root] = _rot_z(draw.uniform(0, 2 * math.pi))
    _wander(spec, draw, root, torch.stack([draw.uniform(0.1, 0.3), draw.uniform(0.1, 0.3),
                                           torch.zeros_like(half_h)], -1), 0.3, 0.8)
    radius = draw.uniform(0.13, 0.2)
    wave_frequency = draw.uniform(0.8, 2.0)
    wave_lateral = draw.uniform(0.06, 0.15)
    for j in range(WORM_SEGMENTS):
        slot = idx(f"worm.segment{j}")
        r = radius * (1.0 - 0.12 * j)
        spec.size[:, slot] = torch.stack([r * 1.1, r, r * 0.9], -1)
        spec.offset[:, slot] = torch.stack([(j - 1.5) * 1.4 * radius, torch.zeros_like(r), r * 0.9], -1)
        spec.wave_amplitude[:, slot, 0, 1] = wave_lateral
        spec.wave_amplitude[:, slot, 1, 2] = 0.25 * r
        spec.wave_frequency[:, slot, :2] = wave_frequency[:, None]
        spec.wave_phase[:, slot, 0, 1] = -0.9 * j
        spec.wave_phase[:, slot, 1, 2] = -0.9 * j + math.pi / 2
        spec.pulse_amplitude[:, slot] = 0.06
        spec.pulse_frequency[:, slot] = wave_frequency
        spec.pulse_phase[:, slot] = -0.9 * j

    # Materials: walls, floor and ceiling get large repeats; furniture medium; moving objects small.
    _materials(spec, draw, [room], bank_size, (0.35, 0.9))
    static = [i for i, s in enumerate(layout.slots) if s.group not in DYNAMIC_OBJECTS and s.kind != "room"]
    _materials(spec, draw, static, bank_size, (0.8, 2.5))
    dynamic = [i for i, s in enumerate(layout.slots) if s.group in DYNAMIC_OBJECTS]
    _materials(spec, draw, dynamic, bank_size, (1.5, 4.0))

    spec.light_position = torch.stack([draw.uniform(-0.5, 0.5) * half_w, draw.uniform(-0.3, 0.5) * half_d,
                                       2 * half_h - 0.25], -1)
    spec.light_amplitude = draw.chance(options.moving_light)[:, None] * torch.stack(
        [draw.uniform(0.3, 1.0) * half_w, draw.uniform(0.2, 0.6) * half_d, torch.zeros_like(half_h)], -1) * 0.6
    spec.light_frequency = draw.uniform(0.3, 0.8)
    spec.light_phase = draw.uniform(0, 2 * math.pi, 3)
    spec.ambient = draw.uniform(0.3, 0.5)
    spec.exposure = draw.uniform(1.1, 1.5)

    # The camera: forward-facing towards the moving objects, dolly forward, pan, shake and roll.
    weight = moving.to(dtype) / moving.sum(1, keepdim=True)
    target = torch.stack([(weight * lane_x).sum(1) + draw.uniform(-0.3, 0.3), (weight * lane_y).sum(1),
                          draw.uniform(0.35, 0.7)], -1)
    dolly = torch.stack([draw.uniform(-0.4, 0.4), draw.uniform(0.0, 1.0), draw.uniform(-0.15, 0.15)], -1)
    dolly = dolly * options.dolly_m
    spec.camera_path = HandheldPath(
        eye=eye, dolly=dolly, target=target,
        pan_amplitude=torch.stack([draw.uniform(0.2, 0.7) * options.pan_m, torch.zeros_like(half_h),
                                   draw.uniform(0.0, 0.15) * options.pan_m], -1),
        pan_frequency=draw.uniform(0.25, 0.7, 1), pan_phase=draw.uniform(0, 2 * math.pi, 1, 3),
        shake_amplitude=draw.uniform(0.2, 1.0, 3, 3) * options.shake_m,
        shake_frequency=draw.uniform(2.0, 6.0, 3), shake_phase=draw.uniform(0, 2 * math.pi, 3, 3),
        roll_amplitude=draw.uniform(0.0, math.radians(1.5)), roll_frequency=draw.uniform(0.5, 2.0),
        roll_phase=draw.uniform(0, 2 * math.pi))
    fov = torch.deg2rad(draw.uniform(*options.fov_deg))
    spec.fov_x = fov_x_from_longer_side(fov, width, height)
    return spec


# ----------------------------------------------------------------------------------------------------------------
# Objects (D-NeRF-like)
# ----------------------------------------------------------------------------------------------------------------

LIMBS = ("arm_left", "arm_right", "leg_left", "leg_right")
ORBITERS = (("orbiter_box", "box"), ("orbiter_ball", "ellipsoid"), ("orbiter_rod", "capsule"))


def object_layout() -> Layout:
    slots = [Slot("pedestal", "box", group="pedestal"), Slot("figure", "none", group="figure")]
    slots += [Slot("torso", "ellipsoid", 1, "figure"), Slot("head", "ellipsoid", 1, "figure")]
    for limb in LIMBS:
        upper = len(slots)
        slots += [Slot(f"{limb}.upper", "capsule", 1, "figure"), Slot(f"{limb}.lower", "capsule", upper, "figure")]
    slots += [Slot(name, kind, group=name) for name, kind in ORBITERS]
    return Layout(tuple(slots))


def sample_object(generator: torch.Generator, batch: int, bank_size: int, dtype=torch.float32) -> SceneSpec:
    """B articulated figures doing jumping jacks on a static pedestal, with rigid parts orbiting them.

    World: z up, the figure centred at the origin within about 1.3 of it (the extent of the D-NeRF scenes). The
    torso breathes (a pulsing ellipsoid: non-rigid), the limbs are two-link chains swinging at shoulders, hips,
    elbows and knees (articulated), and a box, a ball and a rod orbit and spin (rigid curves).
    """
    draw = _Draw(generator, batch, dtype)
    layout = object_layout()
    spec = SceneSpec.empty(layout, batch, draw.device, dtype)
    idx = layout.index

    def vec(x, y, z) -> Tensor:
        return torch.stack([torch.as_tensor(v, dtype=dtype, device=draw.device).expand(batch) for v in (x, y, z)],
                           -1)

    slot = idx("pedestal")
    spec.size[:, slot] = vec(draw.uniform(0.55, 0.8), draw.uniform(0.55, 0.8), 0.08)
    spec.offset[:, slot] = vec(0.0, 0.0, -1.08)
    spec.base_rotation[:, slot] = _rot_z(draw.uniform(0, math.pi / 2))

    frequency = draw.uniform(1.0, 2.0)            # jumping-jack cycles over the scene
    phase = draw.uniform(0, 2 * math.pi)
    root = idx("figure")
    spec.base_rotation[:, root] = _rot_z(draw.uniform(0, 2 * math.pi))
    spec.wave_amplitude[:, root, 0, 2] = draw.uniform(0.04, 0.1)          # bobbing up and down
    spec.wave_frequency[:, root, 0] = 2 * frequency
    spec.wave_phase[:, root, 0, 2] = 2 * phase
    spec.offset[:, root, 2] = spec.wave_amplitude[:, root, 0, 2]
    spec.swing_amplitude[:, root, 0] = draw.uniform(0.1, 0.4)             # turning a little about z
    spec.swing_frequency[:, root, 0] = draw.uniform(0.3, 0.8)

    slot = idx("torso")
    spec.size[:, slot] = vec(draw.uniform(0.2, 0.25), draw.uniform(0.13, 0.17), draw.uniform(0.3, 0.36))
    spec.pulse_amplitude[:, slot] = vec(draw.uniform(0.05, 0.12), draw.uniform(0.08, 0.15), 0.03)
    spec.pulse_frequency[:, slot] = 2 * frequency
    spec.pulse_phase[:, slot] = (2 * phase)[:, None]
    torso = spec.size[:, slot]
    slot = idx("head")
    head = draw.uniform(0.13, 0.17)
    spec.size[:, slot] = vec(head, head * 0.95, head * 1.12)
    spec.offset[:, slot] = vec(0.0, 0.0, torso[:, 2] + head * 1.2)
    spec.spin_axis[:, slot] = vec(1.0, 0.0, 0.0)
    spec.swing_amplitude[:, slot, 0] = draw.uniform(0.1, 0.3)             # nodding
    spec.swing_frequency[:, slot, 0] = 2 * frequency
    spec.swing_phase[:, slot, 0] = 2 * phase

    thickness = draw.uniform(0.85, 1.15)
    for limb in LIMBS:
        arm = limb.startswith("arm")
        side = -1.0 if limb.endswith("left") else 1.0
        upper, lower = idx(f"{limb}.upper"), idx(f"{limb}.lower")
        half_upper = draw.uniform(0.12, 0.15) if arm else draw.uniform(0.14, 0.17)
        half_lower = draw.uniform(0.11, 0.14) if arm else draw.uniform(0.13, 0.16)
        radius = (0.05 if arm else 0.065) * thickness
        if arm:
            joint = vec(side * (torso[:, 0] + radius * 0.6), 0.0, torso[:, 2] * 0.75)
            rest, amplitude = draw.uniform(1.2, 1.5), draw.uniform(0.9, 1.25)   # raised from ~10 to ~150 degrees
        else:
            joint = vec(side * torso[:, 0] * 0.5, 0.0, -torso[:, 2] * 0.8)
            rest, amplitude = draw.uniform(0.2, 0.3), draw.uniform(0.1, 0.22)
        # Rot(y, pi + side * a) points the limb's +z at (side * sin a, 0, -cos a): hanging down at a = 0, raised
        # sideways (away from the body) as a grows.
        spec.offset[:, upper] = joint
        spec.base_rotation[:, upper] = _rot_y(math.pi - side * rest)
        spec.spin_axis[:, upper] = vec(0.0, 1.0, 0.0)
        spec.swing_amplitude[:, upper, 0] = -side * amplitude
        spec.swing_frequency[:, upper, 0] = frequency
        spec.swing_phase[:, upper, 0] = phase
        spec.size[:, upper] = vec(radius, radius, half_upper)
        spec.pivot[:, upper, 2] = half_upper
        spec.offset[:, lower, 2] = 2 * half_upper
        spec.spin_axis[:, lower] = vec(0.0, 1.0, 0.0) if arm else vec(1.0, 0.0, 0.0)
        bend = draw.uniform(0.2, 0.5) * (-side if arm else 1.0)
        spec.base_rotation[:, lower] = _rot_y(0.5 * bend) if arm else torch.eye(3, dtype=dtype, device=draw.device)
        spec.swing_amplitude[:, lower, 0] = bend * (1.0 if arm else 0.6)
        spec.swing_frequency[:, lower, 0] = frequency
        spec.swing_phase[:, lower, 0] = phase + (0.0 if arm else math.pi / 2)
        spec.size[:, lower] = vec(radius * 0.9, radius * 0.9, half_lower)
        spec.pivot[:, lower, 2] = half_lower

    for k, (name, kind) in enumerate(ORBITERS):
        slot = idx(name)
        orbit = draw.uniform(0.95, 1.2)
        speed = draw.sign() * draw.uniform(0.5, 1.5)
        start = draw.uniform(0, 2 * math.pi)
        if kind == "box":
            spec.size[:, slot] = draw.uniform(0.07, 0.12, 3)
        elif kind == "ellipsoid":
            r = draw.uniform(0.08, 0.13)
            spec.size[:, slot] = vec(r, r, r * draw.uniform(0.8, 1.2))
        else:
            r = draw.uniform(0.03, 0.05)
            spec.size[:, slot] = vec(r, r, draw.uniform(0.1, 0.16))
        spec.offset[:, slot] = vec(0.0, 0.0, draw.uniform(-0.5, 0.6))
        # A circle of radius `orbit` (two quarter-phase sinusoids) plus a vertical bob.
        spec.wave_amplitude[:, slot, 0, 0] = orbit
        spec.wave_amplitude[:, slot, 1, 1] = orbit
        spec.wave_amplitude[:, slot, 2, 2] = draw.uniform(0.05, 0.25)
        spec.wave_frequency[:, slot, :2] = speed[:, None].abs()
        spec.wave_frequency[:, slot, 2] = draw.uniform(0.5, 2.0)
        spec.wave_phase[:, slot, 0, 0] = start + math.pi / 2
        spec.wave_phase[:, slot, 1, 1] = start + torch.where(speed > 0, 0.0, math.pi)
        spec.wave_phase[:, slot, 2, 2] = draw.uniform(0, 2 * math.pi)
        spec.spin_axis[:, slot] = draw.unit_vector()
        spec.spin_rate[:, slot] = draw.sign() * draw.uniform(2.0, 6.0)

    _materials(spec, draw, [idx("pedestal")], bank_size, (0.6, 1.5))
    _materials(spec, draw, layout.group("figure"), bank_size, (1.5, 4.0))
    _materials(spec, draw, [idx(name) for name, _ in ORBITERS], bank_size, (2.0, 5.0))
    spec.light_position = vec(draw.uniform(-6, 6), draw.uniform(-6, 6), draw.uniform(5, 9))
    spec.ambient = draw.uniform(0.3, 0.45)
    return spec
