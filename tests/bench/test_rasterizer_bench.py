"""bench/rasterizer_bench.py's record of where parity differences come from, on the CPU (gsplat's CUDA projection
replaced by a stand-in built from ours)."""

from __future__ import annotations

import gsplat
import torch

from bench.rasterizer_bench import projection_agreement, random_scene
from stages.optimize.rasterize import project_gaussians, rasterization


def test_projection_agreement_counts_bit_equal_values_and_renders_with_the_given_means_and_conics(monkeypatch):
    width, height = 48, 40
    inputs = random_scene(400, width, height, seed=3)
    mine = project_gaussians(*inputs[:4], inputs[5], inputs[6], width, height)
    shifted = mine.conics.clone()
    shifted[0, ::2, 0] = torch.nextafter(shifted[0, ::2, 0], torch.tensor(float("inf")))   # half of them, 1 ulp
    moved = mine.means2d.clone()
    moved[0, :, 0] += 0.25                                               # every mean a quarter pixel to the right

    def stand_in(means, covars, quats, scales, viewmats, Ks, width, height, **kwargs):
        return mine.radii, moved, mine.depths, shifted, None

    monkeypatch.setattr(gsplat, "fully_fused_projection", stand_in)
    reference, _, _ = rasterization(*inputs, width, height, backend="torch")
    record = projection_agreement(inputs, width, height, {}, reference)
    kept = int((mine.radii > 0).all(-1).sum())
    assert record["compared"] == kept > 100
    assert record["bit_equal_share"]["depths"] == 1.0 and record["bit_equal_share"]["means2d"] < 0.51
    assert abs(record["bit_equal_share"]["conics"] - (1 - 0.5 / 3)) < 0.02
    # rendered with the stand-in's means and conics: a quarter pixel off, so the image differs from ours
    assert record["image_max_abs_diff_with_gsplat_means_and_conics"] > 1e-2
    assert record["image_pixels_above_1e-4_with_gsplat_means_and_conics"] > 100
    # and with our own projection handed back, nothing differs
    monkeypatch.setattr(gsplat, "fully_fused_projection",
                        lambda *a, **k: (mine.radii, mine.means2d, mine.depths, mine.conics, None))
    same = projection_agreement(inputs, width, height, {}, reference)
    assert same["bit_equal_share"] == {"depths": 1.0, "means2d": 1.0, "conics": 1.0}
    assert same["image_max_abs_diff_with_gsplat_means_and_conics"] == 0.0
