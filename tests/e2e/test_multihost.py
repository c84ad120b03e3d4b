"""Two hosts, simulated on this machine: the pipeline program (and the plain SPMD program) under
`torchrun --nnodes 2` with a c10d rendezvous and under jax.distributed with 2 processes x 4 CPU
devices pass shardc.check; then one host is killed in the next step (under torchrun also the host
that holds the rendezvous store), and the survivors' report names its ranks and host, and every
process of the job is gone (multihost_job.py is the job)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("multihost_job.py")
ROOT = Path(__file__).parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**kw):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **kw)


def _wait_for(files, pattern, count, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = "".join(Path(f).read_text() for f in files)
        if len(re.findall(pattern, text)) >= count:
            return text
        time.sleep(0.3)
    raise AssertionError(f"{count} x {pattern!r} not seen in {timeout_s} s:\n" + text[-3000:])


def _alive(pids) -> list[int]:
    out = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().split(") ")[1][0]
        except OSError:
            continue
        if state != "Z":
            out.append(p)
    return out


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[1])


def _finish(procs, timeout_s):
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"process {p.pid} did not exit within {timeout_s} s after the host died")


def test_failure_report_names_the_dead_ranks():
    """The report a surviving rank raises (runtime/job.py), from the roster and the heartbeats."""
    from shardc.runtime import RankError, RankTimeoutError
    from shardc.runtime.job import failure

    class Beat:
        def __init__(self, dead):
            self._dead = dead

        def dead(self):
            return self._dead
    roster = [{"host": "a", "node": 0, "pid": 10}, {"host": "a", "node": 0, "pid": 11},
              {"host": "b", "node": 1, "pid": 20}, {"host": "b", "node": 1, "pid": 21}]
    doing = {"what": "recv of x from rank 2", "peers": [2]}
    e = failure(0, roster, doing, RuntimeError("Connection closed by peer"), Beat([2, 3]))
    assert type(e) is RankError and e.rank == 2 and e.kind == "died"
    assert str(e).startswith("rank 0 (node 0, host a, pid 10): recv of x from rank 2 failed; the peer stopped: "
                             "rank 2 (node 1, host b, pid 20), rank 3 (node 1, host b, pid 21)")
    e = failure(1, roster, doing, RuntimeError("Timed out waiting 60000ms"), Beat(None))   # the store died too
    assert isinstance(e, RankTimeoutError) and e.rank == 2 and e.kind == "raised"
    assert "cannot reach the job's store" in str(e) and "its peers: rank 2 (node 1, host b, pid 20)" in str(e)


@pytest.mark.slow
@pytest.mark.parametrize("dies", ["die", "die-store"])
def test_torchrun_two_nodes_and_a_dead_host(tmp_path, dies):
    """`die`: the second host dies; the survivors name its ranks from the heartbeats. `die-store`:
    the first host dies, whose agent holds the rendezvous store (and the workers' store): the
    heartbeats are gone with it, so the survivors name the failed transfer's peers on that host
    ("cannot reach the job's store"), and torchrun's agent ends the job."""
    port = _port()
    outs = [tmp_path / f"node{n}.log" for n in range(2)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "shardc-test",
           "--max-restarts", "0", str(JOB), "torch", dies]
    procs = []
    try:
        for n in range(2):
            procs.append(subprocess.Popen(cmd, stdout=outs[n].open("w"), stderr=subprocess.STDOUT, env=_env()))
            while n == 0:      # the first agent hosts the rendezvous store; the other host is the one to die
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert procs[0].poll() is None, outs[0].read_text()
                    time.sleep(0.3)
        text = _wait_for(outs, r"rank \d+ node \d+ pid \d+ ready", 4, 240)
        assert len(re.findall(r"rank \d node \d check ok", text)) == 4     # passed check on 2 nodes (die: both programs)
        ranks = {int(p): (int(r), int(n)) for r, n, p in re.findall(r"rank (\d+) node (\d+) pid (\d+) ready", text)}
        host = 1 if dies == "die" else 0
        victims = [p for p in ranks if _ppid(p) == procs[host].pid]
        assert len(victims) == 2 and len({ranks[p][1] for p in victims}) == 1
        dead_node = ranks[victims[0]][1]
        time.sleep(2)                      # the survivors are waiting on the dying host inside the step
        for p in [procs[host].pid] + victims:
            os.kill(p, signal.SIGKILL)
        killed = time.monotonic()
        _finish(procs, 90)
        assert time.monotonic() - killed < 90
        log = outs[1 - host].read_text()
        me = rf"RankError: rank \d \(node {1 - dead_node}, host [^,]+, pid \d+\): "
        dead = [rf"rank {ranks[p][0]} \(node {dead_node}, host {re.escape(socket.gethostname())}, pid {p}\)"
                for p in victims]
        if dies == "die":
            for d in dead:
                assert re.search(me + rf".*the peer stopped: .*{d}", log), log[-3000:]
        else:     # a survivor may be ended by its agent before it reports; one report names the host
            assert re.search(me + rf".*cannot reach the job's store .*its peers: .*({'|'.join(dead)})", log), log[-3000:]
        assert procs[1 - host].returncode != 0
        assert _alive(list(ranks)) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_jax_distributed_two_processes_and_a_dead_host(tmp_path):
    coordinator = f"127.0.0.1:{_port()}"
    outs = [tmp_path / f"process{n}.log" for n in range(2)]
    env = _env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, str(JOB), "jax", str(n), coordinator, "die"],
                              stdout=outs[n].open("w"), stderr=subprocess.STDOUT, env=env) for n in range(2)]
    try:
        text = _wait_for(outs, r"process \d pid \d+ ready", 2, 240)
        assert len(re.findall(r"process \d check ok", text)) == 2
        victim = int(re.search(r"process 1 pid (\d+) ready", text).group(1))
        time.sleep(2)
        os.kill(victim, signal.SIGKILL)
        _finish(procs, 60)
        log = outs[0].read_text()
        assert re.search(rf"RankError: process 0 \(host [^,]+, pid {procs[0].pid}\): transfer .* failed; its peer "
                         rf"process 1 \(host {re.escape(socket.gethostname())}, pid {victim}\) is gone", log), log[-3000:]
        assert procs[0].returncode == 1
        assert _alive([p.pid for p in procs]) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
