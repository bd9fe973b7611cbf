#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Connections accepted on a session's SSL port, on real sockets."""

import contextlib
import os
import socket
from unittest import mock

import libtorrent as lt

from ironic_bt.common import sockets


@contextlib.contextmanager
def _server():
    server = socket.create_server(('127.0.0.1', 0))
    with server:
        yield server, server.getsockname()[1]


def _connect(server):
    client = socket.create_connection(server.getsockname())
    accepted, address = server.accept()
    return client, accepted, address


def test_shut_down_ends_an_accepted_connection_on_the_port():
    with _server() as (server, port):
        client, accepted, address = _connect(server)
        with client, accepted:
            assert sockets._accepted(port) == {accepted.fileno(): address}
            assert sockets._shut_down(accepted.fileno(), port)
            # The other side sees the end of the connection.
            assert client.recv(1) == b''


def test_shut_down_leaves_a_reused_descriptor_alone():
    # A descriptor listed for the port, closed by libtorrent and reused by
    # another connection of the process (IPA's API) before it was shut
    # down, is left alone.
    with _server() as (server, port):
        client, accepted, _address = _connect(server)
        with client, accepted:
            assert not sockets._shut_down(accepted.fileno(), port + 1)
            fd = os.open(os.devnull, os.O_RDONLY)
            try:
                assert not sockets._shut_down(fd, port)
            finally:
                os.close(fd)
            client.sendall(b'x')
            assert accepted.recv(1) == b'x'


def _session(port):
    session = mock.create_autospec(lt.session, instance=True)
    session.ssl_listen_port.return_value = port
    session.is_listening.return_value = False
    return session


def test_handshakes_end_connections_that_never_become_peers():
    with _server() as (server, port):
        silent, silent_accepted, silent_address = _connect(server)
        peer, peer_accepted, peer_address = _connect(server)
        with silent, silent_accepted, peer, peer_accepted:
            ssl_port = sockets.SslPort(_session(port), limit=10, interval=1)
            # Young: left alone.
            assert ssl_port.check({peer_address}, now=100) == []
            # Too soon after the last look: nothing done.
            assert ssl_port.check({peer_address}, now=100.5) == []
            assert ssl_port.check({peer_address}, now=105) == []
            # Ten seconds without becoming a peer: ended; the peer stays.
            with mock.patch.object(sockets.LOG, 'warning',
                                   autospec=True) as warning:
                assert ssl_port.check({peer_address}, now=110) == [
                    silent_address]
            assert silent.recv(1) == b''
            assert '127.0.0.1' in str(warning.call_args)
            peer.sendall(b'x')
            assert peer_accepted.recv(1) == b'x'


def test_handshakes_time_a_connection_from_when_it_was_first_seen():
    with _server() as (server, port):
        ssl_port = sockets.SslPort(_session(port), limit=10, interval=1)
        assert ssl_port.check(set(), now=100) == []
        # A connection that comes later gets its own ten seconds.
        client, accepted, _address = _connect(server)
        with client, accepted:
            assert ssl_port.check(set(), now=108) == []
            assert ssl_port.check(set(), now=117) == []
            assert len(ssl_port.check(set(), now=118)) == 1


def test_handshakes_do_nothing_without_a_port():
    # libtorrent reports port 0 while it reopens its listen sockets.
    ssl_port = sockets.SslPort(_session(0), limit=0, interval=0)
    with mock.patch.object(sockets, '_accepted', autospec=True) as accepted:
        assert ssl_port.check(set(), now=1) == []
    accepted.assert_not_called()


def test_addresses_compare_as_both_sides_give_them():
    assert sockets.address('::ffff:198.18.0.2', 6881) == ('198.18.0.2', 6881)
    assert sockets.address('fe80::1%eth0', 6881) == ('fe80::1', 6881)
    assert sockets.address('FD00::1', 1) == ('fd00::1', 1)


def test_connections_to_another_address_on_the_port_are_not_ours():
    # The built-in tracker may share the seeder's port on another address.
    with _server() as (server, port):
        client, accepted, _address = _connect(server)
        with client, accepted:
            assert sockets._accepted(port, host='127.0.0.1')
            assert sockets._accepted(port, host='0.0.0.0')
            assert not sockets._accepted(port, host='127.0.0.2')


def test_shut_down_checks_the_connection_is_still_the_listed_one():
    with _server() as (server, port):
        client, accepted, address = _connect(server)
        with client, accepted:
            other = (address[0], address[1] + 1)
            assert not sockets._shut_down(accepted.fileno(), port, other)
            client.sendall(b'x')
            assert accepted.recv(1) == b'x'
            assert sockets._shut_down(accepted.fileno(), port, address)


def test_handshakes_survive_a_failure_to_look():
    ssl_port = sockets.SslPort(_session(6881), limit=0, interval=0)
    with mock.patch.object(sockets, '_accepted', autospec=True,
                           side_effect=OSError(24, 'Too many open files')), \
            mock.patch.object(sockets.LOG, 'warning',
                              autospec=True) as warning:
        assert ssl_port.check(set(), now=1) == []
    assert 'Too many open files' in str(warning.call_args)


def test_closing_never_raises():
    # The writer closes its session in a finally: an error there would
    # turn a verified image into a failed deploy.
    with mock.patch.object(sockets, '_accepted', autospec=True,
                           side_effect=OSError(24, 'Too many open files')), \
            mock.patch.object(sockets.LOG, 'warning',
                              autospec=True) as warning:
        sockets.SslPort(_session(6881)).close()
    assert 'Too many open files' in str(warning.call_args)
