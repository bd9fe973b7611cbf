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

"""The writer's control loop against a fake libtorrent handle.

The download loop (when a write is stalled, when nothing can be reached,
when it is done) against an autospec of the writer's own download; the
seeder's disconnection and the reconnects, and the web seeds standing in
for it, against an autospec of ``lt.torrent_handle``.
"""

import time
import types
from unittest import mock

import libtorrent as lt
import pytest

from ipa_extension import errors
from ipa_extension import peers
from ipa_extension import pieces
from ipa_extension import sources
from ipa_extension import writer
from ironic_bt.common import swarm

SIZE = 1 << 20
SEEDER_IP = '198.18.0.1'
WEB_SEED = 'http://198.18.0.1:8080/bittorrent/abc'


def _status(seeding=False, num_peers=0):
    return types.SimpleNamespace(
        is_seeding=seeding, num_peers=num_peers, num_seeds=0, pieces=[],
        total_payload_download=0, download_payload_rate=0,
        upload_payload_rate=0)


def _download(script):
    """A fake download whose polls follow ``script``.

    :param script: (bytes present, connected peers, seeding) at each poll;
        the last entry repeats.
    """
    dl = mock.create_autospec(writer._Download, instance=True)
    dl.tuning = writer.Tuning(poll_interval=0.01, overlap_read_back=False)
    dl.meta = types.SimpleNamespace(info_hash='ab' * 20, size=SIZE)
    dl.sources = sources.Sources(['http://198.18.0.1:6969/announce'],
                                 [(SEEDER_IP, 6881)], [])
    dl.bytes = peers.PeerBytes({SEEDER_IP})
    state = {'i': 0}

    def poll(downloading=True):
        i = min(state['i'], len(script) - 1)
        state['i'] += 1
        state['now'] = script[i]
        dl.connected = script[i][1]
        return _status(seeding=script[i][2], num_peers=script[i][1])

    dl.poll.side_effect = poll
    dl.present_bytes.side_effect = lambda st: state['now'][0]
    dl.wait.side_effect = time.sleep
    return dl


def _run(dl, stall_timeout=60, unreachable_timeout=60):
    readback = mock.Mock(spec=['check', 'update'])
    return writer._download(dl, readback, progress_interval=60,
                            stall_timeout=stall_timeout,
                            unreachable_timeout=unreachable_timeout)


def test_nothing_to_download_from_names_every_source():
    dl = _download([(0, 0, False)])
    start = time.monotonic()
    with pytest.raises(errors.DownloadError) as err:
        _run(dl, unreachable_timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 5
    message = str(err.value)
    assert 'made no progress' in message
    assert 'with nothing to download from, at 0.0%' in message
    assert 'tracker http://198.18.0.1:6969/announce: never answered' in \
        message
    assert 'seeder 198.18.0.1:6881: never connected' in message
    assert "Check that the conductor's tracker, seeder and web server" in \
        message


def test_connected_peers_that_send_nothing_stall_the_download():
    # Connected, so not unreachable: the stall timeout decides, and the
    # message says how far the disk got and with how many peers.
    dl = _download([(SIZE // 2, 3, False)])
    with pytest.raises(errors.DownloadError) as err:
        _run(dl, stall_timeout=0.3, unreachable_timeout=0.1)
    message = str(err.value)
    assert 'stalled at 50.0% for 0 s with 3 peers' in message
    assert 'made no progress' not in message


def test_progress_keeps_a_slow_download_going():
    # Each poll brings bytes: neither timeout fires however long it takes.
    script = [(i * 1024, 0, False) for i in range(40)] + [(SIZE, 0, True)]
    dl = _download(script)
    st = _run(dl, stall_timeout=0.05, unreachable_timeout=0.05)
    assert st.is_seeding
    assert dl.poll.call_count == len(script)


def _peer(ip, peer_id, connected=True):
    return types.SimpleNamespace(
        connection_type=lt.peer_info.standard_bittorrent, ip=(ip, 6881),
        pid=lt.sha1_hash(peer_id.ljust(20, b'x')),
        flags=0 if connected else lt.peer_info.connecting,
        total_download=0)


SEEDER = _peer(SEEDER_IP, swarm.SEEDER_FINGERPRINT.encode())
AGENT = _peer('198.18.0.7', swarm.AGENT_FINGERPRINT.encode())


def _fallback_download(seeder_retry=0.2, delay=0.3):
    """A download as far as the seeder fallback goes, on a fake handle."""
    dl = object.__new__(writer._Download)
    dl.meta = types.SimpleNamespace(info_hash='ab' * 20, size=SIZE)
    dl.tuning = writer.Tuning(seeder_retry=seeder_retry)
    dl.bytes = peers.PeerBytes({SEEDER_IP})
    dl.sources = sources.Sources([], [(SEEDER_IP, 6881)], [WEB_SEED])
    dl.fallback = sources.Fallback([WEB_SEED], delay)
    dl.handle = mock.create_autospec(lt.torrent_handle, instance=True)
    dl.plan = None
    dl.using_seeder = True
    dl.web_seeds_added = False
    dl._seeder_tried = time.monotonic()
    dl.reconnect = mock.Mock()
    return dl


def test_a_lost_seeder_is_redialled_every_retry_interval():
    dl = _fallback_download(seeder_retry=0.2, delay=60)
    dl._fall_back([AGENT], needed=True)
    dl.reconnect.assert_not_called()    # tried at the start
    time.sleep(0.25)
    dl._fall_back([AGENT], needed=True)
    assert dl.reconnect.call_count == 1
    dl._fall_back([AGENT], needed=True)
    assert dl.reconnect.call_count == 1
    time.sleep(0.25)
    dl._fall_back([AGENT], needed=True)
    assert dl.reconnect.call_count == 2
    # Still connecting counts as gone.
    time.sleep(0.25)
    dl._fall_back([_peer(SEEDER_IP, b'\0', connected=False)], needed=True)
    assert dl.reconnect.call_count == 3


def test_a_seeder_nobody_needs_is_not_redialled():
    dl = _fallback_download(seeder_retry=0)
    dl._fall_back([AGENT], needed=False)
    dl.reconnect.assert_not_called()
    dl.handle.add_url_seed.assert_not_called()


def test_web_seeds_stand_in_for_a_lost_seeder_until_it_is_back():
    dl = _fallback_download(seeder_retry=60, delay=0.2)
    dl._fall_back([AGENT], needed=True)
    dl.handle.add_url_seed.assert_not_called()
    time.sleep(0.25)
    dl._fall_back([AGENT], needed=True)
    dl.handle.add_url_seed.assert_called_once_with(WEB_SEED)
    assert 'web seed http://198.18.0.1:8080/...: in use' in \
        dl.sources.describe()
    # The seeder is back: the web seeds go.
    dl._fall_back([SEEDER, AGENT], needed=True)
    dl.handle.remove_url_seed.assert_called_once_with(WEB_SEED)
    assert not dl.web_seeds_added
    assert 'not needed any more' in dl.sources.describe()


def _member(ip, peer_id, flags=0):
    return types.SimpleNamespace(
        connection_type=lt.peer_info.standard_bittorrent, ip=(ip, 6881),
        pid=lt.sha1_hash(peer_id.ljust(20, b'x')), flags=flags,
        total_download=0, num_pieces=0, download_queue_length=0,
        local_endpoint=lambda: ('198.18.0.3', 6881))


def test_a_seeder_counts_in_the_availability_once_its_bitfield_is_in():
    # Connected, handshake done, bitfield not in yet: libtorrent's
    # availability does not count the seeder, and neither may the plan.
    # Taking it off anyway made the piece the other agent has look like one
    # only a seed has, and the others look available from a peer: an
    # agent that needed the seeder for its own pieces thought it did not.
    num = 8
    dl = object.__new__(writer._Download)
    dl.meta = types.SimpleNamespace(info_hash='ab' * 20, num_pieces=num)
    dl.tuning = writer.Tuning()
    dl.bytes = peers.PeerBytes({SEEDER_IP})
    dl.plan = pieces.PiecePlan(num)
    dl._held_until = 0
    dl.silence = peers.Silence(1.5)
    dl.redial = peers.Redial(6881)
    dl.handle = mock.create_autospec(lt.torrent_handle, instance=True)
    st = types.SimpleNamespace(pieces=[False] * num, total_payload_download=0,
                               download_payload_rate=0)
    agent = _member('198.18.0.7', swarm.AGENT_FINGERPRINT.encode())
    seeder = _member(SEEDER_IP, swarm.SEEDER_FINGERPRINT.encode())
    dl.handle.piece_availability.return_value = [1] + [0] * (num - 1)
    with mock.patch.object(writer._Download, '_use_seeder', autospec=True):
        needed = dl._share_pieces(st, [seeder, agent])
        prios = dict(dl.handle.prioritize_pieces.call_args.args[0])
        assert prios[0] == pieces.NORMAL
        mine = [p for p in range(1, num) if dl.plan.rank(p) == 0]
        assert mine, 'two members, eight pieces: we own some'
        assert {prios[p] for p in mine} == {pieces.OWN}
        assert needed
        # The bitfield is in: the seeder counts, and nothing changes.
        seeder.flags = lt.peer_info.seed
        dl.handle.piece_availability.return_value = [2] + [1] * (num - 1)
        dl.handle.prioritize_pieces.reset_mock()
        assert dl._share_pieces(st, [seeder, agent])
        dl.handle.prioritize_pieces.assert_not_called()
