"""The scale tests' cluster: a head that holds no CPU and two 1-CPU worker nodes (Ray's multi-node harness on
this machine, see multinode.py), so Train's two 1-CPU workers can only run on two different nodes, and losing one
leaves no room until a node is added. Each test gets its own cluster."""

import pytest
from multinode import LocalCluster


@pytest.fixture
def cluster():
    harness = LocalCluster(head_cpus=0)
    try:
        harness.add_node(cpus=1)
        harness.add_node(cpus=1)
        yield harness
    finally:
        harness.shutdown()
