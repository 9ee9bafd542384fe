"""Every kind of object run.restore(...) accepts holds the restored state afterwards, checked from the
user's side: the script's own object, after a checkpoint's round trip through torch.save/torch.load
(weights_only, as the session loads it). Each case fails when that kind's restore is dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from support import round_trip
from torchdata.stateful_dataloader import StatefulDataLoader

from trm_cluster.state.attributes import Attributes, attributes
from trm_cluster.state.registered import RegisteredState, per_rank


def trained_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Linear(3, 2)


def loader() -> StatefulDataLoader:
    return StatefulDataLoader(
        list(range(20)), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(3)
    )


class Curriculum:
    """A script's own object without state_dict(): its stage and history are plain attributes."""

    def __init__(self) -> None:
        self.stage, self.history, self.name = 0, [0.0], "peptides"


def _advance_curriculum(wrapped: Attributes) -> None:
    wrapped.owner.stage = 2
    wrapped.owner.history.append(0.5)


Case = tuple[Callable[[], Any], Callable[[Any], Any], Callable[[Any, Any], bool]]
"""(build the object afresh, move it away from its fresh state, do two objects hold the same state)."""


def _advance_loader(data: StatefulDataLoader) -> None:
    data.batches = iter(data)  # type: ignore[attr-defined]  # the script's own iterator, three batches in
    for _ in range(3):
        next(data.batches)  # type: ignore[attr-defined]


def _same_loader(original: StatefulDataLoader, restored: StatefulDataLoader) -> bool:
    """The restored loader's next batch is the one the original's live iterator yields next."""
    return bool(next(iter(restored)).tolist() == next(original.batches).tolist())  # type: ignore[attr-defined]


CASES: dict[str, Case] = {
    "module": (
        lambda: torch.nn.Linear(3, 2),
        lambda m: m.load_state_dict(trained_model().state_dict()),
        lambda a, b: all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict()),
    ),
    "dict": (dict, lambda d: d.update(epoch=4, best=0.25), lambda a, b: a == b),
    "tensor": (lambda: torch.zeros(3), lambda t: t.add_(torch.tensor([1.0, 2.0, 3.0])), torch.equal),
    "generator": (
        torch.Generator,
        lambda g: (g.manual_seed(5), torch.rand(4, generator=g)),
        lambda a, b: torch.equal(a.get_state(), b.get_state()),
    ),
    "loader": (loader, _advance_loader, _same_loader),
    "attributes": (
        lambda: attributes(Curriculum(), "stage", "history"),
        _advance_curriculum,
        lambda a, b: (a.owner.stage, a.owner.history) == (b.owner.stage, b.owner.history),
    ),
}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("part", ["shared", "per_rank"])
def test_the_users_own_object_holds_the_restored_state(kind: str, part: str) -> None:
    build, advance, same = CASES[kind]
    original = build()
    advance(original)
    wrap = per_rank if part == "per_rank" else (lambda obj: obj)
    saved = RegisteredState({"x": wrap(original)})
    checkpoint = round_trip(saved.rank_state_dict() if part == "per_rank" else saved.state_dict())
    fresh = build()
    assert not (kind != "loader" and same(original, fresh)), "the case must start from another state"
    restored = RegisteredState({"x": wrap(fresh)})
    if part == "per_rank":
        restored.load_rank_state_dict(checkpoint)
    else:
        restored.load_state_dict(checkpoint)
    assert same(original, fresh)


def test_none_registers_nothing_and_a_missing_attribute_is_refused_in_one_line() -> None:
    """``scheduler=None`` (a script's optional scheduler) registers nothing: a checkpoint without it loads."""
    tensor = torch.ones(2)
    assert RegisteredState({"x": tensor, "scheduler": None}).state_dict().keys() == {"x"}
    RegisteredState({"x": torch.zeros(2), "scheduler": None}).load_state_dict({"x": tensor})
    with pytest.raises(
        TypeError, match=r"^trm_cluster.attributes\(...\): a Curriculum has no attribute 'stag'$"
    ):
        attributes(Curriculum(), "stag")
