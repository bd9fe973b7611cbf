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

"""The tracker under load and under abuse, on loopback.

The product's own tracker (:class:`ironic_bt.tracker.server.TrackerServer`
over a :class:`~ironic_bt.tracker.swarm_table.SwarmTable`) runs in a child
process, as in a conductor; the load comes from this process, each client
from an address of its own in 127.0.0.0/8, so one swarm holds ``--peers``
distinct peers. Nothing leaves the machine.

``python -m tests.lab.bench_tracker`` measures announces per second over
HTTP/1.1 keep-alive, latency percentiles and the tracker's CPU time per
announce, at ``--clients`` concurrent clients. ``--abuse`` then holds
``--idle`` idle connections open and sends ``--fuzz`` malformed requests
while one client keeps announcing, and reports the slowest valid announce
and the tracker's peak RSS. One JSON line ends the output.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import sys
import time
import urllib.parse

from tests.lab import bench_metrics

INFO_HASH = bytes(range(0x20, 0x34))


#: The announce secret with ``--keys`` (a conductor derives its own).
SECRET = b'bench announce secret, 32 bytes!'


def _key(peer):
    from ironic_bt.common import publication
    return publication.announce_key(SECRET, 'n%d' % peer, INFO_HASH)


def _serve(port_pipe, interval, keys=False):
    from ironic_bt.tracker import server
    from ironic_bt.tracker import swarm_table
    # With keys, as the conductor's tracker runs with SSL swarms (the
    # default): every announce carries its node's key, checked.
    table = swarm_table.SwarmTable(interval=interval, max_peers=20000,
                                   announce_secret=SECRET if keys else None)
    table.publish([INFO_HASH], 'bench', size=1 << 30)
    tracker = server.TrackerServer(table, host='127.0.0.1', port=0,
                                   udp_port=0)
    tracker.start()
    port_pipe.send((tracker.port, tracker.udp_port))
    port_pipe.recv()   # until told to stop
    tracker.stop()


def _announce(peer, left=1000, keys=False):
    query = ('info_hash=%s&peer_id=%s&port=%d&uploaded=0&downloaded=0'
             '&left=%d&numwant=50&compact=1') % (
        urllib.parse.quote_from_bytes(INFO_HASH, safe=''),
        urllib.parse.quote_from_bytes(b'-BE0001-%012d' % peer, safe=''),
        6881 + peer % 1000, left)
    if keys:
        query += '&node=n%d&auth=%s' % (peer, _key(peer))
    return ('GET /announce?%s HTTP/1.1\r\nHost: bench\r\n\r\n'
            % query).encode()


def _address(i):
    return '127.%d.%d.%d' % (1 + i // 65536 % 250, i // 256 % 256,
                             1 + i % 250)


async def _read_reply(reader):
    head = await reader.readuntil(b'\r\n\r\n')
    length = 0
    for line in head.split(b'\r\n'):
        if line.lower().startswith(b'content-length:'):
            length = int(line.split(b':', 1)[1])
    body = await reader.readexactly(length)
    if not head.startswith(b'HTTP/1.1 200') or b'failure' in body:
        raise RuntimeError('bad reply: %r %r' % (head[:40], body[:80]))
    return body


async def _connect(port, source):
    return await asyncio.open_connection('127.0.0.1', port,
                                         local_addr=(source, 0))


async def _populate(port, peers, clients, keys=False):
    sem = asyncio.Semaphore(50)

    async def one(i):
        async with sem:
            # With keys, from the address of the client that re-announces
            # as this peer: a key is served to one address.
            reader, writer = await _connect(
                port, _address(i % clients if keys else i))
            writer.write(_announce(i, keys=keys))
            await _read_reply(reader)
            writer.close()
    await asyncio.gather(*(one(i) for i in range(peers)))


async def _load(port, clients, seconds, peers, keys=False):
    latencies = []
    stop = time.monotonic() + seconds

    async def client(c):
        # Each client re-announces as a few of the swarm's peers.
        reader, writer = await _connect(port, _address(c))
        mine = [p for p in range(c, peers, clients)] or [c]
        n = 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            writer.write(_announce(mine[n % len(mine)], keys=keys))
            await _read_reply(reader)
            latencies.append(time.perf_counter() - start)
            n += 1
        writer.close()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return latencies


class _UdpClient(asyncio.DatagramProtocol):
    """One BEP 15 client: connect once, then announce in a loop."""

    def __init__(self):
        self.waiter = None

    def datagram_received(self, data, addr):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    async def ask(self, transport, packet):
        self.waiter = asyncio.get_running_loop().create_future()
        transport.sendto(packet)
        return await asyncio.wait_for(self.waiter, 5)


def _udp_announce(cid, peer, txid, keys=False):
    import struct
    packet = struct.pack('>QII20s20sQQQIIIiH', cid, 1, txid, INFO_HASH,
                         b'-BE0001-%012d' % peer, 0, 1000, 0, 0, 0, 0, 50,
                         6881 + peer % 1000)
    if keys:
        # BEP 41 URL data, as libtorrent sends a udp:// URL's query.
        url = ('/announce?node=n%d&auth=%s' % (peer, _key(peer))).encode()
        packet += bytes([2, len(url)]) + url
    return packet


async def _load_udp(port, clients, seconds, peers, keys=False):
    import struct
    loop = asyncio.get_running_loop()
    latencies = []
    stop = time.monotonic() + seconds

    async def client(c):
        transport, proto = await loop.create_datagram_endpoint(
            _UdpClient, local_addr=(_address(c), 0),
            remote_addr=('127.0.0.1', port))
        reply = await proto.ask(transport, struct.pack('>QII', 0x41727101980,
                                                       0, c))
        cid = struct.unpack('>IIQ', reply)[2]
        mine = [p for p in range(c, peers, clients)] or [c]
        n = 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            reply = await proto.ask(transport, _udp_announce(
                cid, mine[n % len(mine)], n, keys=keys))
            if struct.unpack_from('>I', reply)[0] != 1:
                raise RuntimeError('UDP error: %r' % reply[8:80])
            latencies.append(time.perf_counter() - start)
            n += 1
        transport.close()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return latencies


def _measure(name, child, run, result):
    cpu0 = bench_metrics.proc_cpu(child.pid)
    t0 = time.monotonic()
    latencies = run()
    wall = time.monotonic() - t0
    cpu = bench_metrics.proc_cpu(child.pid) - cpu0
    figures = {
        'announces': len(latencies),
        'announces_per_s': round(len(latencies) / wall),
        'p50_ms': round(1000 * _percentile(latencies, 0.5), 2),
        'p99_ms': round(1000 * _percentile(latencies, 0.99), 2),
        'tracker_cpu_us_per_announce': round(
            1e6 * cpu / max(1, len(latencies)), 1),
    }
    result[name] = figures
    print('%s: %d announces/s, p50 %.2f ms, p99 %.2f ms, tracker CPU %.1f '
          'us per announce' % (name, figures['announces_per_s'],
                               figures['p50_ms'], figures['p99_ms'],
                               figures['tracker_cpu_us_per_announce']),
          flush=True)


def _percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))]


_FUZZ = [
    lambda r: b'GET /announce?' + os.urandom(r.randrange(1, 200))
    + b' HTTP/1.1\r\n\r\n',
    lambda r: os.urandom(r.randrange(1, 2000)) + b'\r\n\r\n',
    lambda r: b'GET /announce?info_hash=' + b'%ff' * r.randrange(0, 40)
    + b'&left=' + b'9' * r.randrange(1, 100) + b' HTTP/1.1\r\n\r\n',
    lambda r: b'GET /announce HTTP/1.1\r\nX: ' + b'a' * r.randrange(
        1, 20000) + b'\r\n\r\n',
    lambda r: b'POST /announce HTTP/1.1\r\nContent-Length: 99999\r\n\r\n',
    lambda r: b'GET http://x/announce?port=0&left=-1 HTTP/1.1\r\n\r\n',
    lambda r: b'GET /scrape?info_hash=' + b'%00' * 20 + b' HTTP/1.0\r\n\r\n',
    lambda r: b'\x16\x03\x01' + os.urandom(100),
    lambda r: b'GET /' + b'../' * r.randrange(1, 500) + b' HTTP/1.1\r\n\r\n',
]


async def _abuse(port, idle, fuzz, seconds_between):
    rng = random.Random(7)
    held = []
    worst = 0.0
    valid = 0
    answered = {'status_line': 0, 'other': 0, 'refused': 0}
    reconnects = 0
    reader, writer = await _connect(port, '127.0.0.1')

    async def check():
        nonlocal worst, valid, reconnects
        start = time.perf_counter()
        try:
            writer.write(_announce(1))
            await _read_reply(reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            reconnects += 1
            return False
        worst = max(worst, time.perf_counter() - start)
        valid += 1
        return True

    last = time.monotonic()
    for i in range(idle):
        try:
            _r, w = await _connect(port, _address(100000 + i))
        except OSError:
            break
        w.write(b'GET /announce?half')
        held.append(w)
        if time.monotonic() - last > seconds_between:
            last = time.monotonic()
            if not await check():
                # Our own connection may be the quietest one: reconnect, as
                # a client does.
                reader, writer = await _connect(port, '127.0.0.1')
                await check()
    sem = asyncio.Semaphore(100)

    async def junk(i):
        async with sem:
            try:
                r, w = await _connect(port, _address(200000 + i % 60000))
                w.write(_FUZZ[i % len(_FUZZ)](rng))
                w.write_eof()
                reply = await asyncio.wait_for(r.read(), 10)
                w.close()
            except (OSError, asyncio.TimeoutError):
                answered['refused'] += 1
                return
            if reply.startswith(b'HTTP/1.1 '):
                answered['status_line'] += 1
            else:
                answered['other'] += 1

    batch = 500
    for first in range(0, fuzz, batch):
        await asyncio.gather(*(junk(i) for i in range(
            first, min(fuzz, first + batch))))
        if not await check():
            reader, writer = await _connect(port, '127.0.0.1')
            await check()
    for w in held:
        w.close()
    return worst, valid, len(held), answered, reconnects


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m tests.lab.bench_tracker',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--peers', type=int, default=1000)
    parser.add_argument('--clients', type=int, default=100)
    parser.add_argument('--seconds', type=float, default=10)
    parser.add_argument('--abuse', action='store_true')
    parser.add_argument('--idle', type=int, default=10000)
    parser.add_argument('--fuzz', type=int, default=100000)
    parser.add_argument('--keys', action='store_true',
                        help='announces carry node labels and announce '
                             'keys, checked by the tracker (the '
                             'conductor\'s tracker with SSL swarms)')
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.idle + 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    ctx = multiprocessing.get_context('spawn')
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_serve, args=(theirs, 10, args.keys),
                        daemon=True)
    child.start()
    result = {}
    try:
        port, udp_port = ours.recv()
        asyncio.run(_populate(port, args.peers, args.clients, args.keys))
        result.update({'peers': args.peers, 'clients': args.clients,
                       'keys': args.keys})
        print('%d clients, %d peers in the swarm' % (args.clients,
                                                     args.peers))
        _measure('http_keep_alive', child, lambda: asyncio.run(_load(
            port, args.clients, args.seconds, args.peers, args.keys)),
            result)
        _measure('udp', child, lambda: asyncio.run(_load_udp(
            udp_port, args.clients, args.seconds, args.peers, args.keys)),
            result)
        if args.abuse:
            worst, valid, held, answered, reconnects = asyncio.run(
                _abuse(port, args.idle, args.fuzz, 0.2))
            result.update({
                'fuzz_replies_with_status_line': answered['status_line'],
                'fuzz_other_replies': answered['other'],
                'fuzz_connections_refused_or_reset': answered['refused'],
                'valid_client_reconnects': reconnects,
                'idle_connections_opened': held,
                'fuzzed_requests': args.fuzz,
                'valid_announces_during_abuse': valid,
                'slowest_valid_announce_ms': round(1000 * worst, 1),
                'tracker_peak_rss_mib': round(
                    bench_metrics.peak_rss_kib(child.pid) / 1024, 1),
                'tracker_alive': child.is_alive(),
            })
            print('abuse: %(idle_connections_opened)d idle connections, '
                  '%(fuzzed_requests)d fuzzed requests; %(valid_announces_'
                  'during_abuse)d valid announces, the slowest %(slowest_'
                  'valid_announce_ms).1f ms; tracker peak RSS %(tracker_'
                  'peak_rss_mib).1f MiB, alive: %(tracker_alive)s; fuzz '
                  'replies with a status line %(fuzz_replies_with_status_'
                  'line)d, others %(fuzz_other_replies)d, reset '
                  '%(fuzz_connections_refused_or_reset)d' % result,
                  flush=True)
    finally:
        ours.send('stop')
        child.join(10)
        if child.is_alive():
            child.kill()
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
