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

"""SSL swarms: only holders of a certificate of the authority get bytes.

Real libtorrent sessions on 127.0.0.1: the conductor's seeder, the agent's
writer, and outsiders built the way an attacker on the provisioning network
would build them, each holding what it could have stolen (the .torrent, the
info-hash, a certificate of another authority).
"""

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import libtorrent as lt
import pytest

from ipa_extension import writer
from ironic_bt.common import certs
from ironic_bt.common import sockets
from ironic_bt.common import swarm
from ironic_bt.common import torrent
from ironic_bt import seeder
from tests import bencode
from tests.functional import helpers
from tests.lab import procs

HOUR = datetime.timedelta(hours=1)
#: How long an outsider tries before we count what it got.
ATTEMPT_SECONDS = 6


@pytest.fixture(scope='module')
def authority():
    return certs.Authority.create()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / 'image.raw'
    data = os.urandom(24 * torrent.MIN_PIECE_SIZE + 777)
    path.write_bytes(data)
    return str(path), data, torrent.build(str(path))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def outsider_try(meta, target_dir, port, ssl_credentials=None):
    """An outsider's session that tries to download from 127.0.0.1:port.

    :returns: payload bytes it received, and bytes found in its file.
    """
    session = swarm.make_session('127.0.0.1', 0,
                                 ssl=ssl_credentials is not None)
    params = lt.add_torrent_params()
    params.ti = meta.torrent_info()
    params.save_path = str(target_dir)
    params.flags &= ~(lt.torrent_flags.auto_managed
                      | lt.torrent_flags.paused)
    handle = swarm.add_torrent(session, params, ssl_credentials)
    deadline = time.monotonic() + ATTEMPT_SECONDS
    while time.monotonic() < deadline:
        handle.connect_peer(('127.0.0.1', port))
        time.sleep(0.5)
    got = handle.status().total_payload_download
    session.remove_torrent(handle)
    del session
    on_disk = sum(os.path.getsize(os.path.join(d, f))
                  for d, _dirs, files in os.walk(target_dir) for f in files)
    return got, on_disk


def raw_leech(port, info_hash, blocks=8, timeout=ATTEMPT_SECONDS):
    """Take image bytes with nothing but the info-hash (BEP 3 over TCP).

    No metadata is needed: after the handshake a seed sends its bitfield
    and unchokes, and answers requests for blocks of the first pieces.

    :returns: payload bytes received in piece messages.
    """
    got = 0
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection(('127.0.0.1', port), timeout=2)
    except OSError:
        return 0
    with sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.sendall(b'\x13BitTorrent protocol' + bytes(8)
                         + bytes.fromhex(info_hash) + b'-XX0001-'
                         + os.urandom(12))
            sock.sendall(struct.pack('>IB', 1, 2))   # interested
            for i in range(blocks):
                sock.sendall(struct.pack('>IBIII', 13, 6, i, 0, 16384))
            buf = b''
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) < 68:
                    continue
                # Walk the messages after the 68-byte handshake.
                pos = 68
                got = 0
                while pos + 4 <= len(buf):
                    (length,) = struct.unpack('>I', buf[pos:pos + 4])
                    if length and pos + 5 <= len(buf) and buf[pos + 4] == 7:
                        got += max(0, min(length, len(buf) - pos - 4) - 9)
                    pos += 4 + length
        except OSError:
            pass
    return got


def test_member_writes_the_image_over_ssl(tmp_path, image, authority):
    path, data, meta = image
    with helpers.seeding(meta, path, credentials=authority.credentials(
            'seeder', HOUR)) as seed:
        target = str(tmp_path / 'disk')
        result = helpers.write(
            meta, target, [helpers.address(seed)],
            credentials=authority.credentials('node-1', HOUR))
        assert seed.stats()[meta.info_hash]['uploaded'] == len(data)
    assert helpers.read(target, len(data)) == data
    assert result.sha256 == helpers.sha256(data)


@pytest.mark.parametrize('holds', ['torrent', 'info-hash', 'other-authority'])
def test_outsider_gets_nothing_from_the_seeder(tmp_path, image, authority,
                                               holds):
    path, data, meta = image
    stolen = None
    if holds == 'other-authority':
        stolen = certs.Authority.create('attacker').credentials('x', HOUR)
    with helpers.seeding(meta, path, credentials=authority.credentials(
            'seeder', HOUR)) as seed:
        outsider = tmp_path / 'outsider'
        outsider.mkdir()
        if holds == 'info-hash':
            got, on_disk = raw_leech(seed.port, meta.info_hash), 0
        else:
            got, on_disk = outsider_try(meta, outsider, seed.port,
                                        ssl_credentials=stolen)
        sent = seed.stats()[meta.info_hash]['uploaded']
    assert (got, on_disk, sent) == (0, 0, 0)


def test_member_of_another_images_swarm_gets_nothing(tmp_path, image,
                                                     authority):
    """A tenant's node cannot take another tenant's image from the seeder.

    Each image's swarm has a root of its own, derived from the
    deployment's authority: a certificate from another image's deploy
    (here holding this image's .torrent and its root) gets no byte.
    """
    path, data, meta = image
    root = authority.for_image(meta.info_hash)
    other = authority.for_image('ab' * 20).credentials('node-9', HOUR)
    stolen = certs.Credentials(ca=root.certificate,
                               certificate=other.certificate,
                               private_key=other.private_key)
    seed = seeder.Seeder('127.0.0.1', 0, ssl=True)
    try:
        seed.add(meta, path, verified=True,
                 credentials=root.credentials('seeder', HOUR))
        outsider = tmp_path / 'outsider'
        outsider.mkdir()
        got, on_disk = outsider_try(meta, outsider, seed.port,
                                    ssl_credentials=stolen)
        # A member of this image's swarm gets it from the same seeder.
        result = helpers.write(meta, str(tmp_path / 'disk'),
                               [helpers.address(seed)],
                               credentials=root.credentials('node-1', HOUR))
        sent = seed.stats()[meta.info_hash]['uploaded']
    finally:
        seed.close()
    assert (got, on_disk) == (0, 0)
    assert sent == len(data) == result.size
    assert helpers.read(str(tmp_path / 'disk'), len(data)) == data


def test_outsider_gets_nothing_from_a_lingering_node(tmp_path, image,
                                                     authority):
    """A node that finished seeds to members only; outsiders never hold it.

    The node lingers while incomplete peers are connected; an outsider's
    connection never becomes a peer, so the node stops lingering at once.
    """
    path, data, meta = image
    port = _free_port()
    outcome = {}
    with helpers.seeding(meta, path, credentials=authority.credentials(
            'seeder', HOUR)) as seed:
        def node():
            outcome['result'] = writer.write(
                meta, str(tmp_path / 'disk'),
                peers=[helpers.address(seed)],
                listen_host='127.0.0.1', listen_port=port, create=True,
                linger_timeout=60, stall_timeout=30,
                credentials=authority.credentials('node-1', HOUR))
        thread = threading.Thread(target=node)
        thread.start()
        outsider = tmp_path / 'outsider'
        outsider.mkdir()
        try:
            # Once the node is up (it listens before it downloads).
            time.sleep(1)
            got, on_disk = raw_leech(port, meta.info_hash), 0
        finally:
            thread.join(90)
    assert not thread.is_alive()
    result = outcome['result']
    assert helpers.read(str(tmp_path / 'disk'), len(data)) == data
    assert (got, on_disk, result.uploaded_bytes) == (0, 0, 0)
    # Lingering ended with no incomplete member, long before its limit.
    assert result.linger_seconds < 30


def test_certificate_of_another_authority_is_refused_before_writing(
        tmp_path, image, authority):
    path, data, meta = image
    target = tmp_path / 'disk'
    mine = authority.credentials('node-1', HOUR)
    other = certs.Authority.create('other').credentials('node-1', HOUR)
    mixed = certs.Credentials(ca=mine.ca, certificate=other.certificate,
                              private_key=other.private_key)
    with pytest.raises(writer.DownloadError) as exc:
        helpers.write(meta, str(target), ['127.0.0.1:1'],
                      credentials=mixed)
    assert 'was not issued by the swarm root certificate' in str(exc.value)
    assert meta.info_hash in str(exc.value)
    assert not target.exists()


def test_expired_certificate_is_refused_before_writing(tmp_path, image,
                                                       authority):
    path, data, meta = image
    target = tmp_path / 'disk'
    expired = authority.credentials('node-1', -certs.CLOCK_SKEW / 2)
    with pytest.raises(writer.DownloadError) as exc:
        helpers.write(meta, str(target), ['127.0.0.1:1'],
                      credentials=expired)
    assert 'check the clocks' in str(exc.value)
    assert not target.exists()


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, '-m', 'ironic_bt.cmd.cli']
                          + list(args), capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_cli_ssl_swarm(tmp_path, image):
    """ironic-bt certificate, seed --ssl-authority, write --ssl-credentials."""
    path, data, meta = image
    torrent_file = tmp_path / 'image.torrent'
    torrent_file.write_bytes(meta.data)
    authority = tmp_path / 'authority'
    creds = tmp_path / 'node-1.pem'
    out = _cli('certificate', str(authority), 'node-1', '-o', str(creds))
    assert out.returncode == 0, out.stderr
    assert oct(os.stat(creds).st_mode & 0o777) == '0o600'
    port = _free_port()
    seed = subprocess.Popen(
        [sys.executable, '-m', 'ironic_bt.cmd.cli', 'seed',
         str(torrent_file), path, '--listen', '127.0.0.1:%d' % port,
         '--trust-image', '--ssl-authority', str(authority),
         '--duration', '60'], stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(seed.stdout.readline())
        assert ready['listen'] == '127.0.0.1:%d' % port
        target = tmp_path / 'disk'
        out = _cli('write', str(torrent_file), str(target), '--create',
                   '--peer', '127.0.0.1:%d' % port, '--listen',
                   '127.0.0.1:0', '--linger', '0', '--json',
                   '--ssl-credentials', str(creds))
        assert out.returncode == 0, out.stderr
        assert helpers.read(str(target), len(data)) == data
        # A member of another authority gets nothing, and is told why
        # nothing came (no source reachable), not a disk error.
        other = tmp_path / 'other.pem'
        assert _cli('certificate', str(tmp_path / 'other-authority'),
                    'evil', '-o', str(other)).returncode == 0
        out = _cli('write', str(torrent_file), str(tmp_path / 'stolen'),
                   '--create', '--peer', '127.0.0.1:%d' % port,
                   '--listen', '127.0.0.1:0', '--linger', '0',
                   '--unreachable-timeout', '5',
                   '--ssl-credentials', str(other))
        assert out.returncode == 1
        assert 'made no progress' in out.stderr
        # Not a byte of the (random) image: only zeros, if anything.
        stolen = tmp_path / 'stolen'
        assert not stolen.exists() or set(stolen.read_bytes()) <= {0}
    finally:
        seed.terminate()
        seed.wait(30)


@contextlib.contextmanager
def _cli_service(*args):
    """Run an ironic-bt command that serves until stopped.

    :yields: the JSON line it prints once it is ready.
    """
    proc = subprocess.Popen([sys.executable, '-m', 'ironic_bt.cmd.cli']
                            + list(args), stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(30)


def _raw_announce(url, meta, port=51413):
    """A standard client's announce: what an outsider can send.

    Percent-encoded as BitTorrent clients do: quote_plus would turn a 0x20
    byte of the info-hash into '+', which the tracker reads as '+'.
    """
    query = urllib.parse.urlencode({
        'info_hash': meta.info_hash_v1, 'peer_id': b'-XX0000-000000051413',
        'port': port, 'uploaded': 0, 'downloaded': 0, 'left': meta.size,
        'compact': 1}, quote_via=urllib.parse.quote)
    sep = '&' if '?' in url else '?'
    with urllib.request.urlopen(url + sep + query, timeout=10) as response:
        return bencode.decode(response.read())


def test_cli_tracker_serves_only_keyed_announcers(tmp_path, image):
    """seed --ssl-authority --with-tracker, certificate --announce-url."""
    path, data, meta = image
    torrent_file = tmp_path / 'image.torrent'
    torrent_file.write_bytes(meta.data)
    authority = tmp_path / 'authority'
    # Port 0: the seeder and its tracker bind free ports and say which.
    with _cli_service('seed', str(torrent_file), path, '--listen',
                      '127.0.0.1:0', '--trust-image', '--ssl-authority',
                      str(authority), '--with-tracker', '127.0.0.1:0',
                      '--interval', '2', '--duration', '60') as ready:
        assert ready['info_hash'] == meta.info_hash
        # The seeder announces with its own key, never shown without one.
        assert all('auth=' in url for url in ready['trackers'])
        tracker = ready['trackers'][0].split('?')[0]
        creds = tmp_path / 'node-1.pem'
        out = _cli('certificate', str(authority), 'node-1', '-o', str(creds),
                   '--announce-url', tracker, '--torrent', str(torrent_file))
        assert out.returncode == 0, out.stderr
        node_url = json.loads(out.stdout)['announce_url']
        assert 'node=node-1' in node_url and 'auth=' in node_url
        # An outsider with the info-hash gets a failure and no peers.
        reply = _raw_announce(tracker, meta)
        assert b'failure reason' in reply and b'peers' not in reply
        # So does one that borrows another node's key.
        reply = _raw_announce(node_url.replace('node=node-1', 'node=node-2'),
                              meta)
        assert b'failure reason' in reply and b'peers' not in reply
        # The node with its key finds the seeder through the tracker alone.
        target = tmp_path / 'disk'
        out = _cli('write', str(torrent_file), str(target), '--create',
                   '--tracker', node_url, '--listen', '127.0.0.1:0',
                   '--linger', '0', '--json', '--ssl-credentials', str(creds))
        assert out.returncode == 0, out.stderr
        assert helpers.read(str(target), len(data)) == data


def test_cli_standalone_tracker_with_authority(tmp_path, image):
    _path, _data, meta = image
    torrent_file = tmp_path / 'image.torrent'
    torrent_file.write_bytes(meta.data)
    authority = tmp_path / 'authority'
    with _cli_service('tracker', '--listen', '127.0.0.1:0', '--torrent',
                      str(torrent_file), '--ssl-authority',
                      str(authority)) as ready:
        assert ready['announce_keys'] is True
        assert ready['info_hashes'] == [meta.info_hash]
        url = ready['announce']
        reply = _raw_announce(url, meta)
        assert b'failure reason' in reply and b'peers' not in reply
        out = _cli('certificate', str(authority), 'node-7', '-o',
                   str(tmp_path / 'node-7.pem'), '--announce-url', url,
                   '--torrent', str(torrent_file))
        assert out.returncode == 0, out.stderr
        reply = _raw_announce(json.loads(out.stdout)['announce_url'], meta)
        assert b'failure reason' not in reply and b'peers' in reply


def test_seeder_stops_cleanly_with_handshakes_in_flight(tmp_path, image):
    """A seeder stops cleanly with TLS handshakes that never finish.

    A neighbour that connects and says nothing, or an agent dialling as
    the seeder stops, leaves a handshake pending; libtorrent 2.1.1 frees
    its socket under it when the session is destroyed (glibc aborts with
    "corrupted size vs. prev_size"), so SslPort.close ends them first.
    """
    path, _data, meta = image
    torrent_file = tmp_path / 'image.torrent'
    torrent_file.write_bytes(meta.data)
    proc = subprocess.Popen(
        [sys.executable, '-m', 'ironic_bt.cmd.cli', 'seed',
         str(torrent_file), path, '--listen', '127.0.0.1:0', '--trust-image',
         '--ssl-authority', str(tmp_path / 'authority'),
         '--duration', '60'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    silent = []
    try:
        ready = json.loads(proc.stdout.readline())
        port = int(ready['listen'].rsplit(':', 1)[1])
        silent = [socket.create_connection(('127.0.0.1', port), timeout=5)
                  for _i in range(50)]
        # Accepted by libtorrent (its TLS handshake now waits on them).
        time.sleep(1)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        for sock in silent:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert 'uploaded_bytes' in out


def _silent_connections(port, count, timeout=30):
    """``count`` TCP connections to port that never say a word."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            first = socket.create_connection(('127.0.0.1', port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return [first] + [socket.create_connection(('127.0.0.1', port),
                                               timeout=5)
                      for _i in range(count - 1)]


def test_writer_exits_cleanly_with_handshakes_in_flight(tmp_path, image):
    """A writer exits cleanly with TLS handshakes that never finish.

    The agent side of the same: the node still writes, verifies and exits
    0 (inside IPA, the abort would take the agent down).
    """
    path, data, meta = image
    torrent_file = tmp_path / 'image.torrent'
    torrent_file.write_bytes(meta.data)
    authority = tmp_path / 'authority'
    creds = tmp_path / 'node-1.pem'
    assert _cli('certificate', str(authority), 'node-1', '-o',
                str(creds)).returncode == 0
    seed_port, node_port = _free_port(), _free_port()
    target = tmp_path / 'disk'
    # The writer starts first: it waits for its seeder while the silent
    # connections reach it.
    write = subprocess.Popen(
        [sys.executable, '-m', 'ironic_bt.cmd.cli', 'write',
         str(torrent_file), str(target), '--create', '--peer',
         '127.0.0.1:%d' % seed_port, '--listen', '127.0.0.1:%d' % node_port,
         '--linger', '0', '--json', '--ssl-credentials', str(creds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    silent, seed = [], None
    try:
        silent = _silent_connections(node_port, 50)
        seed = subprocess.Popen(
            [sys.executable, '-m', 'ironic_bt.cmd.cli', 'seed',
             str(torrent_file), path, '--listen', '127.0.0.1:%d' % seed_port,
             '--trust-image', '--ssl-authority', str(authority),
             '--duration', '60'], stdout=subprocess.PIPE, text=True)
        out, err = write.communicate(timeout=120)
    finally:
        for sock in silent:
            sock.close()
        for proc in (write, seed):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    assert write.returncode == 0, err[-2000:]
    assert json.loads(out.splitlines()[-1])['sha256'] == \
        hashlib.sha256(data).hexdigest()
    assert helpers.read(str(target), len(data)) == data


def test_seeder_closes_connections_that_never_finish_a_handshake(
        tmp_path, image, authority, caplog):
    """Silent neighbours cannot pile up connections at the seeder.

    libtorrent keeps incoming SSL connections in their TLS handshake with
    no time limit and no cap; each held a descriptor of the conductor for
    as long as the seeder ran. The seeder closes them; a node in the
    swarm meanwhile writes its image as ever.
    """
    path, data, meta = image
    seed = seeder.Seeder('127.0.0.1', 0, ssl=True, handshake_limit=1)
    silent = []
    try:
        seed.add(meta, path, verified=True,
                 credentials=authority.credentials('seeder', HOUR))
        silent = _silent_connections(seed.port, 20)
        with caplog.at_level(logging.WARNING, logger='ironic_bt.common'):
            target = str(tmp_path / 'disk')
            result = helpers.write_from(
                seed, meta, target,
                credentials=authority.credentials('node-1', HOUR))
            assert result.sha256 == helpers.sha256(data)

            def all_closed():
                return all(_closed_by_peer(sock) for sock in silent)
            procs.wait_for(all_closed, 1 + sockets.HANDSHAKE_CHECK_INTERVAL
                           + 5, 0.2, 'the seeder to close them')
    finally:
        for sock in silent:
            sock.close()
        seed.close()
    warnings = [r.getMessage() for r in caplog.records
                if 'were not peers' in r.getMessage()]
    assert warnings and 'from 127.0.0.1' in warnings[0], warnings


def _closed_by_peer(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) == b''
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
