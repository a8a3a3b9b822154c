"""The dense Schur complement of the random effects after the first (largest) grouping factor.

With columns ordered ``[Z_1, Z_r, X, y]`` and the first block eliminated, what is left is the
bordered symmetric matrix ``M`` of size ``m_z + m`` (``m_z`` columns of ``Z_r``, ``m = p + 1``)::

    M_zz  = I + Lambda_r' (Z_r'Z_r - Z_r'Z_1 W Z_1'Z_r) Lambda_r
    M_zxy = Lambda_r' (Z_r'[X y] - Z_r'Z_1 T' C)
    M_xy  = [X y]'[X y] - C'C

where ``W = blockdiag_j(lambda_1 S_j^-1 lambda_1')`` and ``T' C = blockdiag_j(lambda_1 L_j^-T) C``
come from the first block (``S_j = L_j L_j'``). Only ``W`` and ``C`` change with theta, and
``Z_r'Z_1 W Z_1'Z_r`` is linear in the entries of ``W`` with a sparsity pattern fixed by the data.
So the products are enumerated once: a sparse matrix ``P`` maps the entries of ``W`` (and a constant
for ``Z_r'Z_r``) straight onto the flattened upper triangle of ``M``, and each evaluation is one
sparse matrix-vector product plus a few small dense updates. No sparse-sparse products, no Lambda
or kron rebuilt per evaluation. When the enumeration would be too large (many random effects of
the first factor touching many of the others), products of sparse matrices are used instead.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

try:  # scipy's CSC/CSR kernels on column ranges of the map (two-thread products); else the products stay serial
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover - private module of scipy
    _sparsetools = None

__all__ = ["MAX_PATTERN_NNZ", "RestSchur"]

# Upper bound on the entries of the precomputed map P (12 bytes each): about 300 MB.
MAX_PATTERN_NNZ = 25_000_000
# Pairs generated per step while enumerating the map. Small enough that each step's temporaries (~2 MB
# each) are recycled by the allocator instead of being fresh pages: InstEval's 3 million pairs took 30-170 ms
# (page faults, first build in a process) with 1,000,000-pair steps, 21-33 ms with 250,000
PAIR_CHUNK = 250_000
# Largest (m_z + m)^2 for which distinct positions are found by marking an int32 array (64 MB).
MARK_MAX = 16_000_000


def _pair_chunks(cnt: np.ndarray, csum: np.ndarray, first: np.ndarray, bound: int):
    """Chunks of whole entries with about ``PAIR_CHUNK`` pairs each, for the map builders.

    Entry ``e`` has ``cnt[e]`` partners ``first[e], first[e] + 1, ...`` (``csum`` is ``cumsum(cnt)``, ``bound``
    its last value). Yields ``(e0, e1, ce, k, right)``: the entry range, its partner counts, its number of pairs
    and the partner of every pair in order. Chunking bounds the temporaries: recycled by the allocator instead
    of fresh pages.
    """
    nnz = len(cnt)
    cuts = np.unique(np.concatenate(([0], np.searchsorted(csum, np.arange(PAIR_CHUNK, bound, PAIR_CHUNK)), [nnz])))
    for e0, e1 in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        ce = cnt[e0:e1]
        before = csum[e0 - 1] if e0 else 0
        k = int(csum[e1 - 1] - before)
        # partner of the i-th pair of entry e: first[e] + i, i.e. the running pair index minus the pairs
        # generated before e in this chunk, plus first[e]
        right = np.arange(k, dtype=np.intp)
        right += np.repeat(first[e0:e1] - (csum[e0:e1] - ce - before), ce)
        yield e0, e1, ce, k, right


def _level_pairs(Z1tZr: sp.csr_matrix, l1: int, q1: int, nb: int, max_nnz: int, extra: int):
    """All products of two entries of ``Z_1'Z_r`` that belong to the same first-factor level.

    Returns, in preallocated arrays with ``extra`` free slots at the end, the flat position
    ``c * nb + d`` (column c <= d of Z_r, as intp: it indexes directly) each product lands on, the entry
    ``j q1^2 + a q1 + b`` of W it multiplies (None for ``q1 = 1``: pairs come level by level, so the
    W entry of pair i is known from the level counts), the product ``Z1tZr[(j,a), c] * Z1tZr[(j,b), d]``,
    the number of pairs and the pairs per level (``q1 = 1``; None otherwise); or None above ``max_nnz``
    pairs.
    """
    indptr, indices, data = Z1tZr.indptr, Z1tZr.indices, Z1tZr.data
    lev_start = indptr[0 : l1 * q1 + 1 : q1]
    K = np.diff(lev_start).astype(np.int64)
    if int((K**2).sum()) > 2 * max_nnz:
        return None
    nnz = len(indices)
    sorted_rows = q1 == 1
    if sorted_rows:
        # one row per level and sorted column indices: the partners of entry e are e itself and the
        # entries after it in its row, which gives exactly the pairs c <= d
        first = np.arange(nnz, dtype=np.intp)
        a_of = wbase = None
    else:
        row_of = np.repeat(np.arange(l1 * q1, dtype=np.intp), np.diff(indptr))
        a_of = row_of % q1
        first = lev_start[row_of // q1].astype(np.intp)
        icol = np.int32 if l1 * q1 * q1 < 2**31 else np.int64
        wbase = (row_of * q1).astype(icol)  # (j q1 + a) q1: b is added per partner
    cnt = np.repeat(lev_start[1:], K) - first
    csum = np.cumsum(cnt)
    bound = int(csum[-1]) if nnz else 0  # exact for q1 = 1, an upper bound otherwise
    if (bound if sorted_rows else bound // 2) > max_nnz:
        return None
    flat = np.empty(bound + extra, dtype=np.intp)
    wcol = None if sorted_rows else np.empty(bound + extra, dtype=wbase.dtype)
    vals = np.empty(bound + extra)
    cnb = indices.astype(np.intp) * nb  # row offset c * nb of each entry's column
    # chunks of about PAIR_CHUNK pairs (whole entries) bound the temporaries
    total = 0
    for e0, e1, ce, k, right in _pair_chunks(cnt, csum, first, bound):
        cr = indices[right]
        if sorted_rows:
            out = slice(total, total + k)
            np.add(np.repeat(cnb[e0:e1], ce), cr, out=flat[out])
            np.multiply(np.repeat(data[e0:e1], ce), data[right], out=vals[out])
        else:
            keep = np.repeat(indices[e0:e1], ce) <= cr
            right, cr = right[keep], cr[keep]
            k = len(right)
            if total + k > max_nnz:
                return None
            out = slice(total, total + k)
            np.add(np.repeat(cnb[e0:e1], ce)[keep], cr, out=flat[out])
            np.add(np.repeat(wbase[e0:e1], ce)[keep], a_of[right], out=wcol[out])
            np.multiply(np.repeat(data[e0:e1], ce)[keep], data[right], out=vals[out])
        total += k
    per_level = K * (K + 1) // 2 if sorted_rows else None
    return flat, wcol, vals, total, per_level


def _scalar_map(Z1tZr: sp.csr_matrix, nb: int, extra_flat: np.ndarray, max_nnz: int):
    """The map's rows for a scalar first factor (``q1 = 1``): pairs enumerated and positions marked in one pass.

    Returns ``(pos, rows, vals, total, per_level)``: the sorted distinct flat positions ``c * nb + d`` (intp), the
    position index of every pair (int32, the map's row indices; ``extra_flat``'s entries last), the pair products
    (``extra_flat``'s slots left for the caller), the number of pairs and the pairs per level; None above
    ``max_nnz`` pairs. The same map as :func:`_level_pairs` + :func:`_distinct_positions` bit for bit, with the
    flat positions kept as int32 and marked in a uint8 array chunk by chunk, then replaced by their position
    index in place: 44 instead of 67 MB of fresh pages, InstEval's build 104-146 -> 36-45 ms with the other
    core busy. Needs ``nb * nb <= MARK_MAX``.
    """
    indptr, indices, data = Z1tZr.indptr, Z1tZr.indices, Z1tZr.data
    K = np.diff(indptr).astype(np.int64)
    nnz = len(indices)
    first = np.arange(nnz, dtype=np.intp)
    # one row per level, sorted columns: the partners of entry e are e and the entries after it in its row
    cnt = np.repeat(indptr[1:], K) - first
    csum = np.cumsum(cnt)
    total = int(csum[-1]) if nnz else 0
    if total > max_nnz:
        return None
    end = total + len(extra_flat)
    flat = np.empty(end, dtype=np.int32)
    vals = np.empty(end)
    mark = np.zeros(nb * nb, dtype=np.uint8)
    cnb = indices.astype(np.intp) * nb
    t = 0
    for e0, e1, ce, k, right in _pair_chunks(cnt, csum, first, total):
        fl = np.repeat(cnb[e0:e1], ce)
        fl += indices[right]
        mark[fl] = 1
        flat[t : t + k] = fl
        np.multiply(np.repeat(data[e0:e1], ce), data[right], out=vals[t : t + k])
        t += k
    mark[extra_flat] = 1
    flat[total:end] = extra_flat
    pos = np.flatnonzero(mark)
    del mark
    index = np.empty(nb * nb, dtype=np.int32)
    index[pos] = np.arange(len(pos), dtype=np.int32)
    # each flat position replaced by its index among the distinct ones, in place, in steps (small temporaries)
    for s0 in range(0, end, PAIR_CHUNK):
        flat[s0 : s0 + PAIR_CHUNK] = index[flat[s0 : s0 + PAIR_CHUNK]]
    return pos, flat, vals, total, K * (K + 1) // 2


def _distinct_positions(flat: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of ``flat`` (in ``[0, size)``) and the index (int32) of each entry among them.

    A marking pass over an int32 array of ``size`` entries is an order of magnitude faster than the
    sort in ``np.unique`` (a few ms against 150 ms for 3 million entries); it is used while that
    array stays below 64 MB. ``flat`` should be intp: an int32 index array is converted on every use.
    """
    if size > MARK_MAX:
        pos, inverse = np.unique(flat, return_inverse=True)
        return pos, inverse.ravel().astype(np.int32 if len(pos) < 2**31 else np.int64)
    mark = np.zeros(size, dtype=np.int32)
    mark[flat] = 1
    pos = np.flatnonzero(mark)
    mark[pos] = np.arange(len(pos), dtype=np.int32)
    return pos, mark[flat]


class RestSchur:
    """Builds the bordered Schur complement ``M`` (upper triangle, C order) for given theta.

    Parameters
    ----------
    Z1tZr : scipy.sparse.csr_matrix, shape (l1 q1, m_z)
        Rows level-major (level j, column a of the first block).
    ZrtZr : scipy.sparse matrix, shape (m_z, m_z)
    ZrtXY : numpy.ndarray, shape (m_z, m)
    l1, q1 : int
        Levels and columns of the first block.
    q_rest : list of int
        Columns of each later block (their random effects are level-major within each block).
    nlevels_rest : list of int
    """

    def __init__(self, Z1tZr, ZrtZr, ZrtXY, l1, q1, q_rest, nlevels_rest, max_nnz: int = MAX_PATTERN_NNZ):
        self.Z1tZr = Z1tZr.tocsr()
        self.Z1tZr.sort_indices()
        self.ZrtZr = sp.csr_matrix(ZrtZr)
        self.ZrtXY = np.ascontiguousarray(ZrtXY)
        self.l1, self.q1 = l1, q1
        self.q_rest = list(q_rest)
        self.nlevels_rest = list(nlevels_rest)
        self.mz, self.m = ZrtXY.shape
        self.nb = self.mz + self.m
        self.diag_lambda = all(q == 1 for q in self.q_rest)
        # which block each Z_r column belongs to (scalar lambda per column when all q_k = 1)
        sizes = [lk * qk for lk, qk in zip(nlevels_rest, q_rest, strict=True)]
        self.col_block = np.repeat(np.arange(len(q_rest)), sizes)
        # the map is built on first use: the matrix-free path never needs it (10 million entries and
        # ~1 s at 1,000,000 rows x 50,000 x 20,000 levels)
        self._max_nnz = max_nnz
        self._P: sp.csc_matrix | None = None
        self._pos: np.ndarray | None = None
        self._built = False
        # block pair (row block * blocks + column block) of each position of the map, built on first use
        self._pos_pair: np.ndarray | None = None
        self.last_unscaled: np.ndarray | None = None
        self._pos_index: tuple[np.ndarray, ...] | None = None
        self._pos_diag: np.ndarray | None = None
        self._halves: int | None = None

    @property
    def P(self) -> sp.csc_matrix | None:
        """The map from the entries of ``W`` (and a constant) to the upper triangle of ``M`` (None when too large)."""
        if not self._built:
            self._P = self._build_map(self._max_nnz)
            self._built = True
        return self._P

    @property
    def pos(self) -> np.ndarray:
        """Flat positions in ``M`` of the rows of :attr:`P`."""
        _ = self.P
        return self._pos

    def pair_count(self) -> int:
        """Products the map enumerates (``sum_j K_j^2 / 2`` over first-factor levels): the dense path's set-up size."""
        indptr = self.Z1tZr.indptr
        K = np.diff(indptr[0 : self.l1 * self.q1 + 1 : self.q1]).astype(np.int64)
        return int((K * (K + 1) // 2).sum())

    def pos_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Row, column (row <= column) and their blocks of every position of the map (cached).

        Returns
        -------
        r, c : numpy.ndarray of intp, shape (npos,)
            Entry ``(r, c)`` of ``M_zz`` at each row of :attr:`P`.
        rb, cb : numpy.ndarray of intp, shape (npos,)
            The later block each of them belongs to.
        """
        if self._pos_index is None:
            r, c = np.divmod(self.pos, self.nb)
            self._pos_index = (r, c, self.col_block[r].astype(np.intp), self.col_block[c].astype(np.intp))
        return self._pos_index

    def _cut(self) -> int:
        """Column of :attr:`P` splitting its entries in two about equal halves (cached)."""
        if self._halves is None:
            P = self.P
            ncol = P.shape[1]
            cut = int(np.searchsorted(P.indptr, P.indptr[-1] // 2))
            self._halves = min(max(cut, 1), ncol - 1)
        return self._halves

    def map_product(self, weights: np.ndarray, pool=None) -> np.ndarray:
        """``P @ weights``; with ``pool`` (an executor with an idle worker) the two column halves on two threads.

        The halves are scipy's own CSC kernel on column ranges of :attr:`P`'s arrays (no copy; the kernel
        releases the GIL); their sums are added, so the result equals ``P @ weights`` to rounding.
        """
        P = self.P
        if pool is None or _sparsetools is None or P.shape[1] < 2 or P.indptr.dtype != P.indices.dtype:
            return P @ weights
        cut, ncol, npos = self._cut(), P.shape[1], P.shape[0]
        w = np.ascontiguousarray(weights, dtype=float)
        first = np.zeros(npos)
        second = np.zeros(npos)
        job = pool.submit(_sparsetools.csc_matvec, npos, cut, P.indptr[: cut + 1], P.indices, P.data, w[:cut], first)
        _sparsetools.csc_matvec(npos, ncol - cut, P.indptr[cut:], P.indices, P.data, w[cut:], second)
        job.result()
        second += first
        return second

    def map_transpose_product(self, z: np.ndarray, pool=None) -> np.ndarray:
        """``P' @ z``; with ``pool`` the two row halves of ``P'`` on two threads (equal to ``P.T @ z`` bit for bit)."""
        P = self.P
        if pool is None or _sparsetools is None or P.shape[1] < 2 or P.indptr.dtype != P.indices.dtype:
            return P.T @ z
        cut, ncol, npos = self._cut(), P.shape[1], P.shape[0]
        z = np.ascontiguousarray(z, dtype=float)
        out = np.zeros(ncol)
        job = pool.submit(_sparsetools.csr_matvec, cut, npos, P.indptr[: cut + 1], P.indices, P.data, z, out[:cut])
        _sparsetools.csr_matvec(ncol - cut, npos, P.indptr[cut:], P.indices, P.data, z, out[cut:])
        job.result()
        return out

    def pos_diagonal(self) -> np.ndarray:
        """Indices (intp, cached) of the positions of the map on the diagonal of ``M_zz`` (row == column)."""
        if self._pos_diag is None:
            r, c = np.divmod(self.pos, self.nb)
            self._pos_diag = np.flatnonzero(r == c)
        return self._pos_diag

    def pos_pair(self) -> np.ndarray:
        """Block pair ``row block * blocks + column block`` of every position of the map (intp, cached)."""
        if self._pos_pair is None:
            r, c = np.divmod(self.pos, self.nb)
            nblk = len(self.q_rest)
            self._pos_pair = (self.col_block[r] * nblk + self.col_block[c]).astype(np.intp)
        return self._pos_pair

    # ------------------------------------------------------------------ setup
    def _build_map(self, max_nnz: int) -> sp.csc_matrix | None:
        zz = sp.triu(self.ZrtZr, format="coo")
        nb = self.nb
        if self.q1 == 1 and nb * nb <= MARK_MAX:
            built = _scalar_map(self.Z1tZr, nb, zz.row.astype(np.intp) * nb + zz.col, max_nnz)
            if built is None:
                return None
            self._pos, rows, vals, total, per_level = built
            # Z_r'Z_r's upper triangle is the last column of P (weight 1 up to the lambda scaling)
            vals[total:] = zz.data
            np.negative(vals[:total], out=vals[:total])
            counts = np.append(per_level, zz.nnz)
            indptr = np.zeros(self.l1 + 2, dtype=np.int32)
            np.cumsum(counts, out=indptr[1:])
            return sp.csc_matrix((vals, rows, indptr), shape=(len(self._pos), self.l1 + 1))
        pairs = _level_pairs(self.Z1tZr, self.l1, self.q1, nb, max_nnz, extra=zz.nnz)
        if pairs is None:
            return None
        flat, cols, vals, total, per_level = pairs
        nw = self.l1 * self.q1 * self.q1
        # Z_r'Z_r's upper triangle is the last column of P (weight 1 up to the lambda scaling)
        end = total + zz.nnz
        flat[total:end] = zz.row.astype(np.intp) * nb + zz.col
        vals[total:end] = zz.data
        flat, vals = flat[:end], vals[:end]
        np.negative(vals[:total], out=vals[:total])
        # one row of P per distinct position of the upper triangle of M_zz (flat index in self.pos)
        self._pos, rows = _distinct_positions(flat, nb * nb)
        del flat
        # CSC built directly: the product loops over the (few) columns and scatters into the rows,
        # the fastest layout measured here. Every (row, column) is distinct, so nothing to sum.
        if per_level is not None:
            # q1 = 1: the pairs are already in column (level) order, counted per level
            counts = np.append(per_level, zz.nnz)
        else:
            cols[total:end] = nw
            cols = cols[:end]
            if np.any(cols[1:] < cols[:-1]):
                order = np.argsort(cols, kind="stable")
                rows, vals = rows[order], vals[order]
                cols = cols[order]
            counts = np.bincount(cols, minlength=nw + 1)
        indptr = np.zeros(nw + 2, dtype=rows.dtype if end < 2**31 else np.int64)
        np.cumsum(counts, out=indptr[1:])
        return sp.csc_matrix((vals, rows, indptr), shape=(len(self._pos), nw + 1))

    # ------------------------------------------------------------------ per theta
    def lambda_rest(self, lambdas: list[np.ndarray]) -> sp.csr_matrix:
        """Sparse ``Lambda_r = blockdiag_k(I_{l_k} kron lambda_k)``."""
        mats = [
            sp.kron(sp.identity(lk, format="csr"), sp.csr_matrix(lam))
            for lk, lam in zip(self.nlevels_rest, lambdas, strict=True)
        ]
        return sp.block_diag(mats, format="csr")

    def _scatter(self, weights: np.ndarray, out: np.ndarray | None, scale: np.ndarray | float | None = None,
                 keep: bool = False, pool=None,
                 unscaled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Fill ``out`` with ``(P @ weights) * scale`` at :attr:`pos`; with ``keep`` also return ``P @ weights``.
        ``unscaled``: ``P @ weights`` already computed (with ``keep``; not modified)."""
        nb = self.nb
        if out is None:
            out = np.zeros((nb, nb))
        else:
            out.fill(0.0)
        vals = self.map_product(weights, pool) if unscaled is None else unscaled
        unscaled = None
        if keep:
            # the entries of H = Z_r'Z_r - Z_r'Z_1 W Z_1'Z_r before the lambda scaling (the analytic
            # gradient contracts them with M_zz^-1; memoe.lmm.gradient)
            unscaled = vals
            vals = vals if scale is None else vals * scale
        elif scale is not None:
            vals *= scale
        out.ravel()[self.pos] = vals
        return out, unscaled

    def bordered(
        self,
        lambdas_rest: list[np.ndarray],
        W: np.ndarray,
        TtC: np.ndarray,
        M_xy: np.ndarray,
        out: np.ndarray | None = None,
        keep: bool = False,
    ) -> np.ndarray:
        """The bordered matrix ``M``; see :meth:`bordered_unscaled` (``keep`` stores its second output in
        ``last_unscaled``)."""
        M, unscaled = self.bordered_unscaled(lambdas_rest, W, TtC, M_xy, out=out, keep=keep)
        if keep:
            self.last_unscaled = unscaled
        return M

    def bordered_unscaled(
        self,
        lambdas_rest: list[np.ndarray],
        W: np.ndarray,
        TtC: np.ndarray,
        M_xy: np.ndarray,
        out: np.ndarray | None = None,
        keep: bool = False,
        pool=None,
        unscaled: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The bordered matrix ``M`` with its upper triangle filled (lower triangle zero).

        Parameters
        ----------
        lambdas_rest : list of numpy.ndarray
            Relative factors of the later blocks.
        W : numpy.ndarray, shape (l1 q1 q1,)
            Entries of ``lambda_1 S_j^-1 lambda_1'`` flattened in (j, a, b) order.
        TtC : numpy.ndarray, shape (l1 q1, m)
            ``lambda_1 L_j^-T C_j`` stacked level-major.
        M_xy : numpy.ndarray, shape (m, m)
        out : numpy.ndarray, shape (m_z + m, m_z + m), optional
            C-ordered buffer to fill (reused across evaluations to avoid page faults).
        keep : bool
            Also return the unscaled entries of ``H`` at :attr:`pos` (scalar later blocks with the map
            only; for :mod:`memoe.lmm.gradient`). Nothing is stored on the object, so evaluations may
            run on several threads with their own ``out``.
        pool : concurrent.futures.Executor, optional
            With an idle worker: the map product on two threads (:meth:`map_product`; scalar later blocks).
        unscaled : numpy.ndarray, optional
            With ``keep`` and scalar later blocks: the ``H`` entries returned by an earlier call with the same
            ``W`` (the map product is skipped; the entries are not modified and are returned as ``H``).

        Returns
        -------
        M : numpy.ndarray, shape (m_z + m, m_z + m), C order
            ``M.T`` is Fortran-ordered with the lower triangle filled, ready for LAPACK ``potrf``.
        H : numpy.ndarray or None
            The unscaled entries (``keep``), else None.
        """
        unscaled = None
        mz, nb = self.mz, self.nb
        ZrtXY_adj = self.ZrtXY - self.Z1tZr.T @ TtC
        if self.P is not None and self.diag_lambda:
            dvec = np.array([lam[0, 0] for lam in lambdas_rest])
            if len(dvec) == 1:
                s2 = dvec[0] * dvec[0]
                if keep:
                    M, unscaled = self._scatter(np.append(W, 1.0), out, s2, keep=True, unscaled=unscaled)
                else:
                    M, _ = self._scatter(np.append(W * s2, s2), out)
                M[:mz, mz:] = dvec[0] * ZrtXY_adj
            else:
                # scale each entry by lambda_row lambda_col before the scatter (a gather over the map's
                # positions) instead of two passes over the whole dense block: 28 -> ~25 ms per
                # evaluation on the InstEval shape
                dd = np.outer(dvec, dvec).ravel()[self.pos_pair()]
                M, unscaled = self._scatter(np.append(W, 1.0), out, dd, keep=keep, pool=pool,
                                            unscaled=unscaled if keep else None)
                dcol = dvec[self.col_block]
                M[:mz, mz:] = dcol[:, None] * ZrtXY_adj
        else:
            lam_r = self.lambda_rest(lambdas_rest)
            if self.P is not None:
                upper = self._scatter(np.append(W, 1.0), None)[0][:mz, :mz]
                D = upper + np.triu(upper, 1).T
            else:
                D = self._rest_products(W)
            A = lam_r.T @ (lam_r.T @ D).T
            M = np.zeros((nb, nb)) if out is None else out
            M[:mz, :mz] = np.triu(A)
            M[mz:, :] = 0.0
            M[:mz, mz:] = lam_r.T @ ZrtXY_adj
        idx = np.arange(mz)
        M[idx, idx] += 1.0
        M[mz:, mz:] = M_xy
        return M, unscaled

    def _rest_products(self, W: np.ndarray) -> np.ndarray:
        """``Z_r'Z_r - Z_r'Z_1 W Z_1'Z_r`` (dense, symmetric) by sparse products, for huge patterns."""
        l1, q1 = self.l1, self.q1
        Wb = sp.bsr_matrix((W.reshape(l1, q1, q1), np.arange(l1), np.arange(l1 + 1)), shape=(l1 * q1, l1 * q1))
        H = self.Z1tZr.T @ (Wb @ self.Z1tZr)
        return (self.ZrtZr - H).toarray()
