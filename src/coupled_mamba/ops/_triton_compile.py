"""Ahead-of-time compile of one Triton scan kernel launch for an NVIDIA target, without a GPU.

Used by tests/ops/test_triton.py and the GPU benchmark to catch compile errors and register spills
early; the launch's arguments come from the launchers in ``_triton_seq.py`` and
``_triton_chunked.py``.
"""

from __future__ import annotations

import torch

_TYPE = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16",
         torch.float16: "fp16"}


def _compile_for(kernel, args, meta, num_warps: int, capability: int = 90):
    """Compile one launch ahead of time for an NVIDIA target, on any machine (no GPU needed).

    Runs Triton's real compiler (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled ptxas),
    which the interpreter does not; used by tests and the GPU script to catch compile errors early.
    Returns the compiled kernel (``.asm["ptx"]``, ``.metadata``).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature, constexprs = {}, {}
    for name, value in zip(names, args, strict=False):  # the constexprs come after args
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPE[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            signature[name] = "fp32"
    for name, value in meta.items():
        signature[name] = "constexpr"
        constexprs[name] = value
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "enable_fp_fusion": True})
