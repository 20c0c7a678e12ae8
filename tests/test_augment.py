"""Each augmentation changes images exactly as specified, one draw per image, and
the same generator seed gives the same batch."""
import numpy as np
import torch

from cnnspec.training.augment import (
    Augmentation,
    alternating_flip,
    alternating_flip_mask,
    cutout,
    random_flip,
    random_shift,
)


def distinct_images(n=16, channels=2, size=8):
    """Every pixel of every image different, so a moved pixel can be traced."""
    return torch.arange(n * channels * size * size, dtype=torch.float32).view(n, channels, size, size)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_flip_mirrors_exactly_about_half_of_the_images():
    images = distinct_images(64)
    flipped = random_flip(images, seeded(), dim=-1)
    mirrored = [(flipped[i] == images[i].flip(-1)).all().item() for i in range(64)]
    unchanged = [(flipped[i] == images[i]).all().item() for i in range(64)]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert 16 < sum(mirrored) < 48


def test_vertical_flip_mirrors_rows():
    images = distinct_images(32)
    flipped = random_flip(images, seeded(1), dim=-2)
    changed = [i for i in range(32) if not torch.equal(flipped[i], images[i])]
    assert changed
    for i in changed:
        assert torch.equal(flipped[i], images[i].flip(-2))


def test_alternating_flip_flips_each_image_in_exactly_alternate_epochs():
    n = 32
    images = distinct_images(n)
    mask = alternating_flip_mask(n, seed=5, device="cpu")
    assert 0 < mask.sum() < n  # epoch 0 is a random mix
    indices = torch.randperm(n, generator=seeded(2))
    states = []
    for epoch in range(4):
        out = alternating_flip(images[indices], indices, epoch, mask)
        states.append(torch.tensor([not torch.equal(out[k], images[indices][k]) for k in range(n)]))
    for epoch in range(1, 4):
        assert torch.equal(states[epoch], ~states[epoch - 1])
    # the per-image decision follows the image, not its position in the batch
    assert torch.equal(states[0], mask[indices])


def test_alternating_flip_mask_is_reproducible():
    assert torch.equal(alternating_flip_mask(100, 3, "cpu"), alternating_flip_mask(100, 3, "cpu"))
    assert not torch.equal(alternating_flip_mask(100, 3, "cpu"), alternating_flip_mask(100, 4, "cpu"))


def reflect_shift_reference(image: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    h, w = image.shape[1:]
    return padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def matching_shift(original: np.ndarray, shifted: np.ndarray, pad: int, mode: str):
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            if mode == "reflect":
                expected = reflect_shift_reference(original, dy, dx, pad)
            else:
                padded = np.pad(original, ((0, 0), (pad, pad), (pad, pad)))
                h, w = original.shape[1:]
                expected = padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
            if np.array_equal(expected, shifted):
                return dy, dx
    return None


def test_translate_shifts_each_image_by_at_most_n_pixels_with_reflect_padding():
    images = distinct_images(40)
    shifted = random_shift(images, 2, seeded(3), mode="reflect")
    shifts = [matching_shift(images[i].numpy(), shifted[i].numpy(), 2, "reflect") for i in range(40)]
    assert None not in shifts
    assert len(set(shifts)) > 5  # each image its own draw
    assert any(dy != 0 or dx != 0 for dy, dx in shifts)


def test_translate_works_on_uint8_batches():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=seeded(0))
    shifted = random_shift(images, 1, seeded(4))
    assert shifted.dtype == torch.uint8
    assert all(matching_shift(images[i].numpy(), shifted[i].numpy(), 1, "reflect") for i in range(6))


def test_rows_and_columns_can_shift_by_different_amounts():
    """(rows, columns) limits, as a spec's random_translation layer passes them."""
    images = distinct_images(40)
    shifted = random_shift(images, (0, 2), seeded(6), mode="reflect")
    shifts = [matching_shift(images[i].numpy(), shifted[i].numpy(), 2, "reflect") for i in range(40)]
    assert None not in shifts
    assert all(dy == 0 for dy, _ in shifts) and any(dx != 0 for _, dx in shifts)


def test_crop_with_padding_fills_zeros():
    images = distinct_images(30) + 1  # no zero pixel of its own
    cropped = random_shift(images, 3, seeded(5), mode="zeros")
    shifts = [matching_shift(images[i].numpy(), cropped[i].numpy(), 3, "zeros") for i in range(30)]
    assert None not in shifts
    assert any((cropped[i] == 0).any() for i in range(30))


def test_cutout_zeroes_one_n_by_n_square_per_image():
    images = distinct_images(20) + 1
    out = cutout(images, 3, seeded(6))
    for i in range(20):
        zeros = (out[i] == 0)
        assert torch.equal(zeros[0], zeros[1])  # same square in every channel
        rows, cols = torch.nonzero(zeros[0], as_tuple=True)
        assert len(rows) == 9
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
        assert torch.equal(out[i][~zeros], images[i][~zeros])


def test_augmentation_from_params_is_reproducible_and_does_what_params_say():
    options = {"hflip": False, "alternating_flip": True, "vflip": False, "translate": 2,
               "crop_padding": 0, "cutout": 2}
    images = distinct_images(8) + 1
    indices = torch.arange(8)
    first = Augmentation.from_params(options, 8, seed=1, device="cpu")(images, indices, 0, seeded(9))
    second = Augmentation.from_params(options, 8, seed=1, device="cpu")(images, indices, 0, seeded(9))
    assert torch.equal(first, second)
    assert ((first == 0).sum(dim=(1, 2, 3)) == 2 * 2 * 2).all()  # a 2x2 cutout in both channels
    off = {key: 0 for key in options}
    assert torch.equal(Augmentation.from_params(off, 8, 1, "cpu")(images, indices, 0, seeded(9)), images)
