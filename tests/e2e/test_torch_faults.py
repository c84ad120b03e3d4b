"""A rank that raises, dies or hangs ends the run within its time limit with a RankError that names
the rank and the op it was at (with the model's source line); no process is left behind and the
pool works again afterwards. Also: independent ops run while a collective is in flight."""
import os
import signal
import time

import pytest

from _zoo import program
from shardc import Error
from shardc.ir import Op
from shardc.runtime import RankError, RankTimeoutError, check
from shardc.runtime.torch_launch import Fault, run_torch


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False  # (a reaped pid does not come back under the same number this soon)


def _mid_node(prog, op=None) -> int:
    """A node in the middle of the local program that is executed (not a parameter)."""
    nodes = prog.local.nodes
    for i in range(len(nodes) // 2, len(nodes)):
        if nodes[i].op is not Op.PARAMETER and (op is None or nodes[i].op is op):
            return i
    raise AssertionError("no such node")


def _fails(pool, prog, args, fault, timeout_s, within):
    pids = pool.pids
    t = time.monotonic()
    with pytest.raises(RankError) as info:
        run_torch(prog, *args, world=pool, timeout_s=timeout_s, fault=fault)
    took = time.monotonic() - t
    assert took < within, f"took {took:.1f} s"
    assert all(_gone(p) for p in pids), "a worker process was left behind"
    assert not pool.started
    assert isinstance(info.value, Error)
    return info.value


def _works_again(pool, prog, args):
    check(prog, *args, engine="torch", world=pool, timeout_s=60)
    assert pool.started


def test_rank_that_raises(torch_pool):
    prog, args = program("gpt2", False, "2x2")
    i = _mid_node(prog, Op.DOT_GENERAL)
    node = prog.local.nodes[i]
    err = _fails(torch_pool, prog, args, Fault(rank=2, kind="raise", at=i), 30, 15)
    assert err.rank == 2 and err.kind == "raised"
    assert "rank 2" in str(err) and "dot_general" in str(err) and node.source in str(err)
    assert "injected fault" in str(err)
    _works_again(torch_pool, prog, args)


def test_rank_killed_mid_run(torch_pool):
    prog, args = program("llama", True, "2x2-fsdp")
    i = _mid_node(prog)
    node = prog.local.nodes[i]
    err = _fails(torch_pool, prog, args, Fault(rank=1, kind="kill", at=i), 30, 15)
    assert err.rank == 1 and err.kind == "died"
    assert "SIGKILL" in str(err) and node.describe() in str(err)
    _works_again(torch_pool, prog, args)


def test_rank_that_exits(torch_pool):
    prog, args = program("moe", True, "dp4")
    err = _fails(torch_pool, prog, args, Fault(rank=3, kind="exit", at="all_reduce"), 30, 15)
    assert err.rank == 3 and err.kind == "died" and "exited with code 3" in str(err)
    assert "all_reduce" in err.doing
    _works_again(torch_pool, prog, args)


def test_rank_that_hangs_times_out(torch_pool):
    prog, args = program("mlp", True, "2x2")
    i = _mid_node(prog)
    node = prog.local.nodes[i]
    err = _fails(torch_pool, prog, args, Fault(rank=0, kind="hang", at=i), 4, 10)
    assert isinstance(err, RankTimeoutError)
    assert err.rank == 0 and err.kind == "hung" and node.describe() in str(err)
    assert "within 4 s" in str(err)
    _works_again(torch_pool, prog, args)


def test_worker_killed_from_outside_between_runs(torch_pool):
    prog, args = program("mlp", False, "dp4")
    check(prog, *args, engine="torch", world=torch_pool)
    os.kill(torch_pool.pids[2], signal.SIGKILL)
    err = _fails(torch_pool, prog, args, None, 30, 15)
    assert err.rank == 2 and err.kind == "died"
    _works_again(torch_pool, prog, args)


def test_independent_ops_run_while_a_collective_is_in_flight(torch_pool):
    # DP: gradient all-reduces start during backprop (uncombined: one per gradient to overlap)
    prog, args = program("mlp", True, "dp4", passes=())
    trace = []
    run_torch(prog, *args, world=torch_pool, trace=trace)
    assert len(trace) == 4
    nodes = prog.local.nodes
    ancestors = {}
    for n in nodes:  # every node's transitive inputs
        ancestors[n] = set(n.inputs).union(*(ancestors[i] for i in n.inputs))
    for rank, events in enumerate(trace):
        starts = {e.index: e for e in events if e.kind == "start"}
        waits = {e.index: e for e in events if e.kind == "wait"}
        assert starts and set(starts) == set(waits)
        overlapped = []
        for c, s in starts.items():
            w = waits[c]
            between = [e for e in events if e.kind == "op" and s.t1 <= e.t0 and e.t1 <= w.t0]
            assert all(nodes[c] not in ancestors[nodes[e.index]] for e in between)
            overlapped += between
        assert overlapped, f"rank {rank}: no op ran between a collective's start and its wait"
