"""A worker whose process group is torn down under it (what Ray Train's TorchConfig.on_shutdown does to the
survivors once another worker fails) must stop, not go on as a fit of one: the lockstep helpers take the fit's
world size, never "no process group", as the sign of a single worker. Two real gloo ranks in two processes."""

import multiprocessing
import os

import pytest
import torch.distributed as dist

from pipeline.worker.distributed import ProcessGroupLost, gather_objects, reduce_sums

pytestmark = pytest.mark.faults


def _two_ranks(rank: int, rendezvous: str, out) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the ranks' pair sockets on loopback, as in a fit (ray_setup.py)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    row = {"sums": reduce_sums([rank + 1.0, 1.0], world=2), "gathered": gather_objects(f"rank{rank}", world=2)}
    dist.destroy_process_group()  # Ray Train's teardown, while this rank's training thread still runs
    for name, call in (("reduce", lambda: reduce_sums([rank + 1.0, 1.0], world=2)),
                       ("gather", lambda: gather_objects(f"rank{rank}", world=2))):
        try:
            row[name] = ("returned", call())
        except ProcessGroupLost as err:
            row[name] = ("raised", str(err))
    out.put((rank, row))


def test_a_survivor_whose_group_was_torn_down_stops_instead_of_going_on_alone(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_two_ranks, args=(rank, str(tmp_path / "rendezvous"), out)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    rows = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(30)
    for rank, row in rows.items():
        assert row["sums"] == [3.0, 2.0] and row["gathered"] == ["rank0", "rank1"]  # in lockstep while the group lives
        for name in ("reduce", "gather"):  # before the fix: ("returned", this rank's values alone)
            outcome, message = row[name]
            assert outcome == "raised", (rank, name, message)
            assert "2 workers" in message and "process group is gone" in message and "resumes" in message


def test_one_worker_needs_no_process_group():
    assert not dist.is_initialized()
    assert reduce_sums([2.0, 3], world=1) == [2.0, 3.0]
    assert gather_objects("mine", world=1) == ["mine"]
