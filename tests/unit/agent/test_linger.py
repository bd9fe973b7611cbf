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

"""The writer's lingering: seed while others need it, then stop at once.

Against a fake download (autospec of the writer's own), driven by a script
of what the swarm looks like at each poll.
"""

import types
from unittest import mock

import libtorrent as lt
import pytest

from ipa_extension import errors
from ipa_extension import writer


def _download(script, poll_interval=0.01, quiet=0.05):
    """A fake download whose polls follow ``script``.

    :param script: a list of (connected incomplete peers, tracker's
        incomplete count) for each poll; the last entry repeats.
    """
    dl = mock.create_autospec(writer._Download, instance=True)
    dl.tuning = writer.Tuning(poll_interval=poll_interval,
                              linger_quiet=quiet)
    dl.meta = types.SimpleNamespace(info_hash='ab' * 20)
    dl.handle = mock.create_autospec(lt.torrent_handle, instance=True)
    dl.handle.status.return_value = types.SimpleNamespace(
        total_payload_upload=0)
    state = {'i': 0}

    def poll(downloading=True):
        assert downloading is False
        i = min(state['i'], len(script) - 1)
        state['i'] += 1
        state['now'] = script[i]
        return types.SimpleNamespace(num_incomplete=script[i][1])

    dl.poll.side_effect = poll
    dl.connected_incomplete.side_effect = lambda: state['now'][0]
    return dl, state


def test_nobody_incomplete_stops_after_the_quiet_period():
    dl, _state = _download([(0, 0)])
    seconds = writer._linger(dl, linger_timeout=30)
    assert seconds < 1
    dl.refresh_swarm_counts.assert_not_called()


def test_seeds_while_a_connected_peer_is_incomplete():
    dl, state = _download([(1, 1)] * 20 + [(0, 0)])
    writer._linger(dl, linger_timeout=30)
    # It looked until the peer completed, and then a little longer.
    assert state['i'] > 20


def test_linger_timeout_ends_it():
    dl, _state = _download([(1, 1)])
    seconds = writer._linger(dl, linger_timeout=0.2)
    assert 0.2 <= seconds < 1


def test_stale_tracker_count_is_refreshed_once():
    # The tracker still counts an incomplete peer that no connection
    # shows: ask once, not at every poll.
    dl, _state = _download([(0, 1)] * 5 + [(0, 0)])
    writer._linger(dl, linger_timeout=30)
    dl.refresh_swarm_counts.assert_called_once_with()


def test_disk_error_while_seeding_ends_lingering_not_the_deploy():
    dl, _state = _download([(1, 1)])
    dl.poll.side_effect = errors.TargetError('read error on /dev/sda')
    seconds = writer._linger(dl, linger_timeout=30)
    assert seconds < 1


@pytest.mark.parametrize('script', [[(0, 0)], [(2, 3), (0, 0)]])
def test_reports_the_bytes_it_uploaded(script, caplog):
    dl, _state = _download(script)
    dl.handle.status.return_value.total_payload_upload = 12345
    with caplog.at_level('INFO', logger='ipa_extension.writer'):
        writer._linger(dl, linger_timeout=30)
    assert '12345 bytes uploaded' in caplog.text
