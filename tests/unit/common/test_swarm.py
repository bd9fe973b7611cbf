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

"""Adding torrents, and closing sessions.

An SSL torrent has its certificate before it connects; a session closes
its SSL connections before it is destroyed.
"""

import os
import socket
from unittest import mock

import libtorrent as lt

from ironic_bt.common import certs
from ironic_bt.common import swarm

CREDENTIALS = certs.Credentials(ca=b'ca', certificate=b'cert',
                                private_key=b'key')


def _session():
    session = mock.create_autospec(lt.session, instance=True)
    handle = mock.create_autospec(lt.torrent_handle, instance=True)
    session.add_torrent.return_value = handle
    calls = mock.Mock()
    calls.attach_mock(session.add_torrent, 'add_torrent')
    calls.attach_mock(handle.set_ssl_certificate_buffer, 'certificate')
    calls.attach_mock(handle.resume, 'resume')
    # What the torrent's flags were when libtorrent got it.
    flags = []
    session.add_torrent.side_effect = (
        lambda params: flags.append(params.flags) or handle)
    return session, handle, calls, flags


def _params(paused=False):
    params = lt.add_torrent_params()
    params.flags &= ~lt.torrent_flags.auto_managed
    if not paused:
        params.flags &= ~lt.torrent_flags.paused
    return params


def test_ssl_torrent_runs_only_once_it_has_the_certificate():
    session, handle, calls, flags = _session()
    params = _params()
    assert swarm.add_torrent(session, params, CREDENTIALS) is handle
    # Added paused: no announce, no connection without our certificate.
    assert flags[0] & lt.torrent_flags.paused
    assert params.root_certificate == 'ca'
    assert [c[0] for c in calls.mock_calls] == [
        'add_torrent', 'certificate', 'resume']
    calls.certificate.assert_called_once_with(b'cert', b'key',
                                              swarm.DH_PARAMS)


def test_torrent_asked_paused_stays_paused():
    session, handle, calls, flags = _session()
    swarm.add_torrent(session, _params(paused=True), CREDENTIALS)
    assert flags[0] & lt.torrent_flags.paused
    handle.resume.assert_not_called()
    handle.set_ssl_certificate_buffer.assert_called_once()


def test_plain_torrent_is_added_as_it_is():
    session, handle, calls, flags = _session()
    swarm.add_torrent(session, _params(), None)
    assert not flags[0] & lt.torrent_flags.paused
    handle.set_ssl_certificate_buffer.assert_not_called()
    handle.resume.assert_not_called()


def test_user_agent_names_the_installed_release():
    # Trackers and peers see which release an agent or seeder runs: the
    # package's own version, never a placeholder.
    from importlib import metadata
    session = swarm.make_session('127.0.0.1', 0)
    agent = session.get_settings()['user_agent']
    assert agent.startswith('ironic-bt/%s ' % metadata.version('ironic-bt'))
    assert metadata.version('ironic-bt') not in ('0', '')


def _connected_pair():
    server = socket.create_server(('127.0.0.1', 0))
    client = socket.create_connection(server.getsockname())
    accepted, _addr = server.accept()
    server.close()
    return client, accepted


def test_shut_down_ends_an_accepted_connection_on_the_port():
    client, accepted = _connected_pair()
    with client, accepted:
        port = accepted.getsockname()[1]
        assert swarm._accepted(port) == [accepted.fileno()]
        assert swarm._shut_down(accepted.fileno(), port)
        # The other side sees the end of the connection.
        assert client.recv(1) == b''


def test_shut_down_leaves_a_reused_descriptor_alone():
    # A descriptor listed for the port, closed by libtorrent and reused by
    # another connection of the process (IPA's API) before it was shut
    # down, is left alone.
    client, accepted = _connected_pair()
    with client, accepted:
        other_port = accepted.getsockname()[1] + 1
        assert not swarm._shut_down(accepted.fileno(), other_port)
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            assert not swarm._shut_down(fd, other_port)
        finally:
            os.close(fd)
        client.sendall(b'x')
        assert accepted.recv(1) == b'x'


def test_close_session_of_a_plain_session_does_nothing():
    session = mock.create_autospec(lt.session, instance=True)
    swarm.close_session(session, ssl=False)
    assert not session.method_calls


def test_listen_interfaces():
    def interfaces(host, port=6881, ssl=False):
        return swarm.session_settings(host, port, ssl=ssl)['listen_interfaces']
    # Any address: both families.
    assert interfaces('0.0.0.0') == '0.0.0.0:6881,[::]:6881'
    assert interfaces('::', ssl=True) == '0.0.0.0:6881s,[::]:6881s'
    assert interfaces('198.18.0.2', 7000) == '198.18.0.2:7000'
    # libtorrent wants IPv6 addresses in brackets.
    assert interfaces('fd00::2', 7000, ssl=True) == '[fd00::2]:7000s'
