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

"""Tests for the tracker's HTTP server, over real HTTP."""

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import libtorrent as lt
import pytest

from ironic_bt.tracker import protocol
from ironic_bt.tracker import server
from ironic_bt.tracker import swarm_table
from tests import bencode
from tests.lab import procs
from tests.unit.common import hybrid

V1 = bytes(range(0x20, 0x34))
V2 = bytes(range(0x3d, 0x51))


@pytest.fixture
def table():
    table = swarm_table.SwarmTable(interval=10)
    table.publish([V1, V2], 'image-a')
    return table


def start(table, host):
    tracker = server.TrackerServer(table, host=host, port=0)
    tracker.start()
    return tracker


@pytest.fixture
def tracker(table):
    tracker = start(table, '127.0.0.1')
    yield tracker
    tracker.stop()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers['Content-Type'], \
            response.read()


def announce(tracker, info_hash=V1, port=6881, left=100, host='127.0.0.1',
             extra=''):
    q = 'info_hash=%s&peer_id=%s&port=%d&uploaded=0&downloaded=0&left=%d' % (
        urllib.parse.quote_from_bytes(info_hash, safe=''),
        urllib.parse.quote_from_bytes(b'-LT2110-%012d' % port, safe=''),
        port, left)
    status, ctype, body = get(tracker.announce_url(host) + '?' + q + extra)
    assert (status, ctype) == (200, 'text/plain')
    return bencode.decode(body)


def test_unpublished_hash_gets_failure_reason(tracker):
    assert announce(tracker, info_hash=b'\xaa' * 20) == {
        b'failure reason': b'unknown info_hash ' + b'aa' * 20
        + b': this tracker only serves images published by this '
          b'ironic-bt deployment'}


def test_malformed_announce_gets_failure_reason(tracker):
    status, ctype, body = get(tracker.announce_url('127.0.0.1')
                              + '?info_hash=short')
    assert (status, ctype) == (200, 'text/plain')
    assert body == protocol.failure(
        'invalid parameter info_hash: must be 20 bytes, got 5')


def test_announce_returns_other_announcer(tracker):
    first = announce(tracker, port=7001, extra='&node=node-1')
    assert first[b'peers'] == b''
    second = announce(tracker, port=7002)
    assert second == {b'complete': 0, b'incomplete': 2, b'interval': 10,
                      b'min interval': 10,
                      b'peers': b'\x7f\x00\x00\x01\x1b\x59'}   # :7001


def test_ipv6_tracker_returns_peers6(table):
    tracker = start(table, '::1')
    try:
        assert tracker.announce_url('::1') == (
            'http://[::1]:%d/announce' % tracker.port)
        announce(tracker, port=7001, host='::1')
        reply = announce(tracker, port=7002, host='::1')
    finally:
        tracker.stop()
    assert reply[b'peers'] == b''
    assert reply[b'peers6'] == b'\x00' * 15 + b'\x01' + (7001).to_bytes(
        2, 'big')


def test_scrape(tracker):
    announce(tracker, left=0, info_hash=V2)
    announce(tracker, port=7002, info_hash=V2)
    announce(tracker, port=7003)
    unknown = b'\xaa' * 20
    q = '&'.join('info_hash=' + urllib.parse.quote_from_bytes(key, safe='')
                 for key in (V2, unknown))
    url = 'http://127.0.0.1:%d/scrape?%s' % (tracker.port, q)
    status, ctype, body = get(url)
    assert (status, ctype) == (200, 'text/plain')
    assert bencode.decode(body) == {b'files': {
        V2: {b'complete': 1, b'downloaded': 0, b'incomplete': 1}}}


def test_status_json(tracker):
    announce(tracker, left=42, extra='&node=node-1')
    status, ctype, body = get('http://127.0.0.1:%d/status' % tracker.port)
    assert (status, ctype) == (200, 'application/json')
    [swarm] = json.loads(body)['swarms']
    assert swarm['name'] == 'image-a'
    assert swarm['info_hashes'] == [V1.hex(), V2.hex()]
    assert [(p['ip'], p['port'], p['node'], p['left'])
            for p in swarm['peers']] == [('127.0.0.1', 6881, 'node-1', 42)]


@pytest.mark.parametrize('path', ['/', '/announce/extra', '/statusx'])
def test_other_paths_are_not_found(tracker, path):
    with pytest.raises(urllib.error.HTTPError) as exc:
        get('http://127.0.0.1:%d%s' % (tracker.port, path))
    exc.value.close()
    assert exc.value.code == 404


def test_stop_frees_the_port(table):
    tracker = start(table, '127.0.0.1')
    port = tracker.port
    tracker.stop()
    with pytest.raises(urllib.error.URLError):
        get('http://127.0.0.1:%d/status' % port)
    # Stopping a server that never started does not hang.
    server.TrackerServer(table, host='127.0.0.1', port=0).stop()


def _peers_once(session, table, alerts, condition):
    """The tracker's peers once ``condition(peers)`` holds (10 s at most).

    The session's alerts are collected into ``alerts`` meanwhile.
    """
    def peers():
        alerts.extend(a.message() for a in session.pop_alerts())
        now = table.status()['swarms'][0]['peers']
        return (now,) if condition(now) else None
    return procs.wait_for(peers, 10, 0.05, 'the tracker\'s peers')[0]


def test_libtorrent_seed_announces_hybrid_torrent(tmp_path):
    info, (v1, v2) = hybrid.torrent(tmp_path)
    assert v1 != v2   # a hybrid torrent, announced under both keys

    table = swarm_table.SwarmTable(interval=10)
    table.publish([v1, v2], 'image.raw')
    tracker = start(table, '127.0.0.1')
    session = lt.session({
        'listen_interfaces': '127.0.0.1:0',
        'enable_dht': False, 'enable_lsd': False,
        'enable_upnp': False, 'enable_natpmp': False,
        'webtorrent_stun_server': '',
        'alert_mask': lt.alert_category.tracker | lt.alert_category.error,
    })
    try:
        params = lt.add_torrent_params()
        params.ti = info
        params.save_path = str(tmp_path)
        params.flags |= lt.torrent_flags.seed_mode
        params.trackers = [tracker.announce_url('127.0.0.1') + '?node=seed']
        handle = session.add_torrent(params)

        alerts = []
        # Both announces (v1 and v2) are answered and merged into one
        # peer: the seed itself, on its listening port, with nothing left.
        peers = _peers_once(session, table, alerts, lambda peers: sum(
            'received peers' in text for text in alerts) == 2)
        assert [(p['ip'], p['port'], p['node'], p['left'], p['event'])
                for p in peers] == [('127.0.0.1', session.listen_port(),
                                     'seed', 0, 'started')], alerts
        # Removing the torrent announces "stopped", which drops the peer.
        session.remove_torrent(handle)
        assert _peers_once(session, table, alerts,
                           lambda peers: not peers) == [], alerts
        assert not [text for text in alerts if 'error' in text], alerts
    finally:
        del session
        tracker.stop()


# The HTTP server itself, over raw sockets.

ANNOUNCE = ('/announce?info_hash=%s&peer_id=-LT2110-000000000001&port=6881'
            '&left=100' % urllib.parse.quote_from_bytes(V1, safe=''))


def raw(tracker, data, timeout=5):
    """Send ``data`` on a fresh connection; return all bytes received."""
    sock = socket.create_connection(('127.0.0.1', tracker.port), timeout)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b''.join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


def replies(data):
    """Split pipelined HTTP replies into (status line, headers, body)."""
    out = []
    while data:
        head, _sep, data = data.partition(b'\r\n\r\n')
        lines = head.split(b'\r\n')
        headers = dict(line.split(b': ', 1) for line in lines[1:])
        length = int(headers[b'Content-Length'])
        out.append((lines[0], headers, data[:length]))
        data = data[length:]
    return out


def test_keep_alive_and_pipelining(tracker):
    request = ('GET %s HTTP/1.1\r\nHost: t\r\n\r\n' % ANNOUNCE).encode()
    got = replies(raw(tracker, request * 3))
    assert [r[0] for r in got] == [b'HTTP/1.1 200 OK'] * 3
    assert all(b'Connection' not in r[1] for r in got)
    assert bencode.decode(got[2][2])[b'incomplete'] == 1


def test_http_1_0_closes_unless_keep_alive(tracker):
    request = ('GET %s HTTP/1.0\r\n\r\n' % ANNOUNCE).encode()
    got = replies(raw(tracker, request * 2))
    assert len(got) == 1
    assert got[0][1][b'Connection'] == b'close'


def test_absolute_form_target(tracker):
    request = ('GET http://127.0.0.1:%d%s HTTP/1.1\r\n\r\n'
               % (tracker.port, ANNOUNCE)).encode()
    (status, _h, body), = replies(raw(tracker, request))
    assert status == b'HTTP/1.1 200 OK'
    assert b'interval' in bencode.decode(body)


@pytest.mark.parametrize('request_bytes, status, reason', [
    (b'POST /announce HTTP/1.1\r\nContent-Length: 0\r\n\r\n',
     b'HTTP/1.1 405 Method Not Allowed', b'only GET'),
    (b'GET /announce\r\n\r\n', b'HTTP/1.1 400 Bad Request',
     b'malformed request line'),
    (b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n',
     b'HTTP/1.1 400 Bad Request', b'malformed request line'),
    (b'GET /announce HTTP/2.0\r\n\r\n',
     b'HTTP/1.1 505 HTTP Version Not Supported', b'only HTTP/1.0'),
    (b'GET /announce HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello',
     b'HTTP/1.1 413 Content Too Large', b'request bodies'),
    (b'GET /announce HTTP/1.1\r\nbad header\r\n\r\n',
     b'HTTP/1.1 400 Bad Request', b'malformed header line'),
    (b'GET /x HTTP/1.1\r\nX: ' + b'a' * 9000 + b'\r\n\r\n',
     b'HTTP/1.1 431 Request Header Fields Too Large', b'exceed 8192'),
])
def test_bad_requests_get_a_status_line_and_a_bencoded_reason(
        tracker, request_bytes, status, reason):
    (line, headers, body), = replies(raw(tracker, request_bytes))
    assert line == status
    assert reason in bencode.decode(body)[b'failure reason']
    if b'405' in status:
        assert headers[b'Allow'] == b'GET'


def test_slow_sender_times_out(table):
    tracker = server.TrackerServer(table, host='127.0.0.1', port=0,
                                   request_timeout=0.3, idle_timeout=0.3)
    tracker.start()
    try:
        sock = socket.create_connection(('127.0.0.1', tracker.port), 5)
        sock.sendall(b'GET /announce?info')
        start = time.monotonic()
        data = sock.recv(65536)
        assert time.monotonic() - start < 3
        assert data.startswith(b'HTTP/1.1 408 Request Timeout')
        # An idle connection is closed without a word.
        idle = socket.create_connection(('127.0.0.1', tracker.port), 5)
        assert idle.recv(10) == b''
        sock.close()
        idle.close()
    finally:
        tracker.stop()


def test_idle_connections_cannot_lock_nodes_out(table):
    tracker = server.TrackerServer(table, host='127.0.0.1', port=0,
                                   max_connections=8)
    tracker.start()
    held = []
    try:
        for _ in range(50):
            sock = socket.create_connection(('127.0.0.1', tracker.port), 5)
            sock.sendall(b'GET /announce?half-sent')
            held.append(sock)
        start = time.monotonic()
        status, _ctype, body = get(tracker.announce_url('127.0.0.1')
                                   + ANNOUNCE[len('/announce'):])
        assert time.monotonic() - start < 1
        assert status == 200 and b'interval' in body
        # Only max_connections stayed open: the quietest were closed.
        open_ = 0
        for sock in held:
            sock.settimeout(0.05)
            try:
                open_ += sock.recv(1) != b''
            except socket.timeout:
                open_ += 1
            except ConnectionResetError:
                pass
        assert open_ <= 8
    finally:
        for sock in held:
            sock.close()
        tracker.stop()


def test_names_are_never_resolved(table):
    # A host name would need DNS: refused at once, never looked up.
    with pytest.raises(socket.gaierror):
        server.TrackerServer(table, host='tracker.invalid', port=0)


def _status_from(tracker, source, token=None):
    """GET /status from ``source`` (an address of this host)."""
    sock = socket.create_connection(('127.0.0.1', tracker.port), 5,
                                    source_address=(source, 0))
    extra = 'X-Status-Token: %s\r\n' % token if token else ''
    sock.sendall(('GET /status HTTP/1.1\r\n%sConnection: close\r\n\r\n'
                  % extra).encode())
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return replies(data)[0]


def test_status_is_for_this_host_or_the_token(table):
    tracker = server.TrackerServer(table, host='0.0.0.0', port=0,
                                   status_token='s3cret')
    tracker.start()
    try:
        # From loopback: the tracker's own host.
        line, _h, body = _status_from(tracker, '127.0.0.1')
        assert line == b'HTTP/1.1 200 OK'
        assert 'swarms' in json.loads(body)
    finally:
        tracker.stop()


def test_status_refused_to_other_hosts_without_the_token(table):
    router = server._Router(table, status_token='s3cret')
    head = b'GET /status HTTP/1.1'
    code, _ctype, body, _close, _extra = router.respond(
        head, '198.18.0.7', '198.18.0.1')
    assert code == 403
    assert b'X-Status-Token' in bencode.decode(body)[b'failure reason']
    code, _ctype, _body, _close, _extra = router.respond(
        head + b'\r\nX-Status-Token: wrong', '198.18.0.7', '198.18.0.1')
    assert code == 403
    code, _ctype, body, _close, _extra = router.respond(
        head + b'\r\nX-Status-Token: s3cret', '198.18.0.7', '198.18.0.1')
    assert code == 200 and 'swarms' in json.loads(body)
    # The conductor's own host, through its provisioning address.
    code, _ctype, _body, _close, _extra = router.respond(
        head, '198.18.0.1', '198.18.0.1')
    assert code == 200
    # Without a configured token, nothing opens it.
    code, _ctype, _body, _close, _extra = server._Router(table).respond(
        head + b'\r\nX-Status-Token: ', '198.18.0.7', '198.18.0.1')
    assert code == 403
    # Announces stay open to all.
    code, _ctype, _body, _close, _extra = router.respond(
        b'GET ' + ANNOUNCE.encode() + b' HTTP/1.1', '198.18.0.7',
        '198.18.0.1')
    assert code == 200
