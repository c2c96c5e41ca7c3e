"""Contractions run as one GEMM on views whatever their spelling: `y[B, T, e, f] = x * w`, `w * x`,
`matmul(x, w, over=h)`, `x @ w` and a split linear give the values of a plain `torch.einsum` written here, and no
parameter is copied per call (counted with a dispatch mode that sees every aten op; the counter is shown to catch
the copy `torch.einsum` makes of such a weight). Batched, multi-axis and three-operand contractions likewise."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import nnspec  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

H, E, F_, D = 12, 3, 5, 7
COPIES = {"clone", "copy_", "_to_copy", "contiguous", "_reshape_copy"}


def spec(inputs: str, body: str, out: str) -> str:
    return (f"nnspec: 1\nname: c\ndims: {{h: {H}, e: {E}, f: {F_}, d: {D}}}\ninputs:\n{inputs}\n"
            f"outputs:\n  y: float32[{out}]\nbody: |\n  {body}\n")


X = "  x: float32[B, T, h]"
# spelling -> (body, the weight's einsum letters against x "bth", the result's letters)
SPELLINGS: dict[str, tuple[str, str]] = {
    "annotated x * w": ("y[B, T, e, f] = x * param(e, f, h, name=w)", "efh"),
    "annotated w * x": ("y[B, T, e, f] = param(e, f, h, name=w) * x", "efh"),
    "matmul()": ("y = matmul(x, param(e, f, h, name=w), over=h)", "efh"),
    "x @ w": ("y = x @ param(h, e, f, name=w)", "hef"),
    "linear, split": ("y = linear(x, e * f, bias=false, name=w)[B, T, (e f)]", "(ef)h"),
}


class Copies(TorchDispatchMode):
    """Counts aten ops that materialise a copy of a tensor sharing storage with one of `params`."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in COPIES and any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in self.storages
                                  for a in args):
            self.count += 1
        return func(*args, **(kwargs or {}))


def built(text: str, opt: int) -> Any:
    torch.manual_seed(0)
    return nnspec.build(text, opt=opt).eval()


def weight_copies(model: Any, *args: torch.Tensor) -> int:
    with Copies(list(model.parameters())) as c:
        model(*args)
    return c.count


def test_the_counter_sees_einsums_weight_copy() -> None:
    w = torch.randn(E, D, F_)       # dense experts' down projections, [e, d, f]
    g = torch.randn(2, 3, E, F_)
    with Copies([w]) as c:
        torch.einsum("btef,edf->btd", g, w)
    assert c.count > 0


@pytest.mark.parametrize("opt", [0, 2])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_spellings_equal_einsum_without_copying_the_weight(spelling: str, opt: int) -> None:
    body, letters = SPELLINGS[spelling]
    model = built(spec(X, body, "B, T, e, f"), opt)
    w = model.state_dict()["w.weight" if "linear" in body else "w"]
    if letters == "(ef)h":
        w, letters = w.reshape(E, F_, H), "efh"
    x = torch.randn(2, 3, H)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), torch.einsum(f"bth,{letters}->btef", x, w), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert weight_copies(model, x) == 0
    source = compile_spec(spec(X, body, "B, T, e, f"), opt=opt).source
    assert "einsum" not in source.split("def forward", 1)[1]


# (inputs, body, result axes, the reference's einsum over the inputs in order then the parameter, copies allowed)
CASES = {
    "batched, attention values": ("  p: float32[B, n, T, S]\n  v: float32[B, S, n, h]",
                                  "y[B, n, T, h] = p * v", "B, n, T, h", "bnts,bsnh->bnth", None),
    "batched, several free axes": ("  x: float32[B, e, T, f, h]", "y[B, e, T, f, d] = x * param(e, d, h, name=w)",
                                   "B, e, T, f, d", "betfh,edh->betfd", 0),
    "batched, no free axis on one side": ("  x: float32[B, e, h]", "y[B, e] = x * param(e, h, name=w)",
                                          "B, e", "beh,eh->be", 0),
    "two contracted axes, weight [out, e, f]": ("  g: float32[B, T, e, f]", "y[B, T, d] = g * param(d, e, f, name=w)",
                                                "B, T, d", "btef,def->btd", 0),
    "two contracted axes, weight [e, f, out]": ("  g: float32[B, T, e, f]", "y[B, T, d] = g * param(e, f, d, name=w)",
                                                "B, T, d", "btef,efd->btd", 0),
    "contracted axes interleaved": ("  g: float32[B, T, e, f]", "y[B, T, d] = g * param(e, d, f, name=w)",
                                    "B, T, d", "btef,edf->btd", 0),
    "matrix-vector": ("  x: float32[B, T, h]", "y[B, T] = x * param(h, name=w)", "B, T", "bth,h->bt", 0),
    "three operands, dense experts": ("  g: float32[B, T, e]\n  a: float32[B, T, e, f]",
                                      "y[B, T, d] = g * a * param(e, f, d, name=w)", "B, T, d",
                                      "bte,btef,efd->btd", 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_contractions_equal_einsum_and_their_gradients(case: str) -> None:
    inputs, body, out, equation, copies = CASES[case]
    model = built(spec(inputs, body, out), 2).train()
    names = [line.split(":")[0].strip() for line in inputs.splitlines()]
    sizes = {"B": 2, "T": 3, "S": 4, "n": 2, "h": H, "e": E, "f": F_, "d": D}
    args = []
    for line in inputs.splitlines():
        axes = line.split("[")[1].rstrip("]").split(", ")
        args.append(torch.randn(*[sizes[a] for a in axes], requires_grad=True))
    params = list(model.parameters())
    got = model(*args)
    want = torch.einsum(equation, *args, *params)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    seed = torch.randn_like(want)
    grads = torch.autograd.grad((got * seed).sum(), [*args, *params])
    wants = torch.autograd.grad((want * seed).sum(), [*args, *params])
    for g, w in zip(grads, wants, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    if copies is not None:
        with torch.no_grad():
            assert weight_copies(model, *args) == copies, names
    source = compile_spec(spec(inputs, body, out), opt=2).source
    assert "einsum" not in source.split("def forward", 1)[1]
