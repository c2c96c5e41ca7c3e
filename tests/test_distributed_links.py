"""Stage-to-stage forwarding in a traced pipeline split (no processes): the llama spec computes its rotary positions
and attention mask before the layers; after `forward_through_stages` every stage reads only the stage before it
(what `ScheduleInterleaved1F1B` requires), and the split model still computes what the unsplit one does."""

from __future__ import annotations

import operator
from pathlib import Path

import torch
from torch.distributed.pipelining import SplitPoint, pipeline

from nnspec.distributed.model import build_model
from nnspec.distributed.stage_links import forward_through_stages

ROOT = Path(__file__).resolve().parent.parent
LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)


def _sources(pipe: object) -> list[set[int | None]]:
    """For each stage, the stages its inputs come from (None: a model input)."""
    calls = [n for n in pipe.split_gm.graph.nodes if n.op == "call_module"]   # type: ignore[attr-defined]
    index = {c.name: i for i, c in enumerate(calls)}
    out = []
    for call in calls:
        found: set[int | None] = set()
        for arg in call.args:
            while arg.op == "call_function" and arg.target is operator.getitem:
                arg = arg.args[0]
            found.add(index.get(arg.name) if arg.op == "call_module" else None)
        out.append(found)
    return out


def test_values_skipping_stages_are_forwarded_one_stage_at_a_time() -> None:
    model = build_model(ROOT / "examples" / "llama.yaml", seed=0, **LLAMA)
    pipe = pipeline(model, mb_args=(torch.zeros(2, 8, dtype=torch.int64),),
                    split_spec={f"layers.{i}": SplitPoint.BEGINNING for i in (1, 2, 3)})
    assert _sources(pipe)[3] == {0, 2}                  # as traced: stage 0 sends the mask and positions to stage 3
    arity = [len([n for n in pipe.get_stage_module(i).graph.nodes if n.op == "placeholder"]) for i in range(4)]
    assert forward_through_stages(pipe) == 4            # mask and positions, each through stages 1 and 2
    assert _sources(pipe) == [{None}, {0}, {1}, {2}]
    # stages 1 and 2 already read both values: they return what they received, with no second input
    assert [len([n for n in pipe.get_stage_module(i).graph.nodes if n.op == "placeholder"]) for i in range(4)] == arity
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pipe(ids)[0], model(ids), rtol=0, atol=0)
    assert forward_through_stages(pipe) == 0            # idempotent: nothing left to route


def test_sequence_parallelism_refuses_a_sequence_the_mesh_does_not_divide() -> None:
    """The residual stream is split evenly by position: a forward with a length the mesh does not divide is refused
    before any collective runs (the check `apply_tp` hooks onto the model)."""
    import pytest

    from nnspec.compiler.check import check
    from nnspec.compiler.tp_plan import derive_tp_plan
    from nnspec.distributed.tensor_parallel import _sequence_divides

    plan = derive_tp_plan(check(ROOT / "examples" / "llama.yaml", **LLAMA).model, 2, sequence_parallel=True)
    hook = _sequence_divides(plan)
    hook(torch.nn.Identity(), (torch.zeros(3, 8, dtype=torch.int64),))      # 8 positions over 2 ranks: fine
    with pytest.raises(ValueError, match="splits the sequence evenly; got a sequence of 7"):
        hook(torch.nn.Identity(), (torch.zeros(3, 7, dtype=torch.int64),))
