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

"""The UDP tracker (BEP 15): the codec, and a real socket."""

import socket
import struct
import time
from unittest import mock

import libtorrent as lt
import pytest

from ironic_bt.common import swarm
from ironic_bt.tracker import protocol
from ironic_bt.tracker import server
from ironic_bt.tracker import swarm_table
from ironic_bt.tracker import udp
from tests.lab import procs
from tests.unit.common import hybrid

V1 = bytes(range(0x20, 0x34))
V2 = bytes(range(0x3d, 0x51))
UNKNOWN = b'\xee' * 20


class Clock:
    now = 100000.0

    def __call__(self):
        return self.now


@pytest.fixture
def table():
    table = swarm_table.SwarmTable(interval=10)
    table.publish([V1, V2], 'image-a')
    return table


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tracker(table, clock):
    return udp.UdpTracker(table, clock=clock, secret=b's' * 32)


def connect(tracker, ip='198.18.0.2', port=6881, txid=7):
    reply = tracker.handle(struct.pack('>QII', udp.PROTOCOL_ID, udp.CONNECT,
                                       txid), ip, port)
    action, got_txid, cid = struct.unpack('>IIQ', reply)
    assert (action, got_txid) == (udp.CONNECT, txid)
    return cid


def announce(tracker, cid, ip='198.18.0.2', port=6881, info_hash=V1,
             left=100, event=2, numwant=-1, options=b'', txid=9,
             peer_port=6881):
    packet = struct.pack('>QII20s20sQQQIIIiH', cid, udp.ANNOUNCE, txid,
                         info_hash, b'-LT2110-000000000001', 0, left, 0,
                         event, 0, 0xdeadbeef, numwant, peer_port) + options
    return tracker.handle(packet, ip, port)


def decode_announce(reply):
    action, txid, interval, leechers, seeders = struct.unpack_from(
        '>IIIII', reply)
    peers = reply[20:]
    return action, txid, interval, leechers, seeders, {
        ('%d.%d.%d.%d' % tuple(peers[i:i + 4]),
         int.from_bytes(peers[i + 4:i + 6], 'big'))
        for i in range(0, len(peers), 6)}


def test_connect_then_announce(tracker):
    cid = connect(tracker)
    decode_announce(announce(tracker, cid))
    cid3 = connect(tracker, ip='198.18.0.3')
    action, txid, interval, leechers, seeders, peers = decode_announce(
        announce(tracker, cid3, ip='198.18.0.3'))
    assert (action, txid, interval, leechers, seeders) == (
        udp.ANNOUNCE, 9, 10, 2, 0)
    assert peers == {('198.18.0.2', 6881)}


def test_connection_id_is_bound_to_address_and_expires(tracker, clock):
    cid = connect(tracker)
    # Another address (a spoofed one) gets no answer at all: replying
    # would make the tracker an amplifier.
    assert announce(tracker, cid, ip='198.18.0.99') is None
    assert announce(tracker, cid, port=6882) is None
    assert announce(tracker, 12345) is None
    clock.now += udp.ID_WINDOW
    assert announce(tracker, cid) is not None
    clock.now += 2 * udp.ID_WINDOW
    assert announce(tracker, cid) is None


def test_node_from_bep41_url_data(table, tracker):
    cid = connect(tracker)
    path = b'/announce?node=1be26c0b-03f2-4d2d-ae87-c02d7f33c123'
    # Split over two URL data options, as BEP 41 allows.
    options = (b'\x02' + bytes([10]) + path[:10] + b'\x01'
               + b'\x02' + bytes([len(path) - 10]) + path[10:] + b'\x00')
    announce(tracker, cid, options=options)
    peer, = table.status()['swarms'][0]['peers']
    assert peer['node'] == '1be26c0b-03f2-4d2d-ae87-c02d7f33c123'


def test_stopped_and_completed(table, tracker):
    cid = connect(tracker)
    announce(tracker, cid, event=2)
    announce(tracker, cid, event=1, left=0)
    reply = decode_announce(announce(tracker, connect(tracker, '198.18.0.3'),
                                     ip='198.18.0.3'))
    assert reply[3:5] == (1, 1)
    announce(tracker, cid, event=3)
    assert table.scrape_counts([V1])[V1] == (0, 1, 1)


def test_errors_name_the_problem(tracker):
    cid = connect(tracker)
    for kwargs, reason in [
            ({'info_hash': UNKNOWN}, b'unknown info_hash eeee'),
            ({'event': 9}, b'invalid event 9'),
            ({'peer_port': 0}, b'invalid port 0'),
    ]:
        reply = announce(tracker, cid, **kwargs)
        action, txid = struct.unpack_from('>II', reply)
        assert (action, txid) == (udp.ERROR, 9)
        assert reply[8:].startswith(reason), reply
    short = tracker.handle(struct.pack('>QII', cid, udp.ANNOUNCE, 5) + b'x',
                           '198.18.0.2', 6881)
    assert short[8:].startswith(b'announce of 17 bytes')
    # Junk too short to hold a transaction ID: silence.
    assert tracker.handle(b'\x00' * 15, '198.18.0.2', 6881) is None
    assert tracker.handle(struct.pack('>QII', 1, udp.CONNECT, 1),
                          '198.18.0.2', 6881) is None


def test_scrape(tracker):
    cid = connect(tracker)
    announce(tracker, cid)
    reply = tracker.handle(struct.pack('>QII', cid, udp.SCRAPE, 4) + V1
                           + UNKNOWN, '198.18.0.2', 6881)
    assert struct.unpack('>II' + 'III' * 2, reply) == (
        udp.SCRAPE, 4, 0, 0, 1, 0, 0, 0)


def test_real_socket_beside_http(table):
    tracker = server.TrackerServer(table, host='127.0.0.1', port=0,
                                   udp_port=0)
    tracker.start()
    try:
        assert tracker.udp_announce_url('127.0.0.1') == (
            'udp://127.0.0.1:%d/announce' % tracker.udp_port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        addr = ('127.0.0.1', tracker.udp_port)
        sock.sendto(struct.pack('>QII', udp.PROTOCOL_ID, udp.CONNECT, 1),
                    addr)
        _action, _txid, cid = struct.unpack('>IIQ', sock.recv(64))
        sock.sendto(struct.pack('>QII20s20sQQQIIIiH', cid, udp.ANNOUNCE, 2,
                                V1, b'-LT2110-000000000001', 0, 5, 0, 2, 0,
                                0, 50, 7000), addr)
        action, txid, interval, leechers, seeders = struct.unpack(
            '>IIIII', sock.recv(2048))
        assert (action, txid, interval, leechers, seeders) == (
            udp.ANNOUNCE, 2, 10, 1, 0)
        sock.close()
    finally:
        tracker.stop()


def _seed_in_tiers(tmp_path, info, trackers):
    """A libtorrent seed announcing as node n1 to ``trackers``, in tiers.

    As the writer sets it: each tracker a tier of its own, in order of
    preference, the next one used only if the one before fails.
    :returns: the session and the torrent's handle.
    """
    session = swarm.make_session('127.0.0.1', 0, announce_to_all_tiers=False,
                                 announce_to_all_trackers=False)
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = str(tmp_path)
    params.flags |= lt.torrent_flags.seed_mode
    params.trackers = [url + '?node=n1' for url in trackers]
    params.tracker_tiers = list(range(len(trackers)))
    return session, session.add_torrent(params)


def test_libtorrent_announces_over_udp_first(tmp_path):
    """A real libtorrent client, with the UDP and HTTP URLs as tiers."""
    info, keys = hybrid.torrent(tmp_path)
    table = swarm_table.SwarmTable(interval=2)
    table.publish(keys, 'image.raw')
    tracker = server.TrackerServer(table, host='127.0.0.1', port=0,
                                   udp_port=0)
    tracker.start()
    # Only the HTTP tracker parses announce queries.
    http = mock.patch.object(protocol, 'parse_announce', autospec=True,
                             side_effect=protocol.parse_announce)
    http_parse = http.start()
    record = mock.patch.object(table, 'record', autospec=True,
                               side_effect=table.record)
    udp_record = record.start()
    session = None
    try:
        session, handle = _seed_in_tiers(
            tmp_path, info, [tracker.udp_announce_url('127.0.0.1'),
                             tracker.announce_url('127.0.0.1')])
        procs.wait_for(lambda: udp_record.call_count >= 2, 10, 0.05,
                       'two announces over UDP')
        # The node label came over UDP, in BEP 41 URL data.
        assert {call.args[0].node
                for call in udp_record.call_args_list} == {'n1'}
        # HTTP, the second tier, was not needed.
        time.sleep(0.5)
        assert not http_parse.called
        assert handle.is_valid()
    finally:
        record.stop()
        http.stop()
        del session
        tracker.stop()


def test_libtorrent_falls_back_to_http(tmp_path):
    info, keys = hybrid.torrent(tmp_path)
    table = swarm_table.SwarmTable(interval=2)
    table.publish(keys, 'x')
    tracker = server.TrackerServer(table, host='127.0.0.1', port=0)
    tracker.start()
    # A UDP port nobody answers on (a firewall that drops UDP).
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(('127.0.0.1', 0))
    session = None
    try:
        session, _handle = _seed_in_tiers(
            tmp_path, info,
            [udp.announce_url('127.0.0.1', closed.getsockname()[1]),
             tracker.announce_url('127.0.0.1')])
        peers = procs.wait_for(
            lambda: table.status()['swarms'][0]['peers'], 60, 0.1,
            'an announce over HTTP')
        assert [p['node'] for p in peers] == ['n1']
    finally:
        del session
        closed.close()
        tracker.stop()
