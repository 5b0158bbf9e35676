"""The anchors' exact k-nearest search, found through a bfloat16 pre-filter (semid.model.first_level.anchors).

The first-level vote needs each input's k nearest anchors by float32 cosine. The same matmul in bfloat16
(AMX / AVX512-BF16) is several times quicker but only accurate to ~1e-2. :class:`Bf16Prefilter` uses the
bf16 sims to pick 32 candidate anchors per row that provably hold the float32 top k, recomputes the
candidates' sims in float32 and ranks them. A row it cannot settle (flat similarity rows, where many
anchors lie within ~1e-2 of the k-th; duplicate anchors with different codes; near-ties the vote reads) is
reported ``unsure`` and the caller searches it the plain way (float32 sims to every anchor), so the codes
never depend on the pre-filter and the worst case is the plain cost plus the pre-filter's. That worst case
is about the float32 matmul's own cost (the pre-filter's many small steps eat the bf16 gain), so
:meth:`Bf16Prefilter.nearest` uses whichever search its own calls measure quicker (the figures:
benchmarks/results/encode_speed_anchors_bf16.md, json_body_speed.md). Random vectors are not that case:
the best sims of a random row lie in the tail, spread wider than the bound, and most rows are settled.
Below ``MIN_ROWS`` rows, or on a CPU without bf16 instructions (emulated bf16 is slower than float32),
every row takes the plain search.

Error bound (per row; why the candidates hold the float32 top k)
----------------------------------------------------------------
Let q be an input row (float32, unit length), a an anchor column (float32, the exact value of the stored
float16 unit vector), s = q.a the exact real dot product, d the dimension and u = 2^-8 the unit roundoff of
bfloat16 (8 significant bits, round to nearest even). The bf16 sim b is computed as

* q_b = bf16(q), a_b = bf16(a): both operands rounded;
* x = the products q_b,i * a_b,i (exact in float32: 8 x 8 significant bits) summed in float32;
* b = bf16(x): the result rounded to bfloat16 (torch on CPU returns bf16; checked: round to nearest).

Splitting the rounding errors as q.a - q_b.a_b = (q - q_b).a + q_b.(a - a_b), Cauchy-Schwarz on each term
and the float32 summation bound (d terms in any order, FMA or not) give

    |x - s| <= |q - q_b| |a| + |q_b| |a - a_b| + g |q_b| |a_b|,     g = d 2^-24 / (1 - d 2^-24),

and |b - x| <= h(b), half the gap from |b| to the next larger bfloat16 (:func:`half_spacing`: x rounded
to b lay in b's binade or just below it). The norms are measured: |q - q_b|, |q_b| and |q| per row; max |a|,
max |a_b| and max |a - a_b| over the anchors, once. The vote compares float32 sims f (the big matmul), not
s: |f - s| <= g |q| |a|. With e = TINY + SAFETY * (those three terms + g |q| |a|) (SAFETY 1.01 covers the
float32 rounding of the measured norms; TINY, products flushed to zero below float32's normal range):

    f <= hi(b) = b + h(b) + e     and     f >= lo(b) = b - h(b) - e.

hi and lo never decrease as b grows (h at most doubles between neighbouring bf16 values, which are a full
gap apart). For sims in [0.5, 1), h is 2^-9 (half a bf16 gap) and e, for unit rows of a few hundred
dimensions, of the same order.

The candidates: the C = ``CANDIDATES`` columns with the largest b (see the selection below). Let b_k be the
k-th largest candidate b and b_out the largest b of a column left out. If ``hi(b_out) < lo(b_k)``, every
column left out has f <= hi(b_out) < lo(b_k) <= the f of each of the k candidates with b >= b_k: k
candidates beat every column left out, so the float32 top k are all candidates, with no tie against a
column left out. A NaN row fails the comparison: it is unsure.

The candidates' float32 sims are then recomputed (a small batched matmul). Its summation order may differ
from the big matmul's: the two float32 values of one sim differ by at most 2 g |q| |a| < ``bound_delta``.
At start-up the pre-filter checks on a probe (``PROBE_ROWS`` rows against every anchor) whether the recompute
gives the big matmul's bits; where it does (every run here: MKL accumulates both the same way), ``delta``
is 0 and only equal sims are ambiguous, else ``delta`` is that bound. Sims of a row at most ``delta``
apart (equal ones, at least: a *run*) may come in any order in the plain search, while runs further apart
keep theirs. The vote reads only the codes of the k nearest: in rank order when ranks weigh the votes
(``rank_scale``) or ``min_share`` sums them in order, else only which k are in and, near EXACT, which is
first. A row is decided only where every run the vote reads holds one code
(``labels``), so the plain search would give the same codes in the same order and the same vote. (The
probe is a check, not a proof: with ``delta`` 0 a sim within 1e-5 of another could in principle come out
the other way round in a matmul of another shape, as it could in the plain search itself between batch
sizes.) The best sim is compared with EXACT by the caller; one within ``delta`` of it is unsure.

Candidate selection without a top-C over every column: the padded anchor columns are dealt into
``GROUP_SLOTS`` slots of G groups (group j holds columns j, j + G, j + 2G, ...), one max per group, the
``KEPT_GROUPS`` groups with the largest maxima, then the top C of their columns. A column left out is in a
kept group below the C-th candidate or in a group whose maximum is at most the (KEPT_GROUPS + 1)-th
largest: b_out is the larger of those two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property

import torch

UNIT = 2.0**-8  # bfloat16 unit roundoff (8 significant bits, round to nearest)
SAFETY = 1.01  # e is multiplied by this: the float32 rounding of the measured norms (~1e-5 relative), a margin
TINY = 2.0**-60  # added to e: products below float32's normal range may be flushed to zero (AMX does)
GROUP_SLOTS = 16  # columns per group: one max per group, then the groups with the largest maxima
KEPT_GROUPS = 32  # groups whose columns are searched for candidates
CANDIDATES = 32  # candidate columns per row whose float32 sims are recomputed (C)
MIN_ROWS = 256  # below this many rows the plain float32 search is as quick (the pre-filter's fixed steps dominate)
REPROBE_EVERY = 50  # large calls between re-measurements of the slower search (load changes)
PROBE_ROWS = 256  # rows of the start-up check that the recompute gives the big matmul's bits
RECOMPUTE_ROWS = 64  # rows per batched recompute: one gathered [rows, C, d] block (~3 MB), reused


def native_bf16() -> bool:
    """True where torch's CPU matmul has bfloat16 instructions (AMX or AVX512-BF16); elsewhere a bf16 matmul
    is emulated and slower than float32, so the pre-filter is off."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def half_spacing(b: torch.Tensor) -> torch.Tensor:
    """Half the gap between |b| and the next larger bfloat16 (b: bf16 values as float32): a bound on how far
    the float32 value rounded to b was from it (round to nearest: it lay in b's binade or just below it)."""
    _, exponent = torch.frexp(b)  # |b| = m 2^E, m in [0.5, 1): the gap above |b| is 2^(E - 8)
    return torch.ldexp(torch.ones_like(b), exponent - 9)


class Bf16Prefilter:
    """The exact top k of ``q @ unit_t`` for most rows of a batch, the rest reported unsure (see the module).

    ``unit_t``: float32 [d, anchors], the anchors as columns; ``exact_top_k(sims, k)``: the plain search's
    top k of a float32 sims matrix (semid.model.first_level.anchors.top_k). ``rows_decided`` counts the rows the
    pre-filter settled, ``rows_unsure`` all others (the tests check it is used, not silently bypassed).

    :meth:`nearest` times both searches on this process's own large calls and uses the quicker (they give
    the same answer, so the choice changes only the speed): on this shared machine the pre-filter was
    quicker for some catalogs and loads and slower for others (benchmarks/results/json_body_speed.md)."""

    enabled = native_bf16()
    policy = "timed"  # "timed": the quicker search as measured; "always": the pre-filter whenever usable

    def __init__(self, unit_t: torch.Tensor, exact_top_k: Callable[[torch.Tensor, int], tuple[torch.Tensor, ...]]):
        d, m = unit_t.shape
        self.unit_t = unit_t
        self.exact_top_k = exact_top_k
        self.cost: dict[str, float | None] = {"plain": None, "prefilter": None}  # seconds per row, averaged
        self.calls = 0
        self.anchors = m
        self.groups = -(-m // GROUP_SLOTS)
        self.rows = unit_t.T.contiguous()  # [m, d] float32: candidates' vectors for the recompute
        padded = torch.zeros(d, self.groups * GROUP_SLOTS, dtype=torch.bfloat16)
        padded[:, :m] = unit_t.to(torch.bfloat16)
        self.unit_t_bf16 = padded  # pad columns give 0 and are set to -inf after the matmul
        rounded = padded[:, :m].to(torch.float32)
        self.max_norm = float(torch.linalg.vector_norm(unit_t, dim=0).max()) if m else 0.0
        self.max_norm_bf16 = float(torch.linalg.vector_norm(rounded, dim=0).max()) if m else 0.0
        self.max_rounding = float(torch.linalg.vector_norm(unit_t - rounded, dim=0).max()) if m else 0.0
        self.summation = d * 2.0**-24 / (1 - d * 2.0**-24)  # g of the module docstring
        self.bound_delta = 2.05 * self.summation  # > 2 g |q| |a| (|q| |a| <= 1.0005): two float32 sums of one sim
        self.rows_decided = 0
        self.rows_unsure = 0
        self._delta: float | None = None  # made by the first search (the probe costs a 256-row matmul)

    @property
    def delta(self) -> float:
        """0 where the probe found the recompute gives the big matmul's bits (only equal sims form runs),
        else ``bound_delta``."""
        if self._delta is None:
            self._delta = 0.0 if self.same_bits else self.bound_delta
        return self._delta

    @delta.setter
    def delta(self, value: float) -> None:
        self._delta = value

    @cached_property
    def same_bits(self) -> bool:
        return self.anchors > 0 and self._recompute_matches_matmul(self.unit_t)

    def _recompute_matches_matmul(self, unit_t: torch.Tensor) -> bool:
        """Whether the candidates' recompute gives the big matmul's float32 sims bit for bit, on a probe of
        ``PROBE_ROWS`` deterministic rows (a blend of anchors) against every anchor, candidates being each
        row's best C."""
        rows = min(PROBE_ROWS, self.anchors)
        blend = unit_t[:, :rows].T + 0.5 * unit_t[:, torch.arange(rows).flip(0)].T
        q = torch.nn.functional.normalize(blend, dim=1)
        sims = q @ unit_t
        c = min(CANDIDATES, self.anchors)
        columns = sims.topk(c, dim=1).indices
        if c < CANDIDATES:
            return False
        return bool(torch.equal(self._recompute(q, columns, torch.arange(rows)), sims.gather(1, columns)))

    def usable(self, n: int, k: int) -> bool:
        return (
            self.enabled
            and n >= MIN_ROWS
            and k < CANDIDATES
            and self.groups > KEPT_GROUPS
            and GROUP_SLOTS * KEPT_GROUPS >= CANDIDATES
        )

    @torch.no_grad()
    def nearest(
        self,
        q: torch.Tensor,
        k: int,
        *,
        labels: torch.Tensor | None = None,
        ordered: bool = True,
        firm_above: float = float("inf"),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sims float32 [n, k], columns long [n, k]): every row's k nearest columns, best first, read as the
        plain search reads them (see :meth:`search` for ``labels``, ``ordered`` and ``firm_above``)."""
        n = q.shape[0]
        if not self.usable(n, k):
            self.rows_unsure += n
            return self.exact_top_k(q @ self.unit_t, k)  # type: ignore[return-value]
        way = self._pick()
        start = time.perf_counter()
        if way == "plain":
            self.rows_unsure += n
            sims, columns = self.exact_top_k(q @ self.unit_t, k)
        else:
            sims, columns, unsure = self.search(q, k, labels=labels, ordered=ordered, firm_above=firm_above)
            if unsure.numel():  # rows the pre-filter cannot settle: float32 sims to every anchor
                sims[unsure], columns[unsure] = self.exact_top_k(q[unsure] @ self.unit_t, k)
        seconds = (time.perf_counter() - start) / n
        before = self.cost[way]
        self.cost[way] = seconds if before is None else 0.5 * (before + seconds)
        return sims, columns

    def _pick(self) -> str:
        """The search for this call: each one once, then the cheaper, the other again every REPROBE_EVERY."""
        self.calls += 1
        if self.policy == "always":
            return "prefilter"
        plain, prefilter = self.cost["plain"], self.cost["prefilter"]
        if plain is None:
            return "plain"
        if prefilter is None:
            return "prefilter"
        quicker, slower = ("plain", "prefilter") if plain <= prefilter else ("prefilter", "plain")
        return slower if self.calls % REPROBE_EVERY == 0 else quicker

    @torch.no_grad()
    def search(
        self,
        q: torch.Tensor,
        k: int,
        *,
        labels: torch.Tensor | None = None,
        ordered: bool = True,
        firm_above: float = float("inf"),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sims float32 [n, k], columns long [n, k], unsure long [r]) for unit rows ``q`` float32 [n, d]:
        the k nearest columns best first for every row not in ``unsure``; unsure rows hold zeros and must be
        searched the plain way. ``labels`` (long [anchors], optional): the caller only reads the labels of the
        k nearest, so two neighbours with one label may come in either order. ``ordered``: the caller reads
        them in rank order (else only which k, and the first where its sim reaches ``firm_above``, the
        threshold the caller acts on: EXACT)."""
        n = q.shape[0]
        sims = torch.zeros(n, k)
        columns = torch.zeros(n, k, dtype=torch.long)
        if not self.usable(n, k):
            self.rows_unsure += n
            return sims, columns, torch.arange(n)
        candidates, ok = self._candidates(q, k)
        rows = ok.nonzero().flatten()
        exact = self._recompute(q, candidates, rows)  # [r, C] float32
        best, at = exact.sort(dim=1, descending=True)  # [r, C]
        ranked = candidates[rows].gather(1, at)  # columns, best first
        firm = self._firm(best, labels[ranked] if labels is not None else None, k, ordered, firm_above)
        best, ranked = best[:, :k], ranked[:, :k]
        decided = rows[firm]
        sims[decided] = best[firm]
        columns[decided] = ranked[firm]
        undecided = torch.ones(n, dtype=torch.bool)
        undecided[decided] = False
        unsure = undecided.nonzero().flatten()
        self.rows_decided += int(decided.numel())
        self.rows_unsure += int(unsure.numel())
        return sims, columns, unsure

    def _firm(
        self, best: torch.Tensor, labels: torch.Tensor | None, k: int, ordered: bool, firm_above: float
    ) -> torch.Tensor:
        """bool [r]: the float32 search would read the same labels of the k nearest (see ``search``).

        ``best``: each row's recomputed candidate sims, descending. Neighbours at most ``delta`` apart may come in
        either order in the float32 search (a *run*: a chain of such pairs), so a run the caller reads must
        hold one label: every run meeting the first k ranks when ``ordered``, else the run across the k-th /
        (k+1)-th boundary (which of its members make the k is open) and, where the best sim is near
        ``firm_above``, the run of the best (which one is first is open). Runs apart by ``delta`` keep their
        order in both searches; the float32 search's k nearest are all candidates (the bound)."""
        close = best[:, :-1] - best[:, 1:] <= self.delta  # [r, C - 1]: pair j = ranks j, j + 1
        if labels is None:
            mixed = close
        else:
            mixed = close & (labels[:, :-1] != labels[:, 1:])
        # pairs chained to the boundary pair k - 1 by close pairs, on either side
        right = close[:, k - 1 :].to(torch.int8).cumprod(dim=1).bool()
        left = close[:, : k - 1].flip(1).to(torch.int8).cumprod(dim=1).flip(1).bool() & right[:, :1]
        boundary = torch.cat([left, right], dim=1)
        if ordered:
            read = boundary.clone()
            read[:, : k - 1] = True
        else:
            read = boundary
            near = best[:, 0] >= firm_above - self.delta
            read = read | (close.to(torch.int8).cumprod(dim=1).bool() & near[:, None])  # the run of the best
        return ~(mixed & read).any(dim=1) & ((best[:, 0] - firm_above).abs() >= self.delta)

    def _candidates(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidate columns long [n, C], bool [n]: the bound proves the top k lies among them)."""
        n = q.shape[0]
        q_bf16 = q.to(torch.bfloat16)
        b = q_bf16 @ self.unit_t_bf16  # bf16 [n, groups * GROUP_SLOTS], kept in bf16 (a float32 copy costs more)
        b[:, self.anchors :] = float("-inf")
        maxima = b.view(n, GROUP_SLOTS, self.groups).amax(dim=1).to(torch.float32)  # NaN stays NaN
        group_max, kept = maxima.topk(KEPT_GROUPS + 1, dim=1)
        slots = self.groups * torch.arange(GROUP_SLOTS)
        pool = (kept[:, :KEPT_GROUPS, None] + slots).reshape(n, -1)
        values, at = b.gather(1, pool).to(torch.float32).topk(CANDIDATES, dim=1)
        candidates = pool.gather(1, at)
        b_k = values[:, k - 1]
        b_out = torch.maximum(values[:, -1], group_max[:, -1])
        e = self.row_bound(q)
        ok = b_out + half_spacing(b_out) + e < b_k - half_spacing(b_k) - e  # NaN: False
        return candidates, ok

    def row_bound(self, q: torch.Tensor) -> torch.Tensor:
        """float32 [n]: e of the module docstring for each row (input rounding and both summations)."""
        rounded = q.to(torch.bfloat16).to(torch.float32)
        rounding = torch.linalg.vector_norm(q - rounded, dim=1)
        norm = torch.linalg.vector_norm(rounded, dim=1)
        q_norm = torch.linalg.vector_norm(q, dim=1)
        return TINY + SAFETY * (
            rounding * self.max_norm
            + norm * self.max_rounding
            + self.summation * (norm * self.max_norm_bf16 + q_norm * self.max_norm)
        )

    def _recompute(self, q: torch.Tensor, candidates: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float32 [r, C]: the candidates' sims of these rows, recomputed in float32 (one gathered block of
        candidate vectors at a time, reused: it stays in cache)."""
        out = torch.empty(rows.numel(), CANDIDATES)
        block = torch.empty(RECOMPUTE_ROWS * CANDIDATES, self.rows.shape[1])
        for s in range(0, rows.numel(), RECOMPUTE_ROWS):
            r = rows[s : s + RECOMPUTE_ROWS]
            vectors = torch.index_select(self.rows, 0, candidates[r].flatten(), out=block[: r.numel() * CANDIDATES])
            torch.bmm(vectors.view(r.numel(), CANDIDATES, -1), q[r, :, None], out=out[s : s + r.numel(), :, None])
        return out
