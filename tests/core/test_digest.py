"""weights_sha256: one digest per bit-identical set of weights, whatever the key order or memory layout;
a different one for any change of a bit, a dtype, a shape or a name."""

from __future__ import annotations

import torch

from trm_cluster.core.digest import weights_sha256

WEIGHTS = {"layer.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "layer.bias": torch.ones(3)}


def test_the_same_weights_in_another_key_order_or_layout_give_the_same_digest() -> None:
    reordered = {key: WEIGHTS[key].clone() for key in reversed(WEIGHTS)}
    assert list(reordered) != list(WEIGHTS)
    transposed = WEIGHTS["layer.weight"].t().contiguous().t()  # the same values, column-major
    assert not transposed.is_contiguous()
    expected = weights_sha256(WEIGHTS)
    assert weights_sha256(reordered) == expected
    assert weights_sha256({**WEIGHTS, "layer.weight": transposed}) == expected


def test_a_bit_a_dtype_a_shape_or_a_name_changes_the_digest() -> None:
    weight = WEIGHTS["layer.weight"]
    flipped = weight.clone()
    flipped.reshape(-1).view(torch.uint8)[-1] ^= 1
    variants = [
        {**WEIGHTS, "layer.weight": flipped},
        {**WEIGHTS, "layer.weight": weight.view(torch.int32)},  # the same bytes as another dtype
        {**WEIGHTS, "layer.weight": weight.reshape(4, 3)},  # the same bytes in another shape
        {"layer.w": weight, "layer.bias": WEIGHTS["layer.bias"]},
    ]
    digests = {weights_sha256(WEIGHTS), *(weights_sha256(v) for v in variants)}
    assert len(digests) == 1 + len(variants)
