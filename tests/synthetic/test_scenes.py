"""Scene descriptions: motions are what they claim to be (articulated chains stay connected, rigid bodies keep
their shape, deforming ones do not), dynamic flags follow the kinematic tree, and sampled rooms are well formed."""

import torch

from pipeline.synthetic.primitives import inside
from pipeline.synthetic.scenes import (DYNAMIC_OBJECTS, NON_RIGID_OR_ARTICULATED, apply3, axis_angle, pose,
                                       sample_object, sample_room)

TIMES = torch.linspace(0, 1, 9, dtype=torch.float64)[None]


def capsule_ends(posed, slot):
    """(B, S, 2, 3) world positions of a capsule's two sphere centres (local z = -L and +L)."""
    half = posed.size[:, :, slot, 2]
    axis = posed.rotation[:, :, slot, :, 2]
    centre = posed.translation[:, :, slot]
    return torch.stack([centre - half[..., None] * axis, centre + half[..., None] * axis], 2)


def test_rotations_are_orthonormal_and_follow_the_right_hand_rule():
    axis = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    angle = torch.rand(50, dtype=torch.float64) * 6
    R = axis_angle(axis, angle)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(50, dtype=torch.float64))
    assert torch.allclose(apply3(R, axis), axis, atol=1e-12)
    z = axis_angle(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor(torch.pi / 2, dtype=torch.float64))
    assert torch.allclose(apply3(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)),
                          torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-15)


def test_articulated_chains_stay_connected_and_rigid_parts_keep_their_shape():
    spec = sample_room(torch.Generator().manual_seed(0), 3, 10, 64, 36).to(torch.float64)
    posed = pose(spec, TIMES.expand(3, -1))
    layout = spec.layout
    links = [layout.index(f"arm.link{i}") for i in (1, 2, 3)]
    for lower, upper in zip(links, links[1:]):
        # The child's bottom sphere sits on the parent's top sphere at every time: a joint.
        assert torch.allclose(capsule_ends(posed, lower)[:, :, 1], capsule_ends(posed, upper)[:, :, 0], atol=1e-12)
    tip = capsule_ends(posed, links[2])[:, :, 1]
    assert (tip[:, 1:] - tip[:, :-1]).norm(dim=-1).amax() > 0.05                  # and the arm does move
    # Rigid: sizes constant; the blob (non-rigid) changes size; worm segments move relative to each other.
    assert torch.equal(posed.size[:, :, layout.index("tumbler")], posed.size[:, :1, layout.index("tumbler")].expand(
        -1, TIMES.shape[1], -1))
    assert (posed.size[:, :, layout.index("blob")].std(1) > 0.01).all()
    first, last = layout.index("worm.segment0"), layout.index(f"worm.segment{3}")
    gap = (posed.translation[:, :, first] - posed.translation[:, :, last]).norm(dim=-1)
    assert (gap.amax(1) - gap.amin(1) > 1e-3).all()


def test_figure_limbs_hang_from_the_body_and_everything_stays_near_the_origin():
    spec = sample_object(torch.Generator().manual_seed(1), 2, 10).to(torch.float64)
    posed = pose(spec, TIMES.expand(2, -1))
    layout = spec.layout
    for limb in ("arm_left", "arm_right", "leg_left", "leg_right"):
        upper, lower = layout.index(f"{limb}.upper"), layout.index(f"{limb}.lower")
        assert torch.allclose(capsule_ends(posed, upper)[:, :, 1], capsule_ends(posed, lower)[:, :, 0], atol=1e-12)
    assert posed.translation.norm(dim=-1).amax() < 1.5
    # Arms swing wide (jumping jacks): the hands travel by more than the arm's length.
    hand = capsule_ends(posed, layout.index("arm_left.lower"))[:, :, 1]
    assert ((hand.amax(1) - hand.amin(1)).norm(dim=-1) > 0.3).all()


def test_dynamic_flags_follow_the_kinematic_tree():
    spec = sample_object(torch.Generator().manual_seed(2), 1, 10)
    layout = spec.layout
    head = layout.index("head")
    spec.swing_amplitude[:, head] = 0.0                     # the head no longer nods ...
    assert not spec.moving()[0, head]
    assert spec.dynamic()[0, head]                          # ... but still moves with the figure
    dynamic = spec.dynamic()[0]
    assert not dynamic[layout.index("pedestal")]
    assert dynamic[[i for i, s in enumerate(layout.slots) if s.name != "pedestal"]].all()


def test_rooms_have_one_to_three_moving_objects_and_cameras_in_free_space():
    batch = 32
    spec = sample_room(torch.Generator().manual_seed(3), batch, 10, 64, 36).to(torch.float64)
    layout = spec.layout
    first_slot = {g: layout.group(g)[0] for g in DYNAMIC_OBJECTS}
    moving = torch.stack([spec.active[:, first_slot[g]] for g in DYNAMIC_OBJECTS], 1)
    assert ((moving.sum(1) >= 1) & (moving.sum(1) <= 3)).all()
    assert torch.stack([spec.active[:, first_slot[g]] for g in NON_RIGID_OR_ARTICULATED], 1).any(1).all()
    assert (moving.sum(1) == 3).any() and (moving.sum(1) == 1).any()
    assert not spec.dynamic()[:, [i for i, s in enumerate(layout.slots) if s.group not in DYNAMIC_OBJECTS]].any()
    # The camera is inside the room and outside every primitive at all times.
    times = TIMES.expand(batch, -1)
    posed = pose(spec, times)
    w2c = spec.camera_path.world_to_camera(times)
    centre = -(w2c[..., :3, :3].transpose(-1, -2) @ w2c[..., :3, 3:])[..., 0]        # (B, S, 3)
    for slot, s in enumerate(layout.slots):
        if s.kind == "none":
            continue
        local = (posed.rotation[:, :, slot].transpose(-1, -2) @ (centre - posed.translation[:, :, slot])[..., None])
        contains = inside(s.kind, local[..., 0].permute(2, 0, 1), posed.size[:, :, slot].permute(2, 0, 1))
        if s.kind == "room":
            assert contains.all()
        else:
            assert not (contains & spec.active[:, slot, None]).any(), s.name
    fov = spec.fov_x                                         # horizontal = longer side for a wide image
    assert ((fov >= torch.deg2rad(torch.tensor(40.0)) - 1e-9) & (fov <= torch.deg2rad(torch.tensor(90.0)) + 1e-9)).all()
