"""The Triton rotary kernel reads the cos/sin tables -O2 makes once per forward (`rotary-tables`) instead of
recomputing them from the positions in every call. Kernel: given tables turn x as the reference does with the
positions they were made for (tables of other positions than x's own 0, 1, ... show that they are what is read),
per-row and shared positions, fp32 and bf16, bad tables refused. Generated code: Llama at -O2 for the Triton
target passes the tables, and equals the torch target with left-padded positions (TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

import torch

import nnspec
from nnspec.backends.torch.runtime import rotary_tables
from nnspec.backends.triton import runtime
from nnspec.generated import compile_spec

if not runtime.interpreting():
    pytest.skip("the kernels are tested in Triton's interpreter: TRITON_INTERPRET=1 (tests/conftest.py sets it)",
                allow_module_level=True)

from nnspec.backends.triton.kernels import rotary

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
LLAMA = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 48, "vocab_size": 50}


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    runtime.reset()


@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per-row"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_turns_by_the_tables_it_is_given(dtype: torch.dtype, interleaved: bool, per_row: bool) -> None:
    x = torch.randn(2, 7, 3, 20, generator=torch.Generator().manual_seed(0)).to(dtype)   # [B, T, H, D], odd half
    positions = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [0, 0, 1, 2, 3, 4, 5]]) if per_row else torch.arange(3, 10)
    cos, sin = rotary_tables(7, 20, 500.0, positions, x.device, torch.float32)   # as -O2 makes them: float32
    got = rotary.rotary(x, 1, 500.0, interleaved=interleaved, cos=cos, sin=sin)
    want = rotary.rotary_reference(x, 1, 500.0, positions, interleaved)
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])
    assert runtime.LAUNCHES["rotary"] == 1
    # the positions 0..6 the kernel would have used by itself turn differently: the tables were read
    assert not torch.allclose(got.float(), rotary.rotary_reference(x, 1, 500.0, None, interleaved).float(), atol=1e-2)


def test_kernel_refuses_tables_of_the_wrong_shape() -> None:
    x = torch.randn(2, 7, 3, 20)
    cos, sin = rotary_tables(7, 20, 500.0, None, x.device, torch.float32)
    with pytest.raises(ValueError, match="cos and sin"):
        rotary.rotary(x, 1, 500.0, cos=cos)
    with pytest.raises(ValueError, match="the cos table must be"):
        rotary.rotary(x, 1, 500.0, cos=cos[:5], sin=sin[:5])


def test_llama_triton_reads_the_hoisted_tables_and_equals_torch() -> None:
    source = compile_spec("examples/llama.yaml", target="triton", opt=2, **LLAMA).source
    calls = [line for line in source.splitlines() if "K.rotary(" in line]
    assert calls and all("cos=" in line and "sin=" in line and "positions=" not in line for line in calls)
    torch.manual_seed(0)
    ref = nnspec.build("examples/llama.yaml", opt=2, **LLAMA).eval()
    tri = nnspec.build("examples/llama.yaml", target="triton", opt=2, **LLAMA).eval()
    tri.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    with torch.inference_mode():
        got = tri(ids, attention_mask=mask, position_ids=positions)
        want = ref(ids, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert runtime.LAUNCHES["rotary"] == 2 * LLAMA["num_hidden_layers"]
