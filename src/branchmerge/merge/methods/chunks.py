"""Elementwise merge math in fixed-size chunks, so temporaries stay small and hot in cache.

A merge of whole tensors allocates several fp32 copies of each input (deltas, masks, signs, sums). For the
largest tensor of a Qwen3 model (the 151936-row embedding) each copy is hundreds of MB, so peak memory is a
dozen of them and most of the time goes to page-faulting fresh allocations. Working on `CHUNK` elements at a
time instead keeps every temporary at 4 MB: measured on the 0.1b benchmark shape, TIES went from 17.4 s and
4.1 GB to the figures in benchmarks/README.md. Inputs stay in their stored dtype (bf16, usually) and each chunk
is widened to fp32 on the fly; the output is written straight in the dtype it will be saved in.

Per-element results are bit-identical to the same formula on whole tensors: every elementwise op sees the same
operands. Whole-tensor reductions (norms, L1 sums) are accumulated chunk by chunk in fp64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

CHUNK = 1 << 20  # elements per chunk (4 MB in fp32); tests shrink it to exercise the multi-chunk paths


def chunk_slices(n: int) -> list[slice]:
    """[0, n) cut into consecutive slices of CHUNK elements (the last one shorter)."""
    size = CHUNK
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def flat(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """1-D views of the tensors (a copy only for a non-contiguous one)."""
    return [t.reshape(-1) for t in tensors]


def widen_small(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """fp32 copies of tensors of at most 4 chunks (16 MB in fp32), so methods that pass over their inputs
    more than once (SLERP's norms, TIES's threshold) widen them once; larger tensors are left as they are
    and widened chunk by chunk on each pass. `.float()` of an fp32 tensor is the tensor itself."""
    if all(isinstance(t, torch.Tensor) for t in tensors) and tensors and tensors[0].numel() <= 4 * CHUNK:
        return [t.float() for t in tensors]
    return list(tensors)  # large, or `LazyTensor`s read from disk chunk by chunk


def map_chunks(
    thetas: Sequence[torch.Tensor],
    fn: Callable[[slice, list[torch.Tensor]], torch.Tensor],
    out_dtype: torch.dtype = torch.float32,
    sink: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """out[chunk] = fn(chunk, [theta[chunk] as fp32 for each theta]), chunks in index order, out in `out_dtype`.

    With `sink`, each output chunk goes to it as soon as it is computed and nothing is returned: with lazy
    inputs (`checkpoint.LazyTensor`) a tensor of any size then takes a few chunks of memory."""
    flats = flat(thetas)
    n = flats[0].numel()
    if sink is not None:
        for sl in chunk_slices(n):
            sink(fn(sl, [t[sl].float() for t in flats]).to(out_dtype))
        return None
    out = torch.empty(n, dtype=out_dtype, device=flats[0].device)
    for sl in chunk_slices(n):
        out[sl] = fn(sl, [t[sl].float() for t in flats])
    return out.view(thetas[0].shape)


def gram(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(<a, a>, <b, b>, <a, b>) over whole tensors of any float dtype in one pass: each chunk widened to fp32
    once, its dot products summed in fp64.

    The fp32 dots run on one intra-op thread: a threaded dot sums in an order that depends on the thread count,
    and SLERP's coefficients amplify the difference, so the merged bytes would depend on the machine's cores
    (and on `runtime`'s thread policy). Elementwise math is the same on any number of threads."""
    fa, fb = flat([a, b])
    aa = bb = ab = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for sl in chunk_slices(fa.numel()):
            ca, cb = fa[sl].float(), fb[sl].float()
            aa += float(torch.dot(ca, ca))
            bb += float(torch.dot(cb, cb))
            ab += float(torch.dot(ca, cb))
    finally:
        torch.set_num_threads(threads)
    return aa, bb, ab
