"""The cycle engine: ``lock_cycles`` and ``lock_program`` traffic on one lock, stepped in
compiled code.

``ops.lock_cycles`` is one yielded operation that the executor runs as the loop it
stands for (acquire, hold, release, gap, n times), one driver step per operation. With
112 threads that costs about 1 us a step in the driver and executor (docs/timed.md,
plan step 3), which at full scale is most of the time budget before any model code
runs. This module runs the same steps, by the same rules, without a Python-level
step each:

- ``run`` (numba) is the timed driver's event loop restricted to threads whose pending
  operation is part of a ``lock_cycles`` on one lock ``L``: the ready queue in
  ``(time, sequence)`` order, the lock's request/grant/release with FIFO waiters and
  queued-rwlock fairness (only the queue head is granted; a reader behind a waiting
  writer waits), the wakeup handoff, the lock-word surcharge, CPU-time categories,
  per-label counts and ns, and the lock's wait and hold samples by holder; and a
  cycle's cmpxchg (``lock_cycles(body=...)``) with its cache-line surcharge, its cas
  counters and the early end of a run whose cmpxchg failed; and a ``lock_program``'s
  operations on words (a check, a store, a cmpxchg, a ``wait_until``), stopping before
  a check that would fail or a wait that would block, with its notes recorded and
  replayed in order after the stretch (docs/timed.md, step 2).
- ``hand_over`` (plain Python) is called by ``TimedDriver._loop`` when the thread it is
  about to step has such an operation pending. It checks that the engine may run,
  copies the state the loop needs into arrays, calls ``run``, and writes the result
  back into the driver's, the machine's and the lock's objects, exactly as the steps
  would have left them.

The engine stops *before* any event it cannot take: the first ready event of a thread
that is not cycling on ``L`` (so the rest of the model runs where it always does), a
thread's last operation of its last cycle or the release of a cycle whose cmpxchg
failed (after it the generator resumes), the run's ``until``/``max_steps`` limits, and a
full sample buffer. It is entered only when
nothing it does can concern a thread outside it: no sampling, tracing or invariant
checked on every step; ``L`` spinning (not a mutex); every waiter in ``L``'s queue
cycling; nobody waiting for the RCU-sched grace period that spinning locks hold up;
every label known to the cost model and none starting a TLB-flush batch; each
cycling thread holding ``L`` exactly as its position in the cycle says; and for a
cmpxchg body, what ``_bodies`` checks (its table small, unwatched, not waited on, not
sharing memory with another body's table, its values integers in [0, 2**64)). When
to ask is ``TimedDriver``'s policy (``engine_min_stretch``, ``engine_min_ops``): a
matter of speed, never of results.

The contract (``tests/test_lock_cycles.py``): a run with the engine gives the same
``TimedResult`` as without it, apart from wall time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from . import ops as O
from .sync import READ

# an operation of a cycle, as the engine classes it
NOP = 0
ACQ = 1
REL = 2
GRANT = 3
BODY = 4  # the cycle's cmpxchg (``lock_cycles(body=...)``)
# a ``lock_program``'s operations on words (``P_*``: a plain load is a ``NOP`` here: it
# has no effect the driver accounts)
P_CHECK = 5  # a load that checks the value found
P_STORE = 6
P_CAS = 7
P_WAIT = 8  # wait_until: a step if its condition holds, else the driver parks it

# indices of the scalar state array ``st``
S_OWNER, S_NREADERS, S_LW_TID, S_LW_TIME, S_LK_ACQ, S_LK_CONT, S_LS_ACQ, S_LS_CONT, \
    S_SPIN, S_SLEEP, S_CONTENDED, S_STEPS, S_NOW, S_SEQ, S_QHEAD, S_QLEN, S_HN, S_NW, \
    S_NH, S_LAST, S_NN = range(21)
NSTATE = 21

# why ``run`` returned
STOP_HORIZON = 0  # the next event is another thread's (or nothing is ready)
STOP_FINAL = 1  # the next event is a thread's last cycle operation
STOP_LIMIT = 2  # until_ns or max_steps
STOP_FULL = 3  # the sample buffers are full
STOP_CHECK = 4  # the next event is a check that fails or a wait whose condition is false
STOP_WAIT = 5  # a thread's next operation is a wait whose condition is false (parked)

#: fewer wait and hold samples than this go to the driver's lists (folding costs
#: some twenty numpy calls whatever the size)
SMALL_BATCH = 4096

#: events one hand-over may record before returning (the wait and hold samples are
#: buffered in arrays of this size, allocated once per driver)
BUFFER = 1 << 18


@njit(cache=True, nogil=True, inline="always")
def _less(t0: int, s0: int, t1: int, s1: int) -> bool:
    return t0 < t1 or (t0 == t1 and s0 < s1)


@njit(cache=True, nogil=True)
def _push(ht: Any, hs: Any, hid: Any, st: Any, t: int, tid: int) -> None:
    s = st[S_SEQ]
    st[S_SEQ] = s + 1
    i = st[S_HN]
    st[S_HN] = i + 1
    while i > 0:
        p = (i - 1) >> 1
        if _less(t, s, ht[p], hs[p]):
            ht[i] = ht[p]
            hs[i] = hs[p]
            hid[i] = hid[p]
            i = p
        else:
            break
    ht[i] = t
    hs[i] = s
    hid[i] = tid


@njit(cache=True, nogil=True)
def _pop(ht: Any, hs: Any, hid: Any, st: Any) -> None:
    n = st[S_HN] - 1
    st[S_HN] = n
    if n == 0:
        return
    t, s, tid = ht[n], hs[n], hid[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _less(ht[c + 1], hs[c + 1], ht[c], hs[c]):
            c += 1
        if _less(ht[c], hs[c], t, s):
            ht[i] = ht[c]
            hs[i] = hs[c]
            hid[i] = hid[c]
            i = c
        else:
            break
    ht[i] = t
    hs[i] = s
    hid[i] = tid


@njit(cache=True, nogil=True)
def run(st: Any, ht: Any, hs: Any, hid: Any, qtid: Any, qmode: Any,
        pos: Any, left: Any, nops: Any, opk: Any, opc: Any, opcid: Any, oplab: Any,
        gc: Any, gcid: Any, glab: Any, mode: Any, who: Any, clk: Any, parked: Any,
        pcid: Any, phand: Any, pspin: Any, grantp: Any, held_t: Any, req_t: Any,
        takes: Any, tsteps: Any, rdcnt: Any, cat: Any, lcnt: Any, ltot: Any,
        wait_d: Any, wait_w: Any, hold_d: Any, hold_w: Any,
        bdata: Any, wbase: Any, blo: Any, bold: Any, bnew: Any, boff: Any, ci: Any,
        fail: Any, lbase: Any, ltime: Any, ltid: Any, catt: Any, cfail: Any,
        pdata: Any, pwb: Any, plo: Any, pstr: Any, plb: Any, pvo: Any, pvc: Any,
        peo: Any, pec: Any, pmk: Any, pnote: Any, pvals: Any, pi0: Any, pltime: Any,
        pltid: Any,
        nt_tid: Any, nt_pos: Any, nt_i: Any, nt_now: Any, wparked: Any,
        hz_t: int, hz_s: int, limit: int, budget: int, window: int,
        surcharge: int, lshift: int) -> int:
    """Step the cycling threads in time order until a stop (module docstring). All
    state is in the arrays, updated in place; returns the ``STOP_*`` reason."""
    qcap = len(qtid)
    while True:
        if st[S_HN] == 0:
            return STOP_HORIZON
        now = ht[0]
        tid = hid[0]
        if not _less(now, hs[0], hz_t, hz_s):
            return STOP_HORIZON
        if now >= limit or st[S_STEPS] == budget:
            return STOP_LIMIT
        j = pos[tid]
        g = grantp[tid]
        if not g and ((left[tid] == 1 and j == nops[tid] - 1)
                      or (fail[tid] and opk[tid, j] == REL)):
            return STOP_FINAL
        if st[S_NW] == len(wait_d) or st[S_NH] == len(hold_d) \
                or st[S_NN] == len(nt_tid):
            return STOP_FULL
        if not g and opk[tid, j] >= P_CHECK and not _holds(
                tid, j, ci[tid], opk, pdata, pwb, plo, pstr, pvc, peo, pec, pmk,
                pvals, pi0):
            return STOP_CHECK  # the driver steps it (the run ends or the thread parks)
        _pop(ht, hs, hid, st)
        if g:
            kind = GRANT
            c = gc[tid]
            cid = gcid[tid]
            lab = glab[tid]
        else:
            kind = opk[tid, j]
            c = opc[tid, j]
            cid = opcid[tid, j]
            lab = oplab[tid, j]
        if kind == BODY:
            # cmpxchg of word lo + i: an atomic on its cache line
            i = ci[tid]
            w = blo[tid] + i
            li = lbase[tid] + (w >> lshift)
            lt = ltid[li]
            if lt >= 0 and lt != tid and now - ltime[li] < window:
                c += surcharge
                st[S_CONTENDED] += 1
            ltime[li] = now
            ltid[li] = tid
            catt[lab] += 1
            k = wbase[tid] + w
            if bdata[k] == bold[boff[tid] + i]:
                bdata[k] = bnew[boff[tid] + i]
            else:
                cfail[lab] += 1
                fail[tid] = 1
        elif kind >= P_STORE and kind <= P_CAS:
            # a store (stamps its line) or a cmpxchg (that holds: checked above)
            i = ci[tid]
            w = plo[tid, j] + pstr[tid, j] * i
            li = plb[tid, j] + (w >> lshift)
            if kind == P_CAS:
                lt = pltid[li]
                if lt >= 0 and lt != tid and now - pltime[li] < window:
                    c += surcharge
                    st[S_CONTENDED] += 1
                catt[lab] += 1
            pltime[li] = now
            pltid[li] = tid
            vo = pvo[tid, j]
            pdata[pwb[tid, j] + w] = pvals[vo + i - pi0[tid]] if vo >= 0 else pvc[tid, j]
        elif kind != NOP and kind != P_CHECK and kind != P_WAIT:
            # an atomic on the lock word (a grant's line transfer is the handoff)
            if kind != GRANT:
                lw = st[S_LW_TID]
                if lw != tid and lw >= 0 and now - st[S_LW_TIME] < window:
                    c += surcharge
                    st[S_CONTENDED] += 1
            st[S_LW_TID] = tid
            st[S_LW_TIME] = now
        end = now + c
        cat[tid, cid] += c
        lcnt[lab] += 1
        ltot[lab] += c
        st[S_STEPS] += 1
        tsteps[tid] += 1
        st[S_NOW] = now
        st[S_LAST] = tid
        clk[tid] = end
        wake = False
        if kind == ACQ:
            md = mode[tid]
            if st[S_QLEN] == 0 and st[S_OWNER] < 0 and (md == 1 or st[S_NREADERS] == 0):
                st[S_LK_ACQ] += 1
                if md == 1:
                    rdcnt[tid] += 1
                    st[S_NREADERS] += 1
                else:
                    st[S_OWNER] = tid
                st[S_LS_ACQ] += 1
                n = st[S_NW]
                wait_d[n] = 0
                wait_w[n] = who[tid]
                st[S_NW] = n + 1
                held_t[tid] = now
                takes[tid] += 1
            else:  # refused: queued behind the waiters, parked until granted
                qi = (st[S_QHEAD] + st[S_QLEN]) % qcap
                qtid[qi] = tid
                qmode[qi] = md
                st[S_QLEN] += 1
                st[S_LK_CONT] += 1
                req_t[tid] = now
                st[S_LS_CONT] += 1
                parked[tid] = 1
                grantp[tid] = 1
                continue
        elif kind == GRANT:
            st[S_QHEAD] = (st[S_QHEAD] + 1) % qcap  # the head is tid (it was woken)
            st[S_QLEN] -= 1
            md = mode[tid]
            st[S_LK_ACQ] += 1
            if md == 1:
                rdcnt[tid] += 1
                st[S_NREADERS] += 1
            else:
                st[S_OWNER] = tid
            grantp[tid] = 0
            st[S_LS_ACQ] += 1
            n = st[S_NW]
            r = req_t[tid]
            wait_d[n] = now - r if r >= 0 else 0  # ``ls.req.pop(tid, now)``
            wait_w[n] = who[tid]
            st[S_NW] = n + 1
            req_t[tid] = -1
            held_t[tid] = now
            takes[tid] += 1
            wake = True
        elif kind == REL:
            if mode[tid] == 1:
                rdcnt[tid] -= 1
                st[S_NREADERS] -= 1
            else:
                st[S_OWNER] = -1
            if held_t[tid] >= 0:
                n = st[S_NH]
                hold_d[n] = now - held_t[tid]
                hold_w[n] = who[tid]
                st[S_NH] = n + 1
                held_t[tid] = -1
            wake = True
        if pnote[tid, j]:  # model code to run after it (replayed in order)
            n = st[S_NN]
            nt_tid[n] = tid
            nt_pos[n] = j
            nt_i[n] = ci[tid]
            nt_now[n] = now
            st[S_NN] = n + 1
        # the thread's next operation of its cycle (after a failed cmpxchg: its release)
        j += 1
        if kind == BODY and fail[tid]:
            while opk[tid, j] == NOP:
                j += 1
        if j == nops[tid]:
            j = 0
            left[tid] -= 1
            ci[tid] += 1
        pos[tid] = j
        if wake and st[S_QLEN] > 0:
            # a release, or a grant (the next reader may follow), can make the queue
            # head grantable: wake it after the handoff
            qh = st[S_QHEAD]
            h = qtid[qh]
            if parked[h] and st[S_OWNER] < 0 and (qmode[qh] == 1 or st[S_NREADERS] == 0):
                c0 = clk[h]
                ready = (c0 if c0 > end else end) + phand[h]
                dt = ready - c0
                if dt:
                    cat[h, pcid[h]] += dt
                    if pspin[h]:
                        st[S_SPIN] += dt
                    else:
                        st[S_SLEEP] += dt
                clk[h] = ready
                parked[h] = 0
                _push(ht, hs, hid, st, ready, h)
        if opk[tid, j] == P_WAIT and not _holds(tid, j, ci[tid], opk, pdata, pwb, plo,
                                               pstr, pvc, peo, pec, pmk, pvals, pi0):
            wparked[tid] = 1  # the driver parks it on the word (``_park_thread``)
            return STOP_WAIT
        _push(ht, hs, hid, st, end, tid)


@njit(cache=True, nogil=True, inline="always")
def _holds(tid: int, j: int, i: int, opk: Any, pdata: Any, pwb: Any, plo: Any,
           pstr: Any, pvc: Any, peo: Any, pec: Any, pmk: Any, pvals: Any,
           pi0: Any) -> bool:
    """Does position ``j``'s check (a load's, a cmpxchg's, a wait's condition) hold in
    cycle ``i``? Operations without one hold."""
    k = opk[tid, j]
    if k != P_CHECK and k != P_CAS and k != P_WAIT:
        return True
    w = plo[tid, j] + pstr[tid, j] * i
    v = pdata[pwb[tid, j] + w]
    eo = peo[tid, j]
    e = pvals[eo + i - pi0[tid]] if eo >= 0 else pec[tid, j]
    if k == P_CAS:
        return v == e
    return (v & pmk[tid, j]) == e


_ACQ_KINDS = (O.READ_LOCK, O.WRITE_LOCK, O.LOCK)
_REL_KINDS = (O.READ_UNLOCK, O.WRITE_UNLOCK, O.UNLOCK)


def _classify(k: int) -> int:
    if k == O.NOP:
        return NOP
    if k in _ACQ_KINDS:
        return ACQ
    if k in _REL_KINDS:
        return REL
    if k == O.CAS:
        return BODY
    return -1


_UNSEEN = object()

#: per-``lock_cycles`` facts kept between hand-overs (``_static``), at most this many
_CACHE_MAX = 4096


def _static(d: Any, lock: Any, seq: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a cycle's operations are, once per ``lock_cycles`` (cached by the caller):
    per position its class, cost, category (-1: the thread's role's) and label slot;
    the grant's cost, category and slot; the mode, the holder code, the release's
    position, the body's template and its cas counter key. Raises ``_Refused`` for
    what the engine does not run."""
    if len(seq) > 5:
        raise _Refused
    acq = seq[0]
    shared = lock.shared_ok
    if acq.kind == O.READ_LOCK and not shared:
        raise _Refused  # read_lock on a spinlock: the executor's lock-misuse
    md = READ if acq.kind == O.READ_LOCK else 0
    code = 1 if md == READ else (2 if shared else 0)
    body = seq[1] if seq[1].kind == O.CAS else None
    ks, nss, cids, labs = [0] * 5, [0] * 5, [0] * 5, [0] * 5
    rel_i = -1
    for i, op in enumerate(seq):
        c = _classify(op.kind)
        if c < 0 or (c == BODY) != (i == 1 and body is not None) or (
                c != NOP and c != BODY and op.obj is not lock):
            raise _Refused
        if c == REL:
            rel_i = i
        info = _info_of(d, op.cost, op.kind)
        ks[i], nss[i], cids[i], labs[i] = c, info.ns, info.cid, _slot(d, info)
    if _classify(acq.kind) != ACQ or rel_i < 1:
        raise _Refused
    g = _info_of(d, acq.cost, O.GRANT)
    ck = None
    if body is not None:
        ck = body.cost if body.cost is not None else "<cas>"
    return (seq, ks, nss, cids, labs, g.ns, g.cid, _slot(d, g), md, code, rel_i, body,
            ck)


_PCLASS = {O.LOAD: P_CHECK, O.STORE: P_STORE, O.CAS: P_CAS, O.WAIT: P_WAIT}


def _static_program(d: Any, lock: Any, prog: Any) -> tuple[Any, ...]:
    """``_static`` for a ``lock_program`` (``prog``): the same facts, and per position
    the words it touches: None, or (class, Words, lo, stride, ``Each`` or None, mask,
    expected value if one for every cycle, value if one for every cycle). Raises
    ``_Refused`` for what the engine does not run (a program without a lock, an
    operation other than the lock's, a nop, a load, a store, a cmpxchg or a wait)."""
    seq = prog.seq
    rel_i = prog.rel
    if rel_i < 1 or seq[0].obj is not lock or seq[rel_i].obj is not lock:
        raise _Refused
    acq = seq[0]
    shared = lock.shared_ok
    if acq.kind == O.READ_LOCK and not shared:
        raise _Refused
    md = READ if acq.kind == O.READ_LOCK else 0
    code = 1 if md == READ else (2 if shared else 0)
    n = len(seq)
    ks, nss, cids, labs = [0] * n, [0] * n, [0] * n, [0] * n
    refs: list[Any] = [None] * n
    for i, op in enumerate(seq):
        k = op.kind
        e = prog.each[i]
        if i == 0 or i == rel_i:
            c = _classify(k)
            if c != (ACQ if i == 0 else REL):
                raise _Refused
        elif k == O.NOP:
            c = NOP
        elif k in _PCLASS:
            w = op.obj
            if w.oid is None or w.data.dtype != np.uint64:
                raise _Refused
            c = _PCLASS[k]
            if k == O.LOAD and (e is None or e.expect is None):
                c = NOP  # a plain load: no effect the driver accounts
            elif k == O.WAIT:
                refs[i] = (c, w, op.lo, 0, None, _u64(op.a), _u64(op.b), 0)
            elif e is None:
                if k != O.STORE:
                    raise _Refused  # a fixed load or cmpxchg is not a program's
                refs[i] = (c, w, op.lo, 0, None, 0, 0, _u64(op.a))
            else:
                ex = e.expect if type(e.expect) is int else None
                refs[i] = (c, w, op.lo, e.stride, e, _u64(e.mask),
                           0 if ex is None else _u64(ex), 0)
        else:
            raise _Refused
        if (c == ACQ or c == REL) and op.obj is not lock:
            raise _Refused
        info = _info_of(d, op.cost, k)
        ks[i], nss[i], cids[i], labs[i] = c, info.ns, info.cid, _slot(d, info)
    g = _info_of(d, acq.cost, O.GRANT)
    return (prog, ks, nss, cids, labs, g.ns, g.cid, _slot(d, g), md, code, rel_i, refs)


def _u64(v: Any) -> int:
    if type(v) is not int or not 0 <= v < 1 << 64:
        raise _Refused
    return v


def _signature(seq: tuple[Any, ...]) -> tuple[Any, ...]:
    """What ``_static`` read of a cycle's operations (model code may change an
    operation it yields again; the cached facts must then be computed again)."""
    return tuple((op.kind, op.cost, id(op.obj), op.lo) for op in seq)


def _info_of(d: Any, lab: str | None, k: int) -> Any:
    """The driver's cost entry for an operation (its label's, else its kind's)."""
    if lab is None:
        return d._kinds[k]
    info = d._labels.get(lab)
    if info is None:
        raise _Refused  # registering an unknown label is the driver's to do
    return info


def _slot(d: Any, info: Any) -> int:
    """A cost entry's index in the engine's label counters (kept per driver)."""
    s = d._engine_slots.get(id(info))
    if s is None:
        if info.batch:
            raise _Refused  # a TLB-flush batch's charge is the driver's
        s = d._engine_slots[id(info)] = len(d._engine_infos)
        d._engine_infos.append(info)
    return s


class _Refused(Exception):
    """The engine may not take over here (the driver steps as usual)."""


#: what copying one thread's state into the engine and back costs, in driver steps
#: (measured: 10-25 us a thread at 113 threads, against about 1 us a driver step)
STEPS_PER_THREAD = 32

#: the same for a ``lock_program`` thread, whose words, values and notes are copied too
#: (measured: about 30 ms a hand-over of 113 fault-stream threads, some 250 us each)
STEPS_PER_PROGRAM_THREAD = 256

#: a thread with fewer operations than this left in its run is stepped by the driver
#: (a hand-over costs at least as much as that many driver steps)
MIN_OPS = 16


def hand_over(d: Any, tid: int, now: int, limit: int, budget: int) -> int:
    """Run the engine from thread ``tid``'s pending operation (popped from the ready
    queue at ``now``) and return the steps it took. If it did not take over, nothing
    was changed and it returns 0 (refused: the driver backs off) or -1 (this thread's
    run is about to end, or its cmpxchg failed: the driver steps it and asks again at
    the next cycling thread, without backing off)."""
    t = d.m.threads[tid]
    seq = t.cyc
    if t.cyc_prog is not None and t.cyc_prog.rel < 1:
        return -1  # a ``lock_program`` without a lock: the driver's (no back-off)
    if t.cyc_fail or t.cyc_left * len(seq) - t.cyc_j < d.engine_min_ops:
        return -1
    try:
        return _hand_over(d, tid, now, limit, budget)
    except _Refused:
        return 0


def _hand_over(d: Any, tid: int, now: int, limit: int, budget: int) -> int:
    m = d.m
    threads = m.threads
    t0 = threads[tid]
    seq0 = t0.cyc
    lock = seq0[0].obj
    if lock.sleeping or m.tracing or m.violation is not None:
        raise _Refused
    if any(w is None for w in m.watches):
        raise _Refused
    rs = m.rcu_sched
    rs_oid = rs.oid if rs is not None and rs.oid is not None else -1
    if rs_oid >= 0 and d._waiters.get(rs_oid):
        raise _Refused
    # the cycling threads: the popped one, those ready in the queue, those parked in
    # the lock's queue; every ready thread not cycling on the lock bounds the run
    rq = d._rq
    cyc: list[int] = [tid]
    foreign: list[tuple[int, int, int]] = []  # (time, queue position, tid)
    cseq: dict[int, int] = {tid: -1}
    rqo = rq.ordered()
    for i, (tm, x) in enumerate(rqo):
        tx = threads[x]
        if tx.cyc is not None and tx.cyc[0].obj is lock:
            cyc.append(x)
            cseq[x] = i
        else:
            foreign.append((tm, i, x))
    park = d._park
    for x, _mode in lock.queue:
        if x in cseq:
            continue
        tx = threads[x]
        if x not in park or tx.cyc is None or tx.cyc[0].obj is not lock:
            raise _Refused  # a waiter that is not cycling (or not parked and not ready)
        cyc.append(x)
    ls = d._locks.get(lock.oid)
    if ls is None:
        ls = d._lock_stats(lock)
    rolecat = d._rolecat
    T = len(threads)
    readers = lock.readers
    owner = lock.owner
    cache = d._engine_cache
    if len(cache) > _CACHE_MAX:
        cache.clear()
    cas_keys: dict[int, str] = {}  # label slot of a body's cmpxchg -> its counter key
    # (tid, template, first i, n, its pending cmpxchg if built)
    bodies: list[tuple[int, Any, int, int, Any]] = []
    # per thread: holding the lock, its pending op, mode, release position, body
    before: dict[int, tuple[bool, Any, int, int, Any]] = {}
    # the ``lock_program`` threads: (tid, program, refs, cycle, cycles left, pending op
    # unless a grant, position)
    programs: list[tuple[int, Any, Any, int, int, Any, int]] = []
    # per cycling thread, in the order of ``cyc``: rows for the arrays below
    r_k: list[list[int]] = []
    r_ns: list[list[int]] = []
    r_cid: list[list[int]] = []
    r_lab: list[list[int]] = []
    r_scal: list[tuple[int, ...]] = []
    for x in cyc:
        tx = threads[x]
        seq = tx.cyc
        prog = tx.cyc_prog
        refs = None
        if prog is not None:  # a ``lock_program``
            ent = cache.get(id(prog))
            if ent is None or ent[0] is not prog:
                ent = _static_program(d, lock, prog)  # raises _Refused
                cache[id(prog)] = ent
            _, ks, nss, cids, labs, gns, gcid_, glab_, md, code, rel_i, refs = ent
            body = ck = None
        else:
            ent = cache.get(id(seq))
            sig = _signature(seq)
            if ent is None or ent[0] is not seq or ent[-1] != sig:
                ent = _static(d, lock, seq) + (sig,)  # raises _Refused
                cache[id(seq)] = ent
            _, ks, nss, cids, labs, gns, gcid_, glab_, md, code, rel_i, body, ck, _ = ent
        wx = x * 4 + code
        j = tx.cyc_j
        pend = tx.pending
        g = pend.kind == O.GRANT
        if g and (j != 0 or pend.obj is not lock):
            raise _Refused
        if refs is not None:
            ev = prog.each[j]
            if g:
                pass
            elif ev is not None:  # this cycle's operation, built from the template
                if (pend.kind != ev.op.kind or pend.obj is not ev.op.obj
                        or pend.lo != ev.op.lo + ev.stride * tx.cyc_i):
                    raise _Refused
            elif pend is not seq[j]:
                raise _Refused
            programs.append((x, prog, refs, tx.cyc_i, tx.cyc_left, None if g else pend, j))
        elif body is not None and not g and j == 1:
            i0 = tx.cyc_i  # this cycle's cmpxchg, built from the template
            if pend.kind != O.CAS or pend.obj is not body.obj or pend.lo != body.lo + i0:
                raise _Refused
        elif not g and pend is not seq[j]:
            raise _Refused
        # the position says whether the thread holds the lock: it must, exactly once
        holding = 0 < j <= rel_i
        rn = readers.get(x, 0)
        if md == READ:
            ok = rn == (1 if holding else 0) and (owner is None or owner != x)
        else:
            ok = rn == 0 and ((owner is not None and owner == x) == holding)
        times = ls.held.get(wx)
        if not ok or len(times or ()) != (1 if holding else 0):
            raise _Refused
        if x in park:
            if x == tid or x in cseq:
                raise _Refused
            cid_, hand_, spinning_, _leaf, _ls = park[x]
            prec = (1, cid_, hand_, 1 if spinning_ else 0)
        else:
            if x != tid and x not in cseq:
                raise _Refused
            rec = ls.park_rec[md == READ] or d._lock_park_rec(lock, ls, md == READ)
            prec = (0, rec[0], rec[1], 1 if rec[2] else 0)
        rc = rolecat[x]
        r_k.append(ks)
        r_ns.append(nss)
        r_cid.append([c if c >= 0 else rc for c in cids])
        r_lab.append(labs)
        req = -1
        if g:
            r = ls.req.get(x)
            req = -1 if r is None else r
        r_scal.append((j, tx.cyc_left, len(seq), md, wx, 1 if g else 0,
                       1 if tx.cyc_fail else 0, tx.cyc_i, times[0] if holding else -1,
                       req, rn, gns, gcid_ if gcid_ >= 0 else rc, glab_) + prec)
        if body is not None:
            assert ck is not None  # a body's cas counter key
            cas_keys[labs[1]] = ck
            # a cmpxchg already built (pending) keeps the values it was built with
            built = pend if (not g and j == 1) else None
            bodies.append((x, body, tx.cyc_i, tx.cyc_i + tx.cyc_left, built))
        before[x] = (holding, pend, md, rel_i, body)
    if programs and bodies:
        raise _Refused  # two copies of the words (``_Bodies``, ``_Program``): not mixed
    idx = np.array(cyc, np.int64)
    W = max(len(r) for r in r_k)
    opk = np.zeros((T, W), np.int64)
    opc = np.zeros((T, W), np.int64)
    opcid = np.zeros((T, W), np.int64)
    oplab = np.zeros((T, W), np.int64)
    for x, rk, rn_, rc_, rl in zip(cyc, r_k, r_ns, r_cid, r_lab):
        nk = len(rk)
        opk[x, :nk] = rk
        opc[x, :nk] = rn_
        opcid[x, :nk] = rc_
        oplab[x, :nk] = rl
    sc = np.array(r_scal, np.int64)
    cols = []
    for c in range(sc.shape[1]):
        col = np.zeros(T, np.int64)
        col[idx] = sc[:, c]
        cols.append(col)
    (pos, left, nops, mode, who, grantp, fail, ci, held_t, req_t, rdcnt, gc, gcid, glab,
     parked, pcid, phand, pspin) = cols
    notc = np.ones(T, bool)
    notc[idx] = False
    held_t[notc] = -1
    req_t[notc] = -1
    takes = np.zeros(T, np.int64)
    tsteps = np.zeros(T, np.int64)
    clk = np.array(d._clk, np.int64)
    infos = d._engine_infos
    # the lock's queue, in order
    qcap = T + 1
    qtid = np.zeros(qcap, np.int64)
    qmode = np.zeros(qcap, np.int64)
    for i, (x, md) in enumerate(lock.queue):
        qtid[i] = x
        qmode[i] = md
    # the heap: the popped thread first (it was at the head), then the ready ones in
    # their queue order; the engine's pushes come after every one of those
    n_rq = len(rqo)
    ht = np.zeros(qcap, np.int64)
    hs = np.zeros(qcap, np.int64)
    hid = np.zeros(qcap, np.int64)
    st = np.zeros(NSTATE, np.int64)
    st[S_OWNER] = -1 if lock.owner is None else lock.owner
    st[S_NREADERS] = sum(readers.values())
    st[S_LW_TID] = ls.lw_tid
    st[S_LW_TIME] = ls.lw_time
    st[S_QLEN] = len(lock.queue)
    st[S_SEQ] = -1
    clk[tid] = now
    _push(ht, hs, hid, st, now, tid)
    for i in range(n_rq):
        x = rqo[i][1]
        if x in cseq and x != tid:
            st[S_SEQ] = i
            _push(ht, hs, hid, st, rqo[i][0], x)
    st[S_SEQ] = n_rq
    hz_t, hz_s = (foreign[0][0], foreign[0][1]) if foreign else (1 << 62, 0)
    ncat = len(d.cat_names)
    cat = np.zeros((T, ncat), np.int64)
    for x in cyc:
        cat[x, :len(d._cat[x])] = d._cat[x]
    lcnt = np.zeros(len(infos), np.int64)
    ltot = np.zeros(len(infos), np.int64)
    catt = np.zeros(len(infos), np.int64)
    cfail = np.zeros(len(infos), np.int64)
    bx = _bodies(d, m, bodies, T)
    px = _program_words(d, m, programs, T, W)
    buf = d._engine_buffers
    if buf is None:  # allocated once per driver: eight arrays of BUFFER records
        buf = d._engine_buffers = tuple(np.zeros(BUFFER, np.int64) for _ in range(8))
    wait_d, wait_w, hold_d, hold_w, nt_tid, nt_pos, nt_i, nt_now = buf
    wparked = np.zeros(T, np.int64)
    why = run(st, ht, hs, hid, qtid, qmode, pos, left, nops, opk, opc, opcid, oplab, gc,
              gcid, glab, mode, who, clk, parked, pcid, phand, pspin, grantp, held_t,
              req_t, takes, tsteps, rdcnt, cat, lcnt, ltot, wait_d, wait_w, hold_d,
              hold_w, bx.data, bx.wbase, bx.lo, bx.old, bx.new, bx.off, ci, fail,
              bx.lbase, bx.ltime, bx.ltid, catt, cfail,
              px.data, px.wb, px.lo, px.stride, px.lb, px.vo, px.vc, px.eo, px.ec, px.mask,
              px.note, px.vals, px.i0, px.ltime, px.ltid, nt_tid, nt_pos, nt_i, nt_now,
              wparked,
              hz_t, hz_s, limit, budget, d._window, d._surcharge, d._lshift)
    steps = int(st[S_STEPS])
    # a hand-over copies each cycling thread's state both ways: worth it only if the
    # engine took more steps than that costs (the policy of ``TimedDriver._loop``)
    per = STEPS_PER_PROGRAM_THREAD if programs else STEPS_PER_THREAD
    d._engine_worth = per * len(cyc) if d.engine_min_stretch else 0
    if steps == 0:
        return 0  # nothing changed: the driver steps the popped thread itself
    _write_back(d, m, lock, ls, cyc, before, st, ht, hs, hid, qtid, qmode, pos, left,
                parked, grantp, held_t, req_t, takes, tsteps, rdcnt, clk, cat, ci, fail,
                infos, lcnt, ltot, wait_d, wait_w, hold_d, hold_w, foreign, rs)
    # the bodies and programs: words, line stamps, cas counters
    bx.write_back(d)
    px.write_back(d)
    if why == STOP_WAIT:  # a thread whose next operation waits: the driver's park
        x = int(np.flatnonzero(wparked)[0])
        d._park_thread(x, threads[x].pending)
    # the notes, in the order of their operations, at their virtual times
    nn = int(st[S_NN])
    if nn:
        notes = {x * W + j: f for x, p, *_ in programs
                 for j, f in enumerate(p.notes) if f is not None}
        keys = (nt_tid[:nn] * W + nt_pos[:nn]).tolist()
        for k, i, at in zip(keys, nt_i[:nn].tolist(), nt_now[:nn].tolist()):
            m.now = at
            try:
                notes[k](i)
            except Exception as e:  # as the executor reports a note that fails
                tx = threads[k // W]
                m._end_program(tx)
                m._advance_failed(tx, RuntimeError("generator raised StopIteration")
                                  if isinstance(e, StopIteration) else e)
                break
        m.now = int(st[S_NOW])
    for sl, key in px.cas_keys.items():
        if catt[sl]:
            d._cas_att[key] = d._cas_att.get(key, 0) + int(catt[sl])
    for sl, key in cas_keys.items():
        if catt[sl]:
            d._cas_att[key] = d._cas_att.get(key, 0) + int(catt[sl])
        if cfail[sl]:
            d._cas_fail[key] = d._cas_fail.get(key, 0) + int(cfail[sl])
    return steps


class _Copy:
    """Words the engine works on, copied from the machine's objects into one flat array,
    and the cache-line stamps of some of their lines as the driver keeps them (last
    writer, when); ``write_back`` puts both back (a stamp only where the engine wrote
    one)."""

    def __init__(self) -> None:
        self.data = np.zeros(1, np.uint64)
        self.words: list[tuple[Any, int, int, int]] = []  # (Words, first, last, start)
        self.ltime = np.zeros(1, np.int64)
        self.ltid = np.full(1, -1, np.int64)
        #: (oid, first line, block start, lines in the block)
        self.blocks: list[tuple[int, int, int, int]] = []
        self.t0, self.d0 = self.ltime, self.ltid

    def write_back(self, d: Any) -> None:
        for w, a, b, k in self.words:
            w.data[a:b + 1] = self.data[k:k + b - a + 1]
        lines = d._lines
        for oid, l0, b, n in self.blocks:
            for k in range(b, b + n):
                tid = int(self.ltid[k])
                if tid < 0 or (tid == self.d0[k] and self.ltime[k] == self.t0[k]):
                    continue
                lines[(oid << 32) | (l0 + k - b)] = (int(self.ltime[k]) << 32) | tid


class _Bodies(_Copy):
    """The cmpxchg bodies' state for ``run``: the words the remaining cycles can touch,
    copied from each distinct table into one flat array (and copied back after), per
    thread where its table's copy starts, its first word and its old/new values (flat
    arrays at an offset), and the tables' cache-line stamps (flat, per table a block of
    the lines the cycles can touch) as the driver keeps them (last writer, when)."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.wbase = np.zeros(T, np.int64)
        self.lo = np.zeros(T, np.int64)
        self.off = np.zeros(T, np.int64)
        self.lbase = np.zeros(T, np.int64)
        self.old = np.zeros(1, np.uint64)
        self.new = np.zeros(1, np.uint64)


class _Program(_Copy):
    """The ``lock_program`` threads' words for ``run``: one flat copy of the words
    their remaining cycles can touch (copied back after), the line stamps of those
    words' cache lines as the driver keeps them, and per (thread, position): where its
    object's copy and lines start (``wb``, ``lb``), its word ``lo + stride * i``, its
    values and expected values (where cycle ``i0`` of the thread's are in ``vals``, or
    -1 and one constant), its mask, and whether a note follows it."""

    def __init__(self, T: int, W: int) -> None:
        super().__init__()
        z = np.zeros((T, W), np.int64)
        self.wb, self.lo, self.stride, self.lb = z, z.copy(), z.copy(), z.copy()
        self.vo, self.eo = np.full((T, W), -1, np.int64), np.full((T, W), -1, np.int64)
        self.vc = np.zeros((T, W), np.uint64)
        self.ec = np.zeros((T, W), np.uint64)
        self.mask = np.zeros((T, W), np.uint64)
        self.note = np.zeros((T, W), np.int64)
        self.i0 = np.zeros(T, np.int64)  # the cycle ``vals`` start at, per thread
        self.vals = np.zeros(1, np.uint64)
        self.cas_keys: dict[int, str] = {}


def _program_words(d: Any, m: Any, programs: list[tuple[int, Any, Any, int, int, Any, int]],
                   T: int, W: int) -> _Program:
    px = _Program(T, W)
    if not programs:
        return px
    lshift = d._lshift
    objs: dict[int, Any] = {}  # oid -> Words
    wspan: dict[int, tuple[int, int]] = {}  # oid -> words [first, last] touched
    lspan: dict[int, tuple[int, int]] = {}  # oid -> lines [first, last] written
    vals: list[Any] = []
    off = 0
    for x, prog, refs, i0, n, pend, j0 in programs:
        last = i0 + n - 1
        px.i0[x] = i0
        for j, ref in enumerate(refs):
            if prog.notes[j] is not None:
                px.note[x, j] = 1
            if ref is None:
                continue
            c, w, lo, stride, ev, mask, ec, vc = ref
            oid = w.oid
            if w.freed or d._waiters.get(oid):
                raise _Refused
            if w.tag is not None and any(v is not None and w.tag in v for v in m.watches):
                raise _Refused
            a, b = lo + stride * i0, lo + stride * last
            if a < 0 or b >= len(w.data):
                raise _Refused  # the executor reports that; the engine does not
            if oid in wspan:
                a0, b0 = wspan[oid]
                wspan[oid] = (min(a, a0), max(b, b0))
            else:
                wspan[oid] = (a, b)
            if c == P_STORE or c == P_CAS:  # writes: their cache lines' stamps
                la, lb = a >> lshift, b >> lshift
                if oid in lspan:
                    la, lb = min(la, lspan[oid][0]), max(lb, lspan[oid][1])
                lspan[oid] = (la, lb)
            objs[oid] = w
            px.lo[x, j], px.stride[x, j], px.mask[x, j] = lo, stride, mask
            px.ec[x, j], px.vc[x, j] = ec, vc
            built = pend if j == j0 else None  # built from the values of its time
            if ev is not None:
                vv, ee = _each_arrays(d, ev)
                if vv is not None:
                    v = vv[i0:i0 + n].copy()
                    if len(v) < n:
                        raise _Refused
                    if built is not None:
                        v[0] = _u64(built.a if c == P_STORE else built.b)
                    vals.append(v)
                    px.vo[x, j] = off
                    off += n
                if ee is not None:
                    v = ee[i0:i0 + n].copy()
                    if len(v) < n:
                        raise _Refused
                    if built is not None and c == P_CAS:
                        v[0] = _u64(built.a)
                    vals.append(v)
                    px.eo[x, j] = off
                    off += n
                elif built is not None and c == P_CAS:
                    px.ec[x, j] = _u64(built.a)
            if c == P_CAS:
                sl = d._engine_slots[id(_info_of(d, prog.seq[j].cost, O.CAS))]
                px.cas_keys[sl] = prog.seq[j].cost or "<cas>"
    # one copy of each object's words; objects must not share memory where touched
    spans = []
    for oid, (a, b) in wspan.items():
        w = objs[oid]
        big = d._big.get(oid, _UNSEEN)
        if big is _UNSEEN:
            big = d._line_table(w)
        if big is not None:
            raise _Refused  # a large object's stamps are arrays (not built here)
        base = w.data.__array_interface__["data"][0]
        spans.append((base + 8 * a, base + 8 * (b + 1), oid))
    spans.sort()
    for (a0, b0, _), (a1, _b1, _) in zip(spans, spans[1:]):
        if a1 < b0:
            raise _Refused  # two objects over the same memory: copies would diverge
    px.vals = np.concatenate(vals) if vals else np.zeros(1, np.uint64)
    wstart: dict[int, int] = {}
    k = 0
    for oid, (a, b) in wspan.items():
        wstart[oid] = k - a
        px.words.append((objs[oid], a, b, k))
        k += b - a + 1
    if not wspan:
        return px  # no words: nops and lock operations only
    px.data = np.concatenate([objs[oid].data[a:b + 1] for oid, (a, b) in wspan.items()])
    lstart: dict[int, int] = {}
    lines = d._lines
    times: list[int] = []
    tids: list[int] = []
    k = 0
    for oid, (la, lb) in lspan.items():
        lstart[oid] = k - la
        px.blocks.append((oid, la, k, lb - la + 1))
        for ln in range(la, lb + 1):
            v = lines.get((oid << 32) | ln)
            times.append(0 if v is None else v >> 32)
            tids.append(-1 if v is None else v & 0xFFFFFFFF)
            k += 1
    if k:
        px.ltime = np.array(times, np.int64)
        px.ltid = np.array(tids, np.int64)
    px.t0, px.d0 = px.ltime.copy(), px.ltid.copy()
    for x, prog, refs, *_ in programs:
        for j, ref in enumerate(refs):
            if ref is not None:
                oid = ref[1].oid
                px.wb[x, j] = wstart[oid]
                px.lb[x, j] = lstart.get(oid, 0)  # only writes look their lines up
    return px


#: marks an ``Each``'s key in the driver's engine cache (ids are below 2**48)
_EACH_KEY = 1 << 62


def _each_arrays(d: Any, ev: Any) -> tuple[Any, Any]:
    """An ``Each``'s per-cycle values and expected values as uint64 arrays (None where
    it has none), converted once and kept in the driver's engine cache: a program's
    values are not to change once it is yielded (``ops.lock_program``)."""
    cache = d._engine_cache
    key = id(ev) | _EACH_KEY
    ent = cache.get(key)
    if ent is None or ent[0] is not ev:
        vals = None if ev.values is None else _words64(ev.values, len(ev.values))
        ex = ev.expect
        exp = None if ex is None or type(ex) is int else _words64(ex, len(ex))
        ent = cache[key] = (ev, vals, exp)
    return ent[1], ent[2]


def _words64(values: Any, n: int) -> Any:
    """The first ``n`` of a body's old or new values as a fresh uint64 array, if every
    one is an integer in [0, 2**64) (else the executor's comparison of Python ints
    is not the engine's: refused)."""
    a = np.asarray(values[:n])
    if len(a) < n or a.dtype.kind not in "iu" or (a.dtype.kind == "i" and n
                                                      and int(a.min()) < 0):
        raise _Refused
    return a.astype(np.uint64)  # a copy


def _bodies(d: Any, m: Any, bodies: list[tuple[int, Any, int, int, Any]],
            T: int) -> _Bodies:
    bx = _Bodies(T)
    if not bodies:
        return bx
    lshift = d._lshift
    tables: dict[int, Any] = {}  # oid -> Words
    wspan: dict[int, tuple[int, int]] = {}  # oid -> words [first, last] to copy
    span: dict[int, tuple[int, int]] = {}  # oid -> lines [first, last] to cover
    olds: list[Any] = []
    news: list[Any] = []
    off = 0
    roots: dict[int, int] = {}  # id of the memory a table is a view of -> its oid
    for x, tmpl, i0, n, built in bodies:
        w = tmpl.obj
        oid = w.oid
        if oid is None or w.freed or d._waiters.get(oid) or w.data.dtype != np.uint64:
            raise _Refused
        big = d._big.get(oid, _UNSEEN)
        if big is _UNSEEN:
            big = d._line_table(w)  # where the driver keeps its line stamps
        if big is not None:
            raise _Refused  # a large table's stamps are arrays (not built here)
        if w.tag is not None and any(v is not None and w.tag in v for v in m.watches):
            raise _Refused  # an invariant watches this table: the driver checks it
        lo = tmpl.lo
        if lo < 0 or lo + n > len(w.data):
            raise _Refused  # the executor reports that; the engine does not
        o = _words64(tmpl.a, n)
        nw = _words64(tmpl.b, n)
        if built is not None:  # built from the values of its time: those count
            if not (0 <= built.a < 1 << 64 and 0 <= built.b < 1 << 64):
                raise _Refused
            o[i0] = built.a
            nw[i0] = built.b
        root = w.data
        while root.base is not None:
            root = root.base
        if roots.setdefault(id(root), oid) != oid:
            raise _Refused  # two tables sharing memory: their copies would diverge
        tables[oid] = w
        wa, wb = lo + i0, lo + n - 1
        if oid in wspan:
            wa, wb = min(wa, wspan[oid][0]), max(wb, wspan[oid][1])
        wspan[oid] = (wa, wb)
        bx.lo[x] = lo
        bx.off[x] = off
        olds.append(o)
        news.append(nw)
        off += n
        a, b = (lo + i0) >> lshift, (lo + n - 1) >> lshift
        if oid in span:
            a, b = min(a, span[oid][0]), max(b, span[oid][1])
        span[oid] = (a, b)
    bx.old = np.concatenate(olds)
    bx.new = np.concatenate(news)
    wstart: dict[int, int] = {}
    k = 0
    for oid, (wa, wb) in wspan.items():
        wstart[oid] = k
        bx.words.append((tables[oid], wa, wb, k))
        k += wb - wa + 1
    bx.data = np.concatenate([tables[oid].data[wa:wb + 1] for oid, (wa, wb)
                              in wspan.items()])
    total = sum(b - a + 1 for a, b in span.values())
    bx.ltime = np.zeros(total, np.int64)
    bx.ltid = np.full(total, -1, np.int64)
    start: dict[int, int] = {}
    k = 0
    lines = d._lines
    for oid, (a, b) in span.items():
        start[oid] = k
        bx.blocks.append((oid, a, k, b - a + 1))
        for ln in range(a, b + 1):
            v = lines.get((oid << 32) | ln)
            if v is not None:
                bx.ltime[k] = v >> 32
                bx.ltid[k] = v & 0xFFFFFFFF
            k += 1
    for x, tmpl, _i0, _n, _b in bodies:
        oid = tmpl.obj.oid
        bx.lbase[x] = start[oid] - span[oid][0]
        bx.wbase[x] = wstart[oid] - wspan[oid][0]
    bx.t0 = bx.ltime.copy()
    bx.d0 = bx.ltid.copy()
    return bx


def _write_back(d: Any, m: Any, lock: Any, ls: Any, cyc: list[int],
                before: dict[int, tuple[bool, Any, int, int, Any]], st: Any, ht: Any, hs: Any,
                hid: Any, qtid: Any, qmode: Any, pos: Any, left: Any, parked: Any,
                grantp: Any, held_t: Any, req_t: Any, takes: Any, tsteps: Any,
                rdcnt: Any, clk: Any, cat: Any, ci: Any, fail: Any, infos: list[Any],
                lcnt: Any, ltot: Any,
                wait_d: Any, wait_w: Any, hold_d: Any, hold_w: Any,
                foreign: list[tuple[int, int, int]], rs: Any) -> None:
    threads = m.threads
    shared = lock.shared_ok
    park = d._park
    # the lock
    owner = int(st[S_OWNER])
    lock.owner = None if owner < 0 else owner
    qcap = len(qtid)
    qh, ql = int(st[S_QHEAD]), int(st[S_QLEN])
    lock.queue[:] = [(int(qtid[(qh + i) % qcap]), int(qmode[(qh + i) % qcap]))
                     for i in range(ql)]
    lock.acquisitions += int(st[S_LK_ACQ])
    lock.contended += int(st[S_LK_CONT])
    # the driver's lock statistics
    ls.acquisitions += int(st[S_LS_ACQ])
    ls.contended += int(st[S_LS_CONT])
    ls.spin_ns += int(st[S_SPIN])
    ls.sleep_ns += int(st[S_SLEEP])
    ls.lw_tid = int(st[S_LW_TID])
    ls.lw_time = int(st[S_LW_TIME])
    nw, nh = int(st[S_NW]), int(st[S_NH])
    if nw + nh < SMALL_BATCH:  # to the driver's lists, folded with its own samples
        ls.wait_d.extend(wait_d[:nw].tolist())
        ls.wait_w.extend(wait_w[:nw].tolist())
        ls.hold_d.extend(hold_d[:nh].tolist())
        ls.hold_w.extend(hold_w[:nh].tolist())
    else:  # straight into the histograms (they do not depend on the samples' order)
        ls.fold_arrays(wait_d[:nw], wait_w[:nw], hold_d[:nh], hold_w[:nh])
    for info, n, tot in zip(infos, lcnt.tolist(), ltot.tolist()):
        info.count += n
        info.total += tot
    # the threads
    readers = lock.readers
    dcat = d._cat
    dclk = d._clk
    # the arrays as lists once (indexing a list is cheaper than a numpy scalar)
    grantp_l, pos_l, left_l, tsteps_l = (grantp.tolist(), pos.tolist(), left.tolist(),
                                         tsteps.tolist())
    rdcnt_l, takes_l, held_l, req_l = (rdcnt.tolist(), takes.tolist(), held_t.tolist(),
                                       req_t.tolist())
    parked_l, clk_l = parked.tolist(), clk.tolist()
    ci_l, fail_l = ci.tolist(), fail.tolist()
    for x in cyc:
        if not tsteps_l[x] and clk_l[x] == dclk[x] and bool(parked_l[x]) == (x in park):
            continue  # neither stepped nor woken in the engine: nothing changed
        tx = threads[x]
        was_holding, pend, md, rel_i, body = before[x]
        seq = tx.cyc
        g = bool(grantp_l[x])
        j = pos_l[x]
        i = ci_l[x]
        holding = (not g) and 0 < j <= rel_i
        # the pending operation: the one it had if it did not move on, else as the
        # executor would have made it pending (a grant, this cycle's cmpxchg, ...)
        same = j == tx.cyc_j and i == tx.cyc_i and g == (pend.kind == O.GRANT)
        if not same:
            if g:
                pend = O.grant(lock, md, seq[0].cost)
            elif body is not None and j == 1:
                pend = O.cycle_cas(body, i)
            elif tx.cyc_prog is not None and tx.cyc_prog.each[j] is not None:
                pend = O.each_op(seq[j], tx.cyc_prog.each[j], i)
            else:
                pend = seq[j]
        tx.pending = pend
        tx.cyc_j = j
        tx.cyc_i = i
        tx.cyc_fail = bool(fail_l[x])
        tx.cyc_left = left_l[x]
        tx.steps += tsteps_l[x]
        n = rdcnt_l[x]
        if n:
            readers[x] = n
        else:
            readers.pop(x, None)
        if holding != was_holding:
            if holding:
                tx.locks.append((lock, md))
                tx.atomic += 1
            else:
                for i, (lk, mm) in enumerate(tx.locks):
                    if lk is lock and mm == md:
                        del tx.locks[i]
                        break
                tx.atomic -= 1
        elif holding and takes_l[x]:
            # released and taken again: it is now the last lock taken
            for i, (lk, mm) in enumerate(tx.locks):
                if lk is lock and mm == md:
                    del tx.locks[i]
                    break
            tx.locks.append((lock, md))
        if rs is not None:
            depth = rs.depth.get(x, 0)
            base = depth - (1 if was_holding else 0)
            if base == 0 and takes_l[x]:
                rs.section[x] = rs.section.get(x, 0) + takes_l[x]
            nd = base + (1 if holding else 0)
            if nd:
                rs.depth[x] = nd
            else:
                rs.depth.pop(x, None)
        code = 1 if md == READ else (2 if shared else 0)
        wx = x * 4 + code
        times = ls.held.get(wx)
        if holding:
            if times is None:
                ls.held[wx] = [held_l[x]]
            else:
                times[:] = [held_l[x]]
        elif times:
            del times[:]
        if g and req_l[x] >= 0:
            ls.req[x] = req_l[x]
        else:
            ls.req.pop(x, None)
        if parked_l[x]:
            if x not in park:
                park[x] = ls.park_rec[md == READ] or d._lock_park_rec(lock, ls, md == READ)
        else:
            park.pop(x, None)
        dclk[x] = clk_l[x]
        row = dcat[x]
        row[:] = cat[x, :len(row)].tolist()
    m.nsteps += int(st[S_STEPS])
    m.now = int(st[S_NOW])
    m.current = threads[int(st[S_LAST])]
    d._contended += int(st[S_CONTENDED])
    d.engine_steps += int(st[S_STEPS])
    # the ready queue: the foreign entries where they were, the cycling threads'
    # entries in the engine's (time, sequence) order
    ents = [(int(ht[i]), int(hs[i]), int(hid[i])) for i in range(int(st[S_HN]))]
    ents.extend(foreign)
    ents.sort()
    d._rq.assign([(e[0], e[2]) for e in ents])
