"""The test cluster itself: a port taken between picking it and a node binding it costs a retry
on other ports, not a failed test."""

from __future__ import annotations

import socket

from loadtest.nats_cluster import NatsCluster


def test_a_port_taken_before_a_node_binds_it_is_replaced(tmp_path):
    cluster = NatsCluster(tmp_path)
    taken = cluster.nodes[1].cluster_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            cluster.start()  # returns once an R3 stream can be made on all three nodes
            assert cluster.nodes[1].cluster_port != taken
        finally:
            cluster.stop()
