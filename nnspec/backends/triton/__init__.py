"""The Triton backend: the torch backend's module with Triton kernels for fusion groups, norms, softmax,
rotary embeddings, attention and embeddings (`codegen.py`); the kernels' shared runtime (`runtime.py`), the
template kernels (`kernels/`) and the lowering table (`lowering.py`). See docs/triton.md."""
