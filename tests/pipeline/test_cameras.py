import numpy as np

from pipeline.cameras import (Sim3, align_cameras_sim3, intrinsics_from_fov, look_at_w2c, opencv_w2c_to_opengl_c2w,
                              opengl_c2w_to_opencv_w2c, umeyama_sim3)
from pipeline.scene.model import Camera


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_opengl_camera_looking_at_origin_sees_it_at_the_centre_in_front():
    # A Blender camera at (0, -4, 0) looking at the origin: its -z axis points along +y, up is +z.
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).T @ np.eye(3)
    c2w[:3, :3] = np.stack([[1, 0, 0], [0, 0, 1], [0, -1, 0]], axis=1)  # columns: right, up, back
    c2w[:3, 3] = [0, -4, 0]
    w2c = opengl_c2w_to_opencv_w2c(c2w)
    cam = Camera(intrinsics_from_fov(np.radians(60), 200, 100), w2c, 200, 100)
    uv, z = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert np.allclose(uv[0], [100, 50]) and np.isclose(z[0], 4.0)
    assert uv[1, 1] < 50  # world up (+z) is image up (smaller y)
    assert np.allclose(opencv_w2c_to_opengl_c2w(w2c), c2w)


def test_look_at_and_fov():
    w2c = look_at_w2c([3.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    K = intrinsics_from_fov(np.radians(90), 64, 64)
    assert np.isclose(K[0, 0], 32.0)
    uv, z = Camera(K, w2c, 64, 64).project(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert np.allclose(uv[0], [32, 32]) and np.isclose(z[0], 3.0) and uv[1, 1] < 32


def test_umeyama_recovers_a_known_similarity(rng):
    src = rng.normal(size=(50, 3))
    truth = Sim3(2.5, random_rotation(rng), rng.normal(size=3))
    est = umeyama_sim3(src, truth.apply(src))
    assert np.isclose(est.scale, 2.5) and np.allclose(est.rotation, truth.rotation) and np.allclose(
        est.translation, truth.translation)
    assert np.allclose(est.inverse().apply(truth.apply(src)), src)


def test_camera_alignment_recovers_a_known_similarity(rng):
    truth = Sim3(0.7, random_rotation(rng), rng.normal(size=3))
    src = np.stack([look_at_w2c(rng.normal(size=3) * 3 + [0, 0, 5], rng.normal(size=3) * 0.1) for _ in range(6)])
    tgt = np.stack([truth.transform_w2c(w) for w in src])
    est = align_cameras_sim3(src, tgt)
    assert np.isclose(est.scale, 0.7) and np.allclose(est.rotation, truth.rotation, atol=1e-9)
    # A world point seen by camera 0 projects identically before and after the transform.
    X = rng.normal(size=3)
    x_src = src[0][:3, :3] @ X + src[0][:3, 3]
    x_tgt = tgt[0][:3, :3] @ truth.apply(X) + tgt[0][:3, 3]
    assert np.allclose(x_tgt, 0.7 * x_src)



def test_camera_alignment_keeps_a_positive_scale_when_the_trajectories_disagree(rng):
    # Same orientations, but the source's centres run the other way along the path (a network's poses for a camera
    # that barely moved): least squares would give a negative scale, and the geometry would collapse to a point.
    path = np.linspace(-1.0, 1.0, 8)[:, None] * np.array([1.0, 0.2, 0.0])
    target = np.stack([look_at_w2c(c + [0, 0, 5], np.zeros(3)) for c in path])
    source = target.copy()
    for w, c in zip(source, path):
        w[:3, 3] = -w[:3, :3] @ (-0.5 * c + [0, 0, 5])                      # centres mirrored, half the extent
    est = align_cameras_sim3(source, target)
    assert np.isclose(est.scale, 2.0)                                          # the ratio of the spreads
    assert np.allclose(est.rotation, np.eye(3), atol=1e-9)
    # Where they agree up to noise, the least-squares scale (spread ratio x correlation) is kept.
    noisy = np.stack([look_at_w2c(0.5 * c + [0, 0, 5] + rng.normal(size=3) * 0.01, np.zeros(3)) for c in path])
    assert 1.9 < align_cameras_sim3(noisy, target).scale < 2.01

def test_align_cameras_sim3_with_a_given_scale_keeps_the_rotation_and_matches_the_mean_centres():
    from pipeline.cameras import align_cameras_sim3, camera_centres

    rng = np.random.default_rng(4)
    target = np.tile(np.eye(4), (6, 1, 1))
    for w in target:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        w[:3, :3] = q * np.sign(np.linalg.det(q))
        w[:3, 3] = rng.normal(size=3)
    free = align_cameras_sim3(target, target)
    fixed = align_cameras_sim3(target, target, scale=2.5)
    assert abs(free.scale - 1) < 1e-9 and fixed.scale == 2.5
    assert np.allclose(fixed.rotation, free.rotation)
    centres = camera_centres(target)
    assert np.allclose(fixed.apply(centres).mean(0), centres.mean(0))
    assert np.allclose(centres[0], -target[0, :3, :3].T @ target[0, :3, 3])
