"""The texture bank: seamless, correctly mip-mapped and filtered, and never flat."""

import pytest
import torch

from pipeline.synthetic.textures import build_bank, make_texture_bank


@pytest.fixture(scope="module")
def bank():
    return make_texture_bank(torch.Generator().manual_seed(0), procedural=8, size=64)


def level(bank, index):
    s = int(bank.sizes[index])
    start = int(bank.offsets[index])
    return bank.table[start:start + bank.count * s * s].reshape(bank.count, s, s, 3)


def test_mip_levels_are_box_filtered_and_sampling_is_bilinear_then_linear_across_levels(bank):
    top, second = level(bank, 0), level(bank, 1)
    assert torch.allclose(second, top.reshape(bank.count, 32, 2, 32, 2, 3).mean((2, 4)), atol=1e-6)
    assert level(bank, bank.levels - 1).shape[1] == 1
    generator = torch.Generator().manual_seed(3)
    texture = torch.randint(0, bank.count, (200,), generator=generator)
    u, v = torch.rand(2, 200, generator=generator) * 6 - 3
    # Texel centres of level 0 sample exactly; texel coordinates wrap with period 1.
    i, j = torch.randint(0, 64, (2, 200), generator=generator)
    exact = bank.sample(texture, (j + 0.5) / 64 + 2, (i + 0.5) / 64 - 1)
    assert torch.allclose(exact, top[texture, i, j], atol=1e-5)
    # Bilinear reference at level 1 from the four neighbouring texels.
    x, y = (u % 1) * 32 - 0.5, (v % 1) * 32 - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long() % 32, y0.long() % 32
    x1, y1 = (x0 + 1) % 32, (y0 + 1) % 32
    reference = ((second[texture, y0, x0] * (1 - fx) + second[texture, y0, x1] * fx) * (1 - fy)
                 + (second[texture, y1, x0] * (1 - fx) + second[texture, y1, x1] * fx) * fy)
    assert torch.allclose(bank.sample(texture, u, v, torch.ones(200)), reference, atol=1e-5)
    halfway = 0.5 * (bank.sample(texture, u, v, torch.ones(200)) + bank.sample(texture, u, v, torch.full((200,), 2.)))
    assert torch.allclose(bank.sample(texture, u, v, torch.full((200,), 1.5)), halfway, atol=1e-5)


def test_textures_are_seamless_and_textured_at_every_scale(bank):
    top = level(bank, 0)
    # Seamless: the step across the wrap-around is no larger than the largest step between neighbouring columns
    # (rows) inside the texture (a cell boundary of a checker board, say).
    for axis in (1, 2):
        steps = (top - top.roll(1, dims=axis)).abs().mean(dim=(3, 3 - axis))         # (T, S): step before each
        assert torch.all(steps[:, 0] <= steps[:, 1:].amax(1) + 0.01)
    assert len(bank.names) == bank.count and bank.names[0] == "photo:astronaut"
    procedural = torch.tensor([not n.startswith("photo") for n in bank.names])
    # No flat region: every 8 x 8 block of a procedural texture varies, and so do the coarse mip levels.
    blocks = top[procedural].reshape(-1, 8, 8, 8, 8, 3).std(dim=(2, 4))          # (T, 8, 8, 3) block std
    assert blocks.amax(-1).min() > 0.01
    assert top[~procedural].std(dim=(1, 2)).amax(-1).min() > 0.05
    assert level(bank, 3).std(dim=(1, 2)).amax(-1).min() > 0.03                  # 8 x 8 level: seen from afar


def test_bank_rejects_non_power_of_two_images():
    with pytest.raises(ValueError):
        build_bank(torch.zeros(1, 48, 48, 3), ("x",))


def test_bank_is_reproducible_from_its_seed():
    a = make_texture_bank(torch.Generator().manual_seed(5), procedural=4, size=32)
    b = make_texture_bank(torch.Generator().manual_seed(5), procedural=4, size=32)
    c = make_texture_bank(torch.Generator().manual_seed(6), procedural=4, size=32)
    assert torch.equal(a.table, b.table) and not torch.equal(a.table, c.table)
