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

"""Adding torrents: an SSL torrent has its certificate before it connects."""

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


def test_listen_interfaces():
    def interfaces(host, port=6881, ssl=False):
        return swarm.session_settings(host, port, ssl=ssl)['listen_interfaces']
    # Any address: both families.
    assert interfaces('0.0.0.0') == '0.0.0.0:6881,[::]:6881'
    assert interfaces('::', ssl=True) == '0.0.0.0:6881s,[::]:6881s'
    assert interfaces('198.18.0.2', 7000) == '198.18.0.2:7000'
    # libtorrent wants IPv6 addresses in brackets.
    assert interfaces('fd00::2', 7000, ssl=True) == '[fd00::2]:7000s'
