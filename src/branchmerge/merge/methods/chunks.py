"""Elementwise merge math in fixed-size chunks, so temporaries stay small and hot in cache.

A merge of whole tensors allocates several fp32 copies of each input (deltas, masks, signs, sums). For the
largest tensor of a Qwen3 model (the 151936-row embedding) each copy is hundreds of MB, so peak memory is a
dozen of them and most of the time goes to page-faulting fresh allocations. Working on `CHUNK` elements at a
time instead keeps every temporary at 4 MB: measured on the 0.1b benchmark shape, TIES went from 17.4 s and
4.1 GB to the figures in benchmarks/README.md. Inputs stay in their stored dtype (bf16, usually) and each chunk
is widened to fp32 on the fly; the output is written straight in the dtype it will be saved in.

Per-element results are bit-identical to the same formula on whole tensors: every elementwise op sees the same
operands. Whole-tensor reductions (norms, L1 sums) are accumulated chunk by chunk in fp64.

fp32 working copies live in per-thread scratch buffers (`scratch`) that are reused from tensor to tensor: a
fresh allocation per tensor costs a page fault per 4 kB touched. They stay allocated for the thread's next
merge: at most 4 chunks per input for `widen_small` plus a few chunks and blocks, about 70 MB for a TIES of
two experts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

CHUNK = 1 << 20  # elements per chunk (4 MB in fp32); tests shrink it to exercise the multi-chunk paths
# Elements per block of elementwise work inside a chunk (512 kB in fp32, so a block's temporaries stay in L2):
# measured on TIES of 1M- and 3M-element bf16 tensors, a third less CPU than whole 4 MB chunks. Blocks never change a
# result: they only cut elementwise work, never a reduction or a random draw.
BLOCK = 1 << 17
_SCRATCH = threading.local()


def scratch(slot: str, n: int, device: torch.device) -> torch.Tensor:
    """This thread's reusable fp32 buffer named `slot`, as a 1-D view of n elements on `device`.

    Its content is whatever was left there; it stays valid until the same slot is asked for again on this
    thread, so a method takes its slots at the start of one tensor and is done with them when it returns.
    """
    buffers: dict[tuple[str, torch.device], torch.Tensor] = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (slot, torch.device(device))
    buf = buffers.get(key)
    if buf is None or buf.numel() < n:
        buf = buffers[key] = torch.empty(n, dtype=torch.float32, device=device)
    return buf[:n]


def widen_chunk(part: torch.Tensor, slot: str) -> torch.Tensor:
    """`part.float()`, into the scratch slot when a copy is needed (an fp32 part is returned as it is)."""
    if part.dtype == torch.float32:
        return part
    return scratch(slot, part.numel(), part.device).view(part.shape).copy_(part)


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
    and widened chunk by chunk on each pass. An fp32 tensor is returned as it is. The copies are this
    thread's scratch buffers (`scratch`, slots "widen0", "widen1", ...): read-only, valid until the method
    returns."""
    if all(isinstance(t, torch.Tensor) for t in tensors) and tensors and tensors[0].numel() <= 4 * CHUNK:
        return [widen_chunk(t, f"widen{i}") for i, t in enumerate(tensors)]
    return list(tensors)  # large, or `LazyTensor`s read from disk chunk by chunk


def blocks(sl: slice, block: int | None) -> list[slice]:
    """A chunk's slice cut into consecutive slices of `block` elements (the chunk itself when block is None)."""
    if block is None:
        return [sl]
    return [slice(start, min(sl.stop, start + block)) for start in range(sl.start, sl.stop, block)]


def map_chunks(
    thetas: Sequence[torch.Tensor],
    fn: Callable[[slice, list[torch.Tensor]], torch.Tensor],
    out_dtype: torch.dtype = torch.float32,
    sink: Callable[[torch.Tensor], None] | None = None,
    block: int | None = None,
    widen: bool = True,
) -> torch.Tensor | None:
    """out[chunk] = fn(chunk, [theta[chunk] as fp32 for each theta]), chunks in index order, out in `out_dtype`.
    With `widen=False`, fn gets each theta's chunk in its own dtype (to widen it where it saves a copy).

    With `sink`, each output chunk goes to it as soon as it is computed and nothing is returned: with lazy
    inputs (`checkpoint.LazyTensor`) a tensor of any size then takes a few chunks of memory. With `block`
    (an elementwise `fn` only), each chunk is read and widened whole but `fn` sees it `block` elements at a
    time, in index order, so its temporaries stay in the core's cache (a 4 MB chunk does not fit in L2)."""
    flats = flat(thetas)
    n = flats[0].numel()
    device = flats[0].device
    out = None if sink is not None else torch.empty(n, dtype=out_dtype, device=device)
    for sl in chunk_slices(n):
        parts = [widen_chunk(t[sl], f"map{i}") if widen else t[sl] for i, t in enumerate(flats)]
        target = (
            out[sl] if out is not None else torch.empty(sl.stop - sl.start, dtype=out_dtype, device=device)
        )
        for sub in blocks(sl, block):
            at = slice(sub.start - sl.start, sub.stop - sl.start)
            target[at] = fn(sub, [p[at] for p in parts])
        if sink is not None:
            sink(target)
    return None if out is None else out.view(thetas[0].shape)


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
            ca, cb = widen_chunk(fa[sl], "gram0"), widen_chunk(fb[sl], "gram1")
            aa += float(torch.dot(ca, ca))
            bb += float(torch.dot(cb, cb))
            ab += float(torch.dot(ca, cb))
    finally:
        torch.set_num_threads(threads)
    return aa, bb, ab
