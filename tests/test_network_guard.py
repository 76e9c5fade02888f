"""The suite's network guard (tests/conftest.py): off-machine connections and lookups fail, loopback works."""

import socket

import pytest
from conftest import NetworkBlocked


def test_off_machine_connection_and_lookup_are_refused(no_network):
    with pytest.raises(NetworkBlocked, match="tests must not use the network: connect to .*203.0.113.7"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)  # TEST-NET-3: documentation only
    with pytest.raises(NetworkBlocked, match="name lookup of 'huggingface.co'"):
        socket.getaddrinfo("huggingface.co", 443)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlocked):
        s.connect_ex(("2001:db8::1", 80, 0, 0))
    assert len(no_network) == 3  # the teardown would fail this test on them: clear them here
    no_network.clear()


def test_loopback_stays_allowed():
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(("localhost", server.getsockname()[1]), timeout=5).close()  # the backlog takes it
