"""SliceGPT calibration: run the reference interpreter on calibration inputs and take the principal directions of
the residual stream where the norms read it. The compiler-side transform (`compiler/transforms/slicegpt.py`)
says where to look (`stream_reads`); `transform_params.slice_params` applies the rotation this returns."""

from __future__ import annotations

from typing import Any

import torch

from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.interpreter import Interpreter
from nnspec.compiler.ir import Model, Node
from nnspec.compiler.transforms.slicegpt import StreamReads, stream_reads


class _Recorder(Interpreter):
    """The interpreter, adding sum(x x^T) of each watched norm's input to `cov` as it runs."""

    def __init__(self, model: Model, reads: StreamReads) -> None:
        super().__init__(model, seed=None)
        self.reads = reads
        self.cov = torch.zeros(reads.width, reads.width, dtype=torch.float64)

    def run_node(self, frame: Frame, node: Node, ins: list[Any]) -> Any:
        if (frame.graph.name, node.name) in self.reads.norms:
            t = frame.graph[node.inputs[0]].tensor_type
            x = ins[0].detach().movedim(t.index(node.attrs["axis"]), -1).reshape(-1, self.reads.width).double()
            if self.reads.layer_norm:
                x = x - x.mean(1, keepdim=True)
            self.cov += x.T @ x
        return super().run_node(frame, node, ins)


def compute_rotation(model: Model, params: dict[str, Any], calibration_inputs: list[dict[str, Any]]) -> Any:
    """Q [D, D] (float64, orthogonal): the eigenvectors of sum(x x^T) over the residual stream's activations
    where each norm reads them, for every position of every calibration input, by decreasing eigenvalue; for
    LayerNorm models each x is centred first (its mean is folded away). Slicing keeps the first columns: the
    directions that carry most of the stream's energy."""
    interp = _Recorder(model, stream_reads(model)).eval()
    with torch.no_grad():
        for name, param in interp.named_spec_parameters().items():
            param.copy_(params[name])
        for inputs in calibration_inputs:
            interp(**inputs)
    values, vectors = torch.linalg.eigh(interp.cov)
    return vectors[:, values.argsort(descending=True)]
