"""Compiled (numba) kernels of the orderings (:mod:`mlfix.pipeline.ordering`), loaded on first use by
:func:`mlfix.pipeline.ordering.bags.load_kernels`: importing numba takes a second.

Bags are rows of ``uint64`` words (packed bits); the similarity of two bags is the number of shared
words, ``popcount(x & y)``, which does not depend on how the bits were packed as long as both rows
were packed the same way. LLVM turns the popcount loop into AVX-512 ``vpopcntq`` where the CPU has it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _popcount64(typingctx, x):
    """LLVM's ``ctpop`` on one uint64 (numba has no popcount of its own)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _trailing_zeros64(typingctx, x):
    """LLVM's ``cttz`` on one uint64 (the index of its lowest set bit; x must be nonzero)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen


@njit(cache=True, nogil=True)
def sum_rows_of_set_bits(words, table, out):
    """``out[i] = sum of table[b] over the set bits b of row i``: a 0/1 matrix product that costs one
    vector add per set bit. words (N, W) uint64, table (64 * W, D) float32, out (N, D) float32."""
    n, w = words.shape
    d = table.shape[1]
    acc = np.empty(d, np.float32)  # a local row: the adds vectorise (no aliasing with out)
    for i in range(n):
        acc[:] = 0.0
        for t in range(w):
            x = words[i, t]
            while x:
                b = t * 64 + np.int64(_trailing_zeros64(x))
                for c in range(d):
                    acc[c] += table[b, c]
                x &= x - np.uint64(1)
        out[i, :] = acc


@njit(cache=True, nogil=True)
def shared_words(rows, x, out):
    """``out[j] = popcount(rows[j] & x)`` for every row: rows (R, W) uint64, x (W,) uint64."""
    r, w = rows.shape
    for j in range(r):
        s = np.uint64(0)
        for t in range(w):
            s += _popcount64(rows[j, t] & x[t])
        out[j] = s


@njit(cache=True, nogil=True)
def greedy_steps(rows, ids, dead, cur, order, state, stop):
    """Advance the exact greedy chain until ``order`` holds ``stop`` items.

    State, kept between calls so that the caller can report progress:
    ``rows`` (R, W) uint64 and ``ids`` (R,) int64 hold the items not yet placed, in ascending id
    order, with ``dead`` (R,) bool marking the ones placed since the last compaction; ``cur`` (W,) is
    the last placed item's words; ``state`` = [filled length of order, R in use, dead count].

    Each step scans the live rows once. The scan runs in ascending id order and keeps the first
    strict maximum, which is the tie rule (lowest index). Placed rows are only marked dead and are
    squeezed out when they are more than 1/8 of the rows in use, so the scan wastes at most ~12% and
    compaction costs O(1) row copies per step amortised.
    """
    pos, used, ndead = state[0], state[1], state[2]
    w = rows.shape[1]
    while pos < stop:
        best = np.int64(-1)
        bj = -1
        for j in range(used):
            if dead[j]:
                continue
            s = np.uint64(0)
            for t in range(w):
                s += _popcount64(rows[j, t] & cur[t])
            si = np.int64(s)
            if si > best:
                best = si
                bj = j
        order[pos] = ids[bj]
        for t in range(w):
            cur[t] = rows[bj, t]
        dead[bj] = True
        ndead += 1
        pos += 1
        if ndead >= 16 and ndead * 8 > used:
            k = 0
            for j in range(used):
                if not dead[j]:
                    if k != j:
                        for t in range(w):
                            rows[k, t] = rows[j, t]
                        ids[k] = ids[j]
                    dead[k] = False
                    k += 1
            used = k
            ndead = 0
    state[0], state[1], state[2] = pos, used, ndead


@njit(cache=True, nogil=True)
def consecutive_shared(words, order, out):
    """``out[i] = popcount(words[order[i]] & words[order[i + 1]])``."""
    w = words.shape[1]
    for i in range(order.shape[0] - 1):
        a, b = order[i], order[i + 1]
        s = np.uint64(0)
        for t in range(w):
            s += _popcount64(words[a, t] & words[b, t])
        out[i] = s


@njit(cache=True, nogil=True, fastmath=True)
def _dot32(a, b):
    """Inner product of two float32 vectors (a float32 sum: the same rounding on every call)."""
    s = np.float32(0.0)
    for t in range(a.shape[0]):
        s += a[t] * b[t]
    return s


@njit(cache=True, nogil=True)
def embedding_chain_steps(x, near, sims, placed, alive, order, state, stop):
    """Advance the greedy embedding chain until ``order`` holds ``stop`` items.

    ``x`` (N, D) float32 unit rows; ``near`` (N, k) int64 and ``sims`` (N, k) float32: each row's
    candidate neighbours (-1 = none) and their similarities; ``placed`` (N,) bool; ``alive`` (N,)
    int64: the rows not placed at the last compaction, ascending; ``state`` = [filled length of
    order, rows of alive in use, exact fallbacks so far].

    Next = the unplaced candidate of the current row with the highest similarity (ties: lowest row).
    When every candidate is placed, the exact fallback compacts ``alive`` and scans it: the most
    similar unplaced row (first maximum in ascending order, so ties go to the lowest row).
    """
    pos, used, fallbacks = state[0], state[1], state[2]
    width = near.shape[1]
    while pos < stop:
        cur = order[pos - 1]
        best = np.int64(-1)
        best_sim = np.float32(-np.inf)
        for j in range(width):
            c = near[cur, j]
            if c < 0 or placed[c]:
                continue
            s = sims[cur, j]
            if s > best_sim or (s == best_sim and c < best):
                best_sim = s
                best = c
        if best < 0:
            k = 0
            for j in range(used):
                a = alive[j]
                if not placed[a]:
                    alive[k] = a
                    k += 1
            used = k
            for j in range(used):
                a = alive[j]
                s = _dot32(x[a], x[cur])
                if best < 0 or s > best_sim:
                    best_sim = s
                    best = a
            fallbacks += 1
        order[pos] = best
        placed[best] = True
        pos += 1
    state[0], state[1], state[2] = pos, used, fallbacks
