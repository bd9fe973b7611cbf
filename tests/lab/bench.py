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

"""The ironic-bt benchmark: HTTP unicast against BitTorrent, N nodes.

Component mode (the default): one seeder host and N writer hosts, each a
network namespace whose link is shaped with ``tc tbf`` to the same rate B in
both directions (the seeder's too), each writer with a loop device of its
own. For every N, in one run:

* **unicast** -- a plain HTTP server (``sendfile``) in the seeder's host and
  N clients streaming the image onto their device, hashing on the fly and
  fsyncing at the end, as IPA's ``direct`` deploy does;
* **bittorrent** -- ``ironic-bt seed`` (with its built-in tracker) and N
  ``ironic-bt write``; a node is done when the image is written *and*
  verified (read back and hashed), lingering excluded.

Both kinds of clients are started ahead and wait for a common start time, so
the times are transfer times, not Python start-up; the time of N is when the
last node is done. It prints a table (N, unicast seconds, bittorrent seconds,
their ratio, bittorrent / (F/B)), and writes ``results.json`` and
``bench.png`` to ``--output-dir``.

It also times torrent creation against ``sha256sum`` and publishing the
same image again (``--no-publish`` skips that). Other modes: ``--levers``
(bittorrent only: the product's settings against each lever moved, in one
run) and ``--rss`` (peak RSS of an agent writing a 4 GiB image over an
unshaped link). ``--cloud`` deploys through a real Ironic instead, stock
``direct`` against ``bittorrent``, on the local cloud
(:mod:`tests.lab.bench_cloud`). See doc/source/performance.rst.

Needs root. ``python -m tests.lab.bench --quick`` finishes in under three
minutes.
"""

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from ironic_bt.common import certs
from ironic_bt.common import publication
from ironic_bt.common import torrent as torrent_mod
from tests.lab import disks
from tests.lab import images
from tests.lab import procs
from tests.lab import swarm as lab_swarm

MiB = 1024 * 1024
PYTHON = sys.executable
WORKER = [PYTHON, '-m', 'tests.lab.bench_worker']
SEED_PORT = lab_swarm.SEED_PORT
TRACKER_PORT = lab_swarm.TRACKER_PORT
HTTP_PORT = lab_swarm.HTTP_PORT
AGENT_PORT = 6881

_BLKZEROOUT = 0x127f

#: 25 Mbit/s by default: at 16 nodes that keeps this kind of 2-core
#: machine below saturation (about 65 % busy; at 50 Mbit/s it was 92-97 %,
#: so N=16 measured the CPU, not the protocol; see
#: doc/source/performance.rst). F/B is 5.4 s (quick) and 21.5 s (full).
#: Quick measures N = 1, 4 and 16 only: unicast alone takes
#: (1 + 2 + 4 + 8 + 16) x F/B for the five, which does not fit in three
#: minutes at any image size that leaves the fixed costs small.
DEFAULT_RATE_MBIT = 25
QUICK = {'nodes': [1, 4, 16], 'image_size_mib': 16}
FULL = {'nodes': [1, 2, 4, 8, 16], 'image_size_mib': 64}


# -- measurements -------------------------------------------------------------

def machine():
    model = ''
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    with open('/proc/meminfo') as f:
        mem_kib = int(f.readline().split()[1])
    import libtorrent
    return {'nproc': os.cpu_count(), 'cpu_model': model,
            'kernel': platform.release(), 'mem_gib': round(mem_kib / 2 ** 20,
                                                           1),
            'python': platform.python_version(),
            'libtorrent': libtorrent.__version__,
            'loadavg_at_start': os.getloadavg()}


def cpu_times():
    """The aggregate ``cpu`` line of /proc/stat (USER_HZ ticks)."""
    with open('/proc/stat') as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    names = ('user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq',
             'steal')
    return dict(zip(names, fields))


def cpu_busy(before, after):
    """Share of all cores busy between two :func:`cpu_times` snapshots."""
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values()) or 1
    idle = delta['idle'] + delta['iowait']
    return {'busy': round(1 - idle / total, 3),
            'user': round((delta['user'] + delta['nice']) / total, 3),
            'system': round(delta['system'] / total, 3),
            'softirq': round((delta['softirq'] + delta['irq']) / total, 3),
            'iowait': round(delta['iowait'] / total, 3)}


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def wire_counters(hosts):
    """Bytes each host received and sent, from its root-side veth.

    The root side's tx is what the bridge delivered to the host (every
    header included), its rx what the host sent.
    """
    out = {}
    for host in hosts:
        base = '/sys/class/net/%s/statistics/' % host.veth_root
        out[host.name] = (read_int(base + 'tx_bytes'),
                          read_int(base + 'rx_bytes'))
    return out


def read_events(path):
    return lab_swarm.json_lines(path)


def find_event(events, name):
    for ev in events:
        if ev.get('event') == name:
            return ev
    return None


def _result(events):
    for ev in reversed(events):
        if 'event' not in ev and 'sha256' in ev:
            return ev
    return None


def wipe(dev, size, lab):
    """Zero a lab loop device (BLKZEROOUT: a hole punch in its file)."""
    disks.assert_lab_loop(dev, lab)
    fd = os.open(dev, os.O_WRONLY)
    try:
        fcntl.ioctl(fd, _BLKZEROOUT, struct.pack('QQ', 0, size))
        os.fsync(fd)
    finally:
        os.close(fd)


def nonzero_bytes(path, block=4096):
    total = 0
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(4 * MiB), b''):
            for i in range(0, len(chunk), block):
                if chunk[i:i + block].count(0) != len(chunk[i:i + block]):
                    total += len(chunk[i:i + block])
    return total


def wire_seconds(size, rate_mbit):
    if not rate_mbit:
        return None  # unshaped: no wire bound to speak of
    """F/B: the time to carry ``size`` bytes at the link rate."""
    return size * 8 / (rate_mbit * 1e6)


# -- variants -----------------------------------------------------------------

@dataclasses.dataclass
class Variant:
    """How the bittorrent method runs: the product, or an experiment."""

    name: str = 'default'
    #: libtorrent overrides for both sides, the writers, the seeder.
    settings: dict = dataclasses.field(default_factory=dict)
    writer_settings: dict = dataclasses.field(default_factory=dict)
    seeder_settings: dict = dataclasses.field(default_factory=dict)
    #: bytes; None for the product's policy, 'old' for the one before.
    piece_size: object = None
    #: announce interval the tracker asks for.
    interval: int = 5
    #: give every writer every other writer as --peer (full mesh at once).
    mesh: bool = False
    #: the seeder connects out to every writer at the start.
    connect_out: bool = False
    super_seed: bool = False
    #: the seeder hashes each piece the first time it sends it (libtorrent's
    #: seed mode, as ``ironic-bt seed`` does) instead of trusting the image
    #: it hashed into the torrent, as the conductor's publisher does.
    seed_mode: bool = False
    #: force the library path even without overrides.
    library: bool = False
    #: writers log their peers this often (seconds; experiments).
    diag: float = None
    #: the writer polls libtorrent this often (Tuning.poll_interval).
    poll: float = None
    #: read back only after the download (Tuning.overlap_read_back off).
    no_overlap: bool = False
    #: Tuning.flush_interval (None: the product's).
    flush_interval: float = None
    #: Tuning.sequential_alone off.
    no_sequential: bool = False
    #: sysctls set in every lab host for this variant (e.g. TCP knobs).
    sysctls: dict = dataclasses.field(default_factory=dict)
    #: the writers' piece plan (ipa_extension.pieces); False: rarest-first.
    share: bool = True
    #: the piece plan's backup threshold (None: the product's).
    plan_backup: int = None
    #: a plain torrent instead of the product's SSL swarm
    #: ([bittorrent]ssl = false): anyone may join.
    plain: bool = False
    #: study (tests.lab.stripes): this many writer sessions, each on a
    #: stripe of the pieces, from the seeder only; 0: the product's writer.
    stripes: int = 0

    @property
    def cli(self):
        """Whether the real ``ironic-bt seed``/``write`` commands run."""
        return not (self.settings or self.writer_settings
                    or self.seeder_settings or self.connect_out
                    or self.super_seed or self.library
                    or self.sysctls or self.poll or not self.share
                    or self.plan_backup is not None or self.no_overlap
                    or self.no_sequential or self.stripes
                    or self.flush_interval is not None)

    def writer(self):
        return dict(self.settings, **self.writer_settings)

    def seeder(self):
        return dict(self.settings, **self.seeder_settings)

    def describe(self):
        parts = ['%s=%s' % kv for kv in sorted(self.writer().items())]
        parts += ['seeder:%s=%s' % kv
                  for kv in sorted(self.seeder_settings.items())]
        if self.piece_size == 'old':
            parts.append('piece=old policy')
        elif self.piece_size:
            parts.append('piece=%dK' % (self.piece_size // 1024))
        if self.interval != 5:
            parts.append('interval=%d' % self.interval)
        parts += ['sysctl %s=%s' % kv for kv in sorted(self.sysctls.items())]
        if self.poll:
            parts.append('poll %gs' % self.poll)
        if self.flush_interval is not None:
            parts.append('flush every %gs' % self.flush_interval)
        for flag in ('mesh', 'connect_out', 'super_seed', 'seed_mode',
                     'no_overlap', 'no_sequential', 'plain'):
            if getattr(self, flag):
                parts.append(flag)
        if not self.share:
            parts.append('no piece plan')
        if self.plan_backup is not None:
            parts.append('plan backup %d' % self.plan_backup)
        if self.stripes:
            parts.append('study: %d sessions on stripes' % self.stripes)
        return ' '.join(parts) or ('ironic-bt CLI' if self.cli
                                   else 'library, no overrides')


def old_piece_size(size):
    """The piece size policy before the benchmark: 2048 pieces, >= 256 K."""
    piece = 256 * 1024
    while piece < 4 * MiB and piece * 2048 < size:
        piece *= 2
    return piece


def lever_variants():
    """The levers of issue 4, each moved away from the product's defaults.

    The first variant is the product as it is, the second the defaults it
    had before these measurements; every other one is the product with one
    lever moved, so its effect is measured against it in the same run.
    """
    k = 1024
    product = Variant
    return [
        product('product', library=True),
        product('before: 2048 pieces >= 256K, seeder queue 2000',
                piece_size='old', seeder_settings={
                    'max_allowed_in_request_queue': 2000}),
        # Piece size policy.
        product('piece 64K', piece_size=64 * k, library=True),
        product('piece 256K', piece_size=256 * k, library=True),
        # The agents' piece plan (ipa_extension.pieces) against plain
        # rarest-first.
        product('no piece plan', share=False),
        # The seeder's queue of requests per peer (sized to the swarm now:
        # ironic_bt.seeder.request_queue).
        product('seeder queue 4', seeder_settings={
            'max_allowed_in_request_queue': 4}),
        product('seeder queue 16', seeder_settings={
            'max_allowed_in_request_queue': 16}),
        product('seeder queue 2000', seeder_settings={
            'max_allowed_in_request_queue': 2000}),
        # Connection and unchoke limits.
        product('connections 8', settings={'connections_limit': 8}),
        product('unchoke 4', settings={'unchoke_slots_limit': 4}),
        # Request queue depth, send buffer watermarks.
        product('reqq deep', settings={'max_out_request_queue': 2000,
                                       'request_queue_time': 10}),
        product('reqq shallow', settings={'max_out_request_queue': 50,
                                          'request_queue_time': 1}),
        product('sndbuf 4M', settings={'send_buffer_watermark': 4 * MiB,
                                       'send_buffer_low_watermark': 512 * k,
                                       'send_buffer_watermark_factor': 150}),
        product('sndbuf 64K', settings={'send_buffer_watermark': 64 * k,
                                        'send_buffer_low_watermark': 16 * k}),
        product('suggest', settings={'suggest_mode': 1}),
        product('no encryption', settings={'out_enc_policy': 2,
                                           'in_enc_policy': 2}),
        product('predictive announce', settings={
            'predictive_piece_announce': 20}),
        product('no strict end game', settings={
            'strict_end_game_mode': False}),
        # The disk backend (POSIX is the only one that writes to a block
        # device; these are its knobs).
        product('hashing threads 2', settings={'hashing_threads': 2}),
        product('aio threads 2', settings={'aio_threads': 2}),
        product('disk queue 8M', settings={
            'max_queued_disk_bytes': 8 * MiB}),
        product('extent affinity', settings={'piece_extent_affinity': True}),
        # Seeder behaviour.
        product('super seed', super_seed=True),
        product('seeder in seed mode', seed_mode=True),
        product('plain torrent (no SSL)', plain=True),
        product('no TCP slow start after idle', sysctls={
            'net.ipv4.tcp_slow_start_after_idle': 0}),
        # How fast peers find each other.
        product('seeder connects out', connect_out=True),
        product('mesh peers', mesh=True, library=True),
        product('tracker interval 1', interval=1, library=True),
        # The writer's own knobs (writer.Tuning).
        product('poll 50 ms', poll=0.05),
        product('read back after the download', no_overlap=True),
        product('never in order', no_sequential=True),
        product('listen queue 128', settings={'listen_queue_size': 128}),
    ]


# -- the bench ----------------------------------------------------------------

class Bench:
    """One lab (seeder + max(N) writers), one image, many runs."""

    def __init__(self, state_dir, max_nodes, image_size, rate_mbit,
                 sparse=False, linger=30, timeout=600):
        self.state_dir = state_dir
        self.rate_mbit = rate_mbit
        self.image_size = image_size
        self.sparse = sparse
        self.linger = linger
        self.timeout = timeout
        self.swarm = lab_swarm.Swarm(
            state_dir, max_nodes, disk_size=image_size + 16 * MiB,
            rate_mbit=rate_mbit, prefix='ibb')
        self.image = None
        self.torrents = {}
        self.http = None
        self.nonzero = None

    def __enter__(self):
        self.swarm.__enter__()
        try:
            path = os.path.join(self.state_dir, 'image.raw')
            if self.sparse:
                self.image = images.make_sparse_image(
                    path, self.image_size, nonzero_fraction=0.1, seed=11,
                    extents=4)
            else:
                self.image = images.make_random_image(
                    path, self.image_size, seed=11)
            self.nonzero = (nonzero_bytes(self.image.path) if self.sparse
                            else self.image.size)
        except BaseException:
            self.swarm.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        return self.swarm.__exit__(*exc)

    @property
    def lab(self):
        return self.swarm.lab

    @property
    def seed_host(self):
        return self.swarm.seed_host

    def log(self, name):
        return os.path.join(self.state_dir, 'logs', name + '.log')

    def _fresh_log(self, name):
        path = self.log(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w'):
            pass
        return path

    def torrent(self, piece_size=None):
        if piece_size == 'old':
            piece_size = old_piece_size(self.image.size)
        if piece_size not in self.torrents:
            path = os.path.join(self.state_dir, 'image-%s.torrent'
                                % (piece_size or 'policy'))
            cmd = lab_swarm.CLI + ['create', self.image.path, '-o', path,
                                   '--json']
            if piece_size:
                cmd += ['--piece-size', str(piece_size)]
            start = time.monotonic()
            out = self.seed_host.run(cmd, check=True, capture_output=True,
                                     text=True)
            info = json.loads(out.stdout.strip().splitlines()[-1])
            info['create_seconds'] = round(time.monotonic() - start, 3)
            self.torrents[piece_size] = (path, info)
        return self.torrents[piece_size]

    def _wipe(self, hosts):
        for host in hosts:
            wipe(self.swarm.devices[host.name], self.image.size, self.lab)

    def _verify(self, hosts):
        return {h.name: disks.sha256_region(self.swarm.devices[h.name],
                                            self.image.size)
                == self.image.sha256 for h in hosts}

    def _credentials(self, authority, name):
        """A writer's credentials file, as the conductor issues them."""
        path = os.path.join(self.state_dir, 'credentials-%s.pem' % name)
        authority.credentials(name, datetime.timedelta(hours=2)).save(path)
        return path

    @staticmethod
    def _tracker_url(tracker, name, authority, torrent_path):
        """A writer's tracker URL, as the conductor hands it out.

        The tracker of an SSL swarm serves only the nodes with an announce
        key of its authority.
        """
        if authority is None:
            return publication.with_query(tracker, {'node': name})
        secret = authority.derive_secret(
            publication.ANNOUNCE_SECRET_PURPOSE)
        meta = torrent_mod.load_file(torrent_path)
        return publication.keyed_url(tracker, secret, name,
                                     meta.tracker_keys[0])

    def _start_file(self):
        path = os.path.join(self.state_dir, 'start')
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return path

    def _go(self, clients, start_file):
        """Once every client is ready, tell them all when to start."""
        procs.wait_for(
            lambda: all(find_event(read_events(log), 'ready') is not None
                        or proc.poll() is not None
                        for proc, log in clients.values()),
            timeout=120, interval=0.05, what='clients ready')
        # A little ahead, so they all see it before it comes.
        start_at = time.time() + 0.2
        tmp = start_file + '.tmp'
        with open(tmp, 'w') as f:
            f.write(repr(start_at))
        os.replace(tmp, start_file)
        return start_at

    def _stop(self, proc, timeout=20):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _wait_clients(self, clients, start_at, hosts, rss=None,
                      timeline=None, extra_pids=()):
        """Wait for every client to be done; CPU use over [start, done].

        Meanwhile, samples what each host received and the seeder sent
        (``timeline``: [seconds since start, seeder tx, [rx per host]]).
        """
        _sleep_until(start_at)
        cpu0 = cpu_times()
        pids = [proc.pid for proc, _log in clients.values()] + list(
            extra_pids)
        own0 = {pid: _proc_cpu(pid) for pid in pids}
        own1 = dict(own0)
        done = {}
        peak = {}
        deadline = time.monotonic() + self.timeout
        seed = self.seed_host
        while len(done) < len(clients) and time.monotonic() < deadline:
            for pid in pids:
                # The last value seen: a client that exits is not lost.
                own1[pid] = max(own1[pid], _proc_cpu(pid))
            if timeline is not None:
                wire = wire_counters(hosts + [seed])
                timeline.append([round(time.time() - start_at, 2),
                                 wire[seed.name][1],
                                 [wire[h.name][0] for h in hosts]])
            for name, (proc, log) in clients.items():
                if name in done:
                    continue
                if rss is not None:
                    peak[name] = max(peak.get(name, 0), _vmrss(proc.pid))
                ev = find_event(read_events(log), 'verified')
                if ev is not None:
                    done[name] = ev['at']
                elif proc.poll() is not None:
                    done[name] = None
            time.sleep(0.1)
        cpu1 = cpu_times()
        for pid in pids:
            own1[pid] = max(own1[pid], _proc_cpu(pid))
        own = sum(own1.values()) - sum(own0.values())
        for proc, _log in clients.values():
            try:
                proc.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._stop(proc)
        if rss is not None:
            rss.update(peak)
        busy = cpu_busy(cpu0, cpu1)
        window = sum(cpu1.values()) - sum(cpu0.values())
        busy['ours'] = round(own * _HZ / window, 3) if window else None
        busy['ours_seconds'] = round(own, 2)
        # Per process, from the common start until the last node was done:
        # what the transfer cost, without start-up or lingering.
        names = {proc.pid: name for name, (proc, _log) in clients.items()}
        busy['window_cpu_seconds'] = {
            names.get(pid, 'server'): round(own1[pid] - own0[pid], 3)
            for pid in pids}
        return busy

    def run_unicast(self, hosts):
        seed = self.seed_host
        if self.http is None:
            log = self._fresh_log('http')
            proc = seed.popen(WORKER + ['http', self.image.path, '--listen',
                                        '%s:%d' % (seed.ip, HTTP_PORT)],
                              log)
            procs.wait_port(seed.ip, HTTP_PORT, timeout=30, netns=seed.netns,
                            proc=proc, log_path=log)
            self.http = proc
        self._wipe(hosts)
        url = 'http://%s:%d/image.raw' % (seed.ip, HTTP_PORT)
        start_file = self._start_file()
        clients = {}
        for host in hosts:
            log = self._fresh_log('fetch-%s' % host.name)
            dev = disks.assert_lab_loop(self.swarm.devices[host.name],
                                        self.lab)
            proc = host.popen(WORKER + ['fetch', url, dev, '--sha256',
                                        self.image.sha256,
                                        '--start-file', start_file], log)
            clients[host.name] = (proc, log)
        wire0 = wire_counters(hosts + [seed])
        start_at = self._go(clients, start_file)
        timeline = []
        cpu = self._wait_clients(clients, start_at, hosts,
                                 timeline=timeline,
                                 extra_pids=[self.http.pid])
        wire1 = wire_counters(hosts + [seed])
        verified = self._verify(hosts)
        nodes = []
        for host in hosts:
            proc, log = clients[host.name]
            events = read_events(log)
            ev = find_event(events, 'verified') or {}
            usage = find_event(events, 'usage') or {}
            nodes.append({
                'name': host.name,
                'ok': bool(ev.get('ok')) and verified[host.name]
                and proc.returncode == 0,
                'seconds': round(ev['at'] - start_at, 3) if ev else None,
                'wire_rx_bytes': wire1[host.name][0] - wire0[host.name][0],
                'cpu_seconds': usage.get('cpu_seconds'),
                'vmhwm_kib': usage.get('vmhwm_kib'),
                'error': '' if ev else procs.tail_log(log, 5)})
        return self._summary('unicast', nodes, cpu, wire0, wire1,
                             timeline=_relative(timeline, wire0, hosts,
                                                seed))

    def _summary(self, method, nodes, cpu, wire0, wire1, **extra):
        seed = self.seed_host.name
        ok = all(n['ok'] for n in nodes)
        times = [n['seconds'] for n in nodes if n['seconds'] is not None]
        result = {
            'method': method, 'ok': ok,
            # CPU seconds our own processes used from the start until the
            # last node was done (kernel networking done in softirq
            # context is partly charged elsewhere), and their share of
            # all cores ('cpu' has the whole machine's).
            'own_cpu_seconds': cpu.get('ours_seconds'),
            'own_cpu_share': cpu.get('ours'),
            'seconds': round(max(times), 3) if ok and times else None,
            'mean_node_seconds': round(statistics.mean(times), 3)
            if times else None,
            'cpu': cpu,
            'seeder_wire_tx_bytes': wire1[seed][1] - wire0[seed][1],
            'nodes': nodes}
        result.update(extra)
        return result

    def _sysctls(self, hosts, values):
        """Set sysctls in the hosts; returns the previous values."""
        previous = {}
        for host in hosts:
            for name, value in values.items():
                out = host.run(['sysctl', '-n', name], capture_output=True,
                               text=True, check=True)
                previous[name] = out.stdout.strip()
                host.run(['sysctl', '-qw', '%s=%s' % (name, value)],
                         check=True)
        return previous

    def run_bittorrent(self, hosts, variant=None):
        variant = variant or Variant()
        if variant.sysctls:
            previous = self._sysctls(hosts + [self.seed_host],
                                     variant.sysctls)
            try:
                return self._run_bittorrent(hosts, variant)
            finally:
                self._sysctls(hosts + [self.seed_host], previous)
        return self._run_bittorrent(hosts, variant)

    def _run_bittorrent(self, hosts, variant):
        seed = self.seed_host
        torrent, info = self.torrent(variant.piece_size)
        self._wipe(hosts)
        seed_log = self._fresh_log('seed')
        cmd = WORKER + ['seed', torrent, self.image.path,
                        '--listen', '%s:%d' % (seed.ip, SEED_PORT),
                        '--tracker-listen', '%s:%d' % (seed.ip,
                                                       TRACKER_PORT),
                        '--interval', str(variant.interval),
                        # What the conductor knows: how many nodes it
                        # published the image for.
                        '--nodes', str(len(hosts))]
        if variant.cli:
            cmd.append('--cli')
        else:
            cmd += ['--settings', json.dumps(variant.seeder())]
        if variant.super_seed:
            cmd.append('--super-seed')
        if variant.seed_mode:
            cmd.append('--seed-mode')
        authority = None
        if not variant.plain:
            # The product's default: an SSL swarm of the deployment's
            # authority; each writer gets credentials as the conductor
            # would issue them.
            authority_dir = os.path.join(self.state_dir, 'authority')
            authority = certs.Authority.load_or_create(authority_dir)
            cmd += ['--ssl-authority', authority_dir]
        start_file = self._start_file()
        if variant.connect_out:
            for host in hosts:
                cmd += ['--connect', '%s:%d' % (host.ip, AGENT_PORT)]
            cmd += ['--start-file', start_file]
        seeder = seed.popen(cmd, seed_log)
        tracker = 'http://%s:%d/announce' % (seed.ip, TRACKER_PORT)
        clients = {}
        rss = {} if len(hosts) == 1 else None
        try:
            procs.wait_port(seed.ip, TRACKER_PORT, timeout=30,
                            netns=seed.netns, proc=seeder, log_path=seed_log)
            procs.wait_port(seed.ip, SEED_PORT, timeout=30,
                            netns=seed.netns, proc=seeder, log_path=seed_log)
            wire0 = wire_counters(hosts + [seed])
            for host in hosts:
                log = self._fresh_log('write-%s' % host.name)
                dev = disks.assert_lab_loop(self.swarm.devices[host.name],
                                            self.lab)
                cmd = WORKER + ['write', torrent, dev,
                                '--listen', '%s:%d' % (host.ip, AGENT_PORT),
                                '--tracker', self._tracker_url(
                                    tracker, host.name, authority, torrent),
                                '--peer', '%s:%d' % (seed.ip, SEED_PORT),
                                '--linger', str(self.linger),
                                '--sha256', self.image.sha256,
                                '--start-file', start_file]
                if authority is not None:
                    cmd += ['--ssl-credentials',
                            self._credentials(authority, host.name)]
                if variant.mesh:
                    for other in hosts:
                        if other is not host:
                            cmd += ['--peer', '%s:%d' % (other.ip,
                                                         AGENT_PORT)]
                if variant.cli:
                    cmd.append('--cli')
                else:
                    cmd += ['--settings', json.dumps(variant.writer())]
                if variant.diag:
                    cmd += ['--diag', str(variant.diag)]
                if variant.no_overlap:
                    cmd.append('--no-overlap')
                if variant.no_sequential:
                    cmd.append('--no-sequential')
                if variant.flush_interval is not None:
                    cmd += ['--flush-interval', str(variant.flush_interval)]
                if variant.poll:
                    cmd += ['--poll', str(variant.poll)]
                if not variant.share:
                    cmd.append('--no-share')
                if variant.plan_backup is not None:
                    cmd += ['--plan-backup', str(variant.plan_backup)]
                if variant.stripes:
                    cmd += ['--stripes', str(variant.stripes)]
                clients[host.name] = (host.popen(cmd, log), log)
            start_at = self._go(clients, start_file)
            timeline = []
            cpu = self._wait_clients(clients, start_at, hosts, rss=rss,
                                     timeline=timeline,
                                     extra_pids=[seeder.pid])
            wire1 = wire_counters(hosts + [seed])
        finally:
            for proc, _log in clients.values():
                self._stop(proc)
            self._stop(seeder)
        seed_events = read_events(seed_log)
        done = [e for e in seed_events
                if 'uploaded_bytes' in e] or [{}]
        seed_usage = find_event(seed_events, 'usage') or {}
        verified = self._verify(hosts)
        nodes = []
        for host in hosts:
            proc, log = clients[host.name]
            events = read_events(log)
            ev = find_event(events, 'verified')
            res = _result(events) or {}
            usage = find_event(events, 'usage') or {}
            nodes.append({
                'name': host.name,
                'ok': bool(ev) and bool(res) and verified[host.name]
                and res.get('sha256') == self.image.sha256,
                'seconds': round(ev['at'] - start_at, 3) if ev else None,
                'download_seconds': res.get('download_seconds'),
                'verify_seconds': res.get('verify_seconds'),
                'downloaded_bytes': res.get('downloaded_bytes'),
                'downloaded_from_seeder_bytes': res.get(
                    'downloaded_from_seeder_bytes'),
                'uploaded_bytes': res.get('uploaded_bytes'),
                'zero_bytes': res.get('zero_bytes'),
                'wire_rx_bytes': wire1[host.name][0] - wire0[host.name][0],
                'cpu_seconds': usage.get('cpu_seconds'),
                'vmhwm_kib': usage.get('vmhwm_kib'),
                'vmrss_sampled_peak_kib': (rss or {}).get(host.name),
                'error': '' if ev else procs.tail_log(log, 8)})
        return self._summary(
            'bittorrent', nodes, cpu, wire0, wire1,
            variant=variant.name, variant_detail=variant.describe(),
            piece_length=info['piece_length'],
            seeder_uploaded_bytes=done[-1].get('uploaded_bytes'),
            seeder_cpu_seconds=seed_usage.get('cpu_seconds'),
            seeder_vmhwm_kib=seed_usage.get('vmhwm_kib'),
            timeline=_relative(timeline, wire0, hosts, seed))

    def close_http(self):
        if self.http is not None:
            self._stop(self.http)
            self.http = None

    def run_zero(self, host):
        """BLKZEROOUT against writing zeros, for the image's zero runs."""
        log = self._fresh_log('zero')
        dev = disks.assert_lab_loop(self.swarm.devices[host.name], self.lab)
        torrent, _info = self.torrent(None)
        proc = host.popen(WORKER + ['zero', torrent, dev], log)
        proc.wait(self.timeout)
        return find_event(read_events(log), 'zero') or {
            'error': procs.tail_log(log, 10)}

    def run_publish(self):
        log = self._fresh_log('publish')
        data_dir = os.path.join(self.state_dir, 'publisher')
        proc = self.seed_host.popen(
            WORKER + ['publish', self.image.path, '--listen',
                      '%s:%d' % (self.seed_host.ip, SEED_PORT),
                      '--data-dir', data_dir], log)
        proc.wait(self.timeout)
        events = read_events(log)
        return {'create': find_event(events, 'create'),
                'publish': find_event(events, 'publish'),
                'error': '' if proc.returncode == 0
                else procs.tail_log(log, 10)}


def _relative(timeline, wire0, hosts, seed):
    """Timeline counters as bytes since the start of the run."""
    return [[t, tx - wire0[seed.name][1],
             [rx - wire0[h.name][0] for rx, h in zip(rxs, hosts)]]
            for t, tx, rxs in timeline]


def _sleep_until(when):
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)


_HZ = os.sysconf('SC_CLK_TCK')


def _proc_cpu(pid):
    """CPU seconds (user + system) a live process has used so far."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(')') + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


def _vmrss(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- reporting ----------------------------------------------------------------

def fmt(value, spec='%.2f'):
    return '-' if value is None else spec % value


def scaling_rows(runs, image_size, rate_mbit):
    bound = wire_seconds(image_size, rate_mbit)
    rows = []
    for n, by_method in runs:
        uni = by_method.get('unicast', {}).get('seconds')
        bt = by_method.get('bittorrent', {}).get('seconds')
        rows.append({
            'nodes': n, 'unicast_seconds': uni, 'bittorrent_seconds': bt,
            'unicast_over_bittorrent': round(uni / bt, 2)
            if uni and bt else None,
            'bittorrent_over_wire': round(bt / bound, 2) if bt else None,
            'unicast_cpu_busy': by_method.get('unicast', {}).get(
                'cpu', {}).get('busy'),
            'bittorrent_cpu_busy': by_method.get('bittorrent', {}).get(
                'cpu', {}).get('busy')})
    return rows


def format_table(rows):
    lines = ['%5s %10s %12s %10s %10s %8s %8s' % (
        'N', 'unicast s', 'bittorrent s', 'uni/bt', 'bt/(F/B)',
        'cpu uni', 'cpu bt')]
    for r in rows:
        lines.append('%5d %10s %12s %10s %10s %8s %8s' % (
            r['nodes'], fmt(r['unicast_seconds']),
            fmt(r['bittorrent_seconds']),
            fmt(r['unicast_over_bittorrent']),
            fmt(r['bittorrent_over_wire']),
            fmt(r['unicast_cpu_busy']), fmt(r['bittorrent_cpu_busy'])))
    return '\n'.join(lines)


def check_targets(rows, image_size, rate_mbit):
    """The issue 4 targets this table can decide, as (name, ok, detail)."""
    out = []
    bts = [(r['nodes'], r['bittorrent_over_wire']) for r in rows
           if r['bittorrent_over_wire'] is not None]
    if bts:
        worst = max(bts, key=lambda x: x[1])
        out.append(('bittorrent <= 1.25 x F/B for every N',
                    worst[1] <= 1.25,
                    'worst %.2f x at N=%d' % (worst[1], worst[0])))
    for r in rows:
        if r['nodes'] == 1 and r['unicast_seconds'] and \
                r['bittorrent_seconds']:
            ratio = r['bittorrent_seconds'] / r['unicast_seconds']
            out.append(('1 node: bittorrent <= 1.10 x unicast',
                        ratio <= 1.10, '%.2f x' % ratio))
        if r['nodes'] == 16 and r['unicast_over_bittorrent']:
            out.append(('N=16: unicast >= 12 x bittorrent',
                        r['unicast_over_bittorrent'] >= 12,
                        '%.2f x' % r['unicast_over_bittorrent']))
    return out


def plot_scaling(path, rows, series, bound, ylabel, title, guides=()):
    """Seconds against N (log2 axis), one line per method, to a PNG.

    :param rows: dicts with ``nodes`` and the keys named in ``series``.
    :param series: (key, style, color, label) per method; points whose
        value is missing are left out.
    :param bound: the wire bound F/B, drawn as a grey line.
    :param guides: extra (ys, linestyle, color, label) lines.
    """
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    ns = [r['nodes'] for r in rows]
    fig, ax = pyplot.subplots(figsize=(7, 4.5), dpi=110)
    for key, style, color, label in series:
        points = [(r['nodes'], r[key]) for r in rows if r[key]]
        if points:
            ax.plot(*zip(*points), style, color=color, label=label)
    for ys, linestyle, color, label in guides:
        ax.plot(ns, ys, color=color, linestyle=linestyle, linewidth=1,
                label=label)
    ax.axhline(bound, color='gray', linestyle='-', linewidth=1,
               label='wire bound F/B = %.1f s' % bound)
    ax.set_xscale('log', base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel('nodes deployed at once (N)')
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)


def plot(rows, image_size, rate_mbit, path, title_extra=''):
    bound = wire_seconds(image_size, rate_mbit)
    plot_scaling(
        path, rows,
        [('unicast_seconds', 'o-', 'tab:red', 'HTTP unicast'),
         ('bittorrent_seconds', 's-', 'tab:blue', 'ironic-bt')],
        bound, 'seconds until the last node is done',
        '%d MiB image, %g Mbit/s links%s' % (image_size // MiB, rate_mbit,
                                             title_extra),
        guides=[([1.25 * bound] * len(rows), ':', 'gray',
                 'target 1.25 x F/B')])


def write_json(path, data):
    with open(path, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write('\n')


# -- modes --------------------------------------------------------------------

def tmp_dir(args, need):
    """Where the lab's files go: tmpfs if it has room, unless told.

    The N lab nodes share this machine's one disk, which no real
    deployment does: in this VM it writes about 370 MB/s, less than 16
    nodes at 200 Mbit/s take. Backing the loop devices with memory keeps
    the benchmark about the network and the swarm, as if each node had a
    disk of its own faster than its link.
    """
    if args.tmp_dir:
        return args.tmp_dir
    shm = '/dev/shm'
    if os.path.isdir(shm) and shutil.disk_usage(shm).free > 2 * need:
        return shm
    return tempfile.gettempdir()


def lab_state_dir(args, need=0):
    if args.state_dir:
        os.makedirs(args.state_dir, exist_ok=True)
        return args.state_dir, False
    return tempfile.mkdtemp(prefix='ironic-bt-bench-',
                            dir=tmp_dir(args, need)), True


def base_variant(args):
    variant = Variant(
        name='default', settings=dict(args.setting),
        writer_settings=dict(args.writer_setting),
        seeder_settings=dict(args.seeder_setting),
        piece_size=args.piece_size, interval=args.interval, mesh=args.mesh,
        connect_out=args.connect_out, super_seed=args.super_seed,
        seed_mode=args.seed_mode, library=args.library, diag=args.diag,
        plain=args.plain)
    if not variant.cli:
        variant.name = 'custom'
    return variant


def _progress_line(n, method, res):
    failed = ['%s: %s' % (x['name'], x['error'][-300:])
              for x in res['nodes'] if not x['ok']]
    return 'N=%-3d %-10s %s s (cpu busy %.0f%%, ours %.0f%%)%s' % (
        n, method, fmt(res['seconds']), 100 * res['cpu']['busy'],
        100 * (res['own_cpu_share'] or 0),
        '  FAILED: ' + '; '.join(failed) if failed else '')


def run_scaling(args, out):
    image_size = args.image_size_mib * MiB
    methods = args.methods
    # The image, and a loop device a little larger for each node.
    state_dir, temporary = lab_state_dir(
        args, (max(args.nodes) + 1) * (image_size + 16 * MiB))
    variant = base_variant(args)
    report = {'mode': 'scaling', 'machine': machine(),
              'config': {'nodes': args.nodes, 'image_size': image_size,
                         'rate_mbit': args.rate_mbit,
                         'sparse': args.sparse, 'methods': methods,
                         'variant': variant.describe(),
                         'state_dir': state_dir}}
    started = time.monotonic()
    runs = []
    try:
        with Bench(state_dir, max(args.nodes), image_size, args.rate_mbit,
                   sparse=args.sparse) as bench:
            report['image'] = {'size': bench.image.size,
                               'sha256': bench.image.sha256,
                               'nonzero_bytes': bench.nonzero}
            report['torrent'] = bench.torrent(variant.piece_size)[1]
            print('lab of %d hosts, image and torrent ready in %.0f s' % (
                max(args.nodes) + 1, time.monotonic() - started), flush=True)
            for n in args.nodes:
                hosts = bench.swarm.hosts[:n]
                by_method = {}
                for method in methods:
                    if method == 'unicast':
                        res = bench.run_unicast(hosts)
                    else:
                        res = bench.run_bittorrent(hosts, variant)
                    by_method[method] = res
                    print(_progress_line(n, method, res), flush=True)
                bench.close_http()
                runs.append((n, by_method))
            if args.sparse:
                report['zeroing'] = bench.run_zero(bench.swarm.hosts[0])
            if args.publish:
                report['publish'] = bench.run_publish()
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
    report['seconds'] = round(time.monotonic() - started, 1)
    rows = scaling_rows(runs, image_size, args.rate_mbit)
    report['rows'] = rows
    report['runs'] = [{'nodes': n, **m} for n, m in runs]
    report['targets'] = [{'target': t, 'ok': ok, 'detail': d}
                         for t, ok, d in check_targets(rows, image_size,
                                                       args.rate_mbit)]
    if args.sparse:
        report['sparse'] = sparse_summary(runs, report['image'],
                                          report['torrent'])
    print()
    print('image %d MiB%s, links %g Mbit/s, F/B = %.2f s; %s' % (
        image_size // MiB, ' (sparse, %d non-zero bytes)' % bench.nonzero
        if args.sparse else ' random', args.rate_mbit,
        wire_seconds(image_size, args.rate_mbit), variant.describe()))
    print(format_table(rows))
    for t in report['targets']:
        print('%-40s %-4s %s' % (t['target'], 'met' if t['ok'] else 'NOT',
                                 t['detail']))
    if args.sparse:
        s = report['sparse']
        print('sparse: worst node received %d image bytes (%.3f x the %d '
              'non-zero bytes; limit %d: %s) and %d bytes on its link '
              '(%.3f x)' % (
                  s['worst_downloaded_bytes'],
                  s['worst_downloaded_bytes'] / s['nonzero_bytes'],
                  s['nonzero_bytes'], s['limit_bytes'],
                  'met' if s['ok'] else 'NOT met',
                  s['worst_wire_rx_bytes'],
                  s['worst_wire_rx_bytes'] / s['nonzero_bytes']))
        z = report.get('zeroing') or {}
        if 'bytes' in z:
            print('zeroing %d bytes in %d runs: BLKZEROOUT %.3f s, writing '
                  'zeros %.3f s' % (z['bytes'], z['runs'],
                                    z['blkzeroout_seconds'],
                                    z['write_seconds']))
    if report.get('publish'):
        print_publish(report['publish'])
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, 'results.json'), report)
    if rows:
        plot(rows, image_size, args.rate_mbit,
             os.path.join(out, 'bench.png'),
             ', sparse' if args.sparse else '')
    print('wrote %s and %s (%.0f s)' % (os.path.join(out, 'results.json'),
                                        os.path.join(out, 'bench.png'),
                                        report['seconds']))
    return 0 if all(m.get('ok') for _n, ms in runs
                    for m in ms.values()) else 1


def sparse_summary(runs, image, torrent_info):
    """The sparse target: image bytes a node receives against non-zero.

    The limit is 1.1 x the non-zero bytes plus one piece per extent. It is
    checked on the payload (image bytes received, duplicates included);
    what the link carried besides (TCP/IP headers, BitTorrent messages, the
    acknowledgements of what the node uploaded) is reported next to it.
    """
    extents = 4
    limit = int(1.1 * image['nonzero_bytes']
                + extents * torrent_info['piece_length'])
    worst_dl = worst_wire = 0
    for _n, by_method in runs:
        bt = by_method.get('bittorrent')
        if not bt:
            continue
        for node in bt['nodes']:
            worst_dl = max(worst_dl, node.get('downloaded_bytes') or 0)
            worst_wire = max(worst_wire, node.get('wire_rx_bytes') or 0)
    return {'nonzero_bytes': image['nonzero_bytes'], 'extents': extents,
            'piece_length': torrent_info['piece_length'],
            'limit_bytes': limit, 'worst_downloaded_bytes': worst_dl,
            'worst_wire_rx_bytes': worst_wire,
            'ok': worst_dl <= limit}


def print_publish(pub):
    c = pub.get('create') or {}
    if c:
        print('create vs sha256sum (%d MiB): warm %.2f / %.2f s = %.2f x; '
              'cold %.2f / %.2f s = %.2f x; (Python hashlib sha256, warm: '
              '%.2f s)' % (
                  c['size'] // MiB, c['create_warm'], c['sha256sum_warm'],
                  c['create_warm'] / c['sha256sum_warm'],
                  c['create_cold'], c['sha256sum_cold'],
                  c['create_cold'] / c['sha256sum_cold'],
                  c['hashlib_sha256_warm']))
    p = pub.get('publish') or {}
    if p.get('skipped'):
        print('publish: skipped (%s)' % p['skipped'])
    elif p:
        print('publish: first %.2f s, same image for another node %.3f s, '
              'after a restart %.3f s (cached torrent)' % (
                  p['first'], p['again'], p['after_restart']))
    if pub.get('error'):
        print('publish FAILED: %s' % pub['error'])


def run_levers(args, out):
    image_size = args.image_size_mib * MiB
    state_dir, temporary = lab_state_dir(
        args, (max(args.nodes) + 1) * (image_size + 16 * MiB))
    if args.variants_file:
        with open(args.variants_file) as f:
            variants = [Variant(**v) for v in json.load(f)]
    else:
        variants = lever_variants()
    if args.only:
        variants = [v for v in variants
                    if v is variants[0] or v.name in args.only]
    report = {'mode': 'levers', 'machine': machine(),
              'config': {'nodes': args.nodes, 'image_size': image_size,
                         'rate_mbit': args.rate_mbit,
                         'repeat': args.repeat}, 'runs': []}
    started = time.monotonic()
    try:
        with Bench(state_dir, max(args.nodes), image_size, args.rate_mbit,
                   sparse=args.sparse) as bench:
            for n in args.nodes:
                hosts = bench.swarm.hosts[:n]
                for rep in range(args.repeat):
                    for variant in variants:
                        res = bench.run_bittorrent(hosts, variant)
                        res['nodes_count'] = n
                        res['repeat'] = rep
                        report['runs'].append(res)
                        print('N=%-3d %-30s %7s s  cpu %3.0f%%  seeder up '
                              '%.2f x F%s' % (
                                  n, variant.name, fmt(res['seconds']),
                                  100 * res['cpu']['busy'],
                                  (res['seeder_uploaded_bytes'] or 0)
                                  / image_size,
                                  '' if res['ok'] else '  FAILED'),
                              flush=True)
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
    report['seconds'] = round(time.monotonic() - started, 1)
    bound = wire_seconds(image_size, args.rate_mbit)
    summary = []
    for n in args.nodes:
        base = [r['seconds'] for r in report['runs']
                if r['nodes_count'] == n and r['variant'] == variants[0].name
                and r['seconds']]
        base_med = statistics.median(base) if base else None
        for variant in variants:
            mine = [r for r in report['runs'] if r['nodes_count'] == n
                    and r['variant'] == variant.name]
            secs = [r['seconds'] for r in mine if r['seconds']]
            med = statistics.median(secs) if secs else None
            summary.append({
                'nodes': n, 'variant': variant.name,
                'detail': variant.describe(), 'seconds': secs,
                'median': med,
                'over_baseline': round(med / base_med, 3)
                if med and base_med else None,
                'over_wire': round(med / bound, 2) if med and bound
                else None,
                'seeder_up_over_image': round(statistics.median(
                    (r['seeder_uploaded_bytes'] or 0) / image_size
                    for r in mine), 2) if mine else None,
                'own_cpu_seconds': round(statistics.median(
                    r['own_cpu_seconds'] for r in mine), 1) if mine else None,
                'cpu_busy': round(statistics.mean(
                    r['cpu']['busy'] for r in mine), 2) if mine else None,
                'failures': sum(1 for r in mine if not r['ok'])})
    report['summary'] = summary
    print()
    print('levers: %d MiB random image, %g Mbit/s, F/B = %.2f s, medians of '
          '%d runs' % (image_size // MiB, args.rate_mbit, bound or 0,
                       args.repeat))
    print('%4s %-30s %8s %7s %6s %6s %5s %6s  %s' % (
        'N', 'variant', 'median s', 'x base', 'x F/B', 'seedup', 'cpu',
        'own s', 'settings'))
    for s in summary:
        print('%4d %-30s %8s %7s %6s %6s %5s %6s  %s' % (
            s['nodes'], s['variant'], fmt(s['median']),
            fmt(s['over_baseline'], '%.3f'), fmt(s['over_wire']),
            fmt(s['seeder_up_over_image']), fmt(s['cpu_busy']),
            fmt(s['own_cpu_seconds'], '%.1f'), s['detail']))
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, 'levers.json'), report)
    print('wrote %s (%.0f s)' % (os.path.join(out, 'levers.json'),
                                 report['seconds']))
    return 0


def run_rss(args, out):
    """Peak RSS of one agent writing a large image over an unshaped link."""
    size = args.rss_image_gib * 1024 * MiB
    # On disk, not tmpfs: the image and the loop device's file are 2 x the
    # size, and a disk slower than the link is what fills the writer's
    # disk queue, the worst case for its memory.
    if not args.tmp_dir:
        args.tmp_dir = tempfile.gettempdir()
    state_dir, temporary = lab_state_dir(args)
    variant = base_variant(args)
    report = {'mode': 'rss', 'machine': machine(),
              'config': {'image_size': size, 'variant': variant.describe()}}
    started = time.monotonic()
    try:
        usage = shutil.disk_usage(os.path.dirname(state_dir) or '/')
        if usage.free < 3 * size:
            raise SystemExit('--rss needs %d GiB free in %s' % (
                3 * size // 2 ** 30, state_dir))
        with Bench(state_dir, 1, size, None) as bench:
            hosts = bench.swarm.hosts[:1]
            print('image ready (%.0f s)' % (time.monotonic() - started),
                  flush=True)
            if args.publish:
                report['publish'] = bench.run_publish()
                print_publish(report['publish'])
            res = bench.run_bittorrent(hosts, variant)
            report['bittorrent'] = res
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
    node = res['nodes'][0]
    report['seconds'] = round(time.monotonic() - started, 1)
    print('writer: %s, %.1f s (download %.1f s, verify %.1f s), peak RSS '
          'VmHWM %.1f MiB (sampled VmRSS peak %.1f MiB); seeder VmHWM '
          '%.1f MiB; cpu busy %.0f%%' % (
              'verified' if node['ok'] else 'FAILED ' + node['error'],
              node['seconds'] or -1, node['download_seconds'] or -1,
              node['verify_seconds'] or -1, (node['vmhwm_kib'] or 0) / 1024,
              (node['vmrss_sampled_peak_kib'] or 0) / 1024,
              (res['seeder_vmhwm_kib'] or 0) / 1024,
              100 * res['cpu']['busy']))
    ok = node['ok'] and (node['vmhwm_kib'] or 0) <= 200 * 1024
    print('target agent peak RSS <= 200 MiB writing %d GiB: %s' % (
        args.rss_image_gib, 'met' if ok else 'NOT met'))
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, 'rss.json'), report)
    return 0 if node['ok'] else 1


def _setting(value):
    name, sep, raw = value.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError('%r is not NAME=VALUE' % value)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return name, parsed


def _nodes(value):
    return [int(v) for v in value.split(',') if v]


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m tests.lab.bench',
        description='Benchmark ironic-bt against HTTP unicast in lab '
                    'namespaces (needs root).')
    p.add_argument('--quick', action='store_true',
                   help='N=%s, %d MiB: under 3 minutes' % (
                       ','.join(map(str, QUICK['nodes'])),
                       QUICK['image_size_mib']))
    p.add_argument('--nodes', type=_nodes,
                   help='comma-separated N values (default 1,2,4,8,16)')
    p.add_argument('--image-size-mib', type=int,
                   help='image size F (default %d, quick %d)' % (
                       FULL['image_size_mib'], QUICK['image_size_mib']))
    p.add_argument('--rate-mbit', type=float, default=DEFAULT_RATE_MBIT,
                   help='link rate B of every host, both directions '
                        '(default %d)' % DEFAULT_RATE_MBIT)
    p.add_argument('--sparse', action='store_true',
                   help='a sparse image (10%% non-zero, 4 extents) instead '
                        'of random data')
    p.add_argument('--methods', type=lambda v: v.split(','),
                   default=['unicast', 'bittorrent'])
    p.add_argument('--output-dir', default='.bench')
    p.add_argument('--state-dir', help='keep lab files and logs here')
    p.add_argument('--tmp-dir', default=None,
                   help='where the temporary state directory (loop '
                        'backing files) goes (default: /dev/shm if it has '
                        'room, else $TMPDIR; --rss: $TMPDIR)')
    p.add_argument('--no-publish', dest='publish', action='store_false',
                   help='skip the torrent creation / publisher timing')
    g = p.add_argument_group('experiments (use the library, not the CLI)')
    g.add_argument('--setting', type=_setting, action='append', default=[],
                   metavar='NAME=VALUE',
                   help='libtorrent setting for seeder and writers')
    g.add_argument('--writer-setting', type=_setting, action='append',
                   default=[], metavar='NAME=VALUE')
    g.add_argument('--seeder-setting', type=_setting, action='append',
                   default=[], metavar='NAME=VALUE')
    g.add_argument('--piece-size', type=int, metavar='BYTES')
    g.add_argument('--interval', type=int, default=5,
                   help='tracker announce interval')
    g.add_argument('--mesh', action='store_true',
                   help='give every writer all the others as --peer')
    g.add_argument('--connect-out', action='store_true',
                   help='the seeder connects to every writer')
    g.add_argument('--super-seed', action='store_true')
    g.add_argument('--seed-mode', action='store_true',
                   help='the seeder hashes each piece on its first send')
    g.add_argument('--plain', action='store_true',
                   help='a plain torrent instead of an SSL swarm (the '
                        'product\'s default)')
    g.add_argument('--diag', type=float, metavar='SECONDS',
                   help='writers log their peers this often (in the logs '
                        'under --state-dir)')
    g.add_argument('--library', action='store_true',
                   help='run seeder and writers through the library even '
                        'without overrides')
    g = p.add_argument_group('other modes')
    g.add_argument('--levers', action='store_true',
                   help='bittorrent only: every lever variant against the '
                        'baseline, in one run')
    g.add_argument('--only', type=lambda v: v.split(','),
                   help='with --levers: these variants (and baseline)')
    g.add_argument('--variants-file', metavar='JSON',
                   help='with --levers: a JSON list of Variant fields '
                        'instead of the built-in levers (the first one is '
                        'the baseline)')
    g.add_argument('--repeat', type=int, default=2,
                   help='with --levers: runs per variant')
    g.add_argument('--speed', action='store_true',
                   help='line rate: 1->1 unshaped (1 GiB), 1->4 and 1->8 at '
                        '1 Gbit/s (256 MiB), HTTP against bittorrent with '
                        'CPU per GiB and peak RSS; --nodes picks cases; '
                        'output in speed.json (tests/lab/bench_speed.py)')
    g.add_argument('--rss', action='store_true',
                   help='peak RSS of one writer writing a large image')
    g.add_argument('--rss-image-gib', type=int, default=4)
    g.add_argument('--cloud', action='store_true',
                   help='through Ironic on the local cloud: direct against '
                        'bittorrent (default N=1,2,4,8, 64 MiB; quick '
                        'N=1,2,4, 16 MiB; output in .bench/cloud); see '
                        'tests/lab/bench_cloud.py')
    g.add_argument('--cloud-database', choices=('sqlite', 'mariadb'),
                   default='sqlite',
                   help='with --cloud: ironic\'s database (MariaDB on a '
                        'unix socket: tests/lab/cloud_mariadb.py)')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print('the benchmark needs root (network namespaces, loop devices)',
              file=sys.stderr)
        return 2
    if args.cloud:
        from tests.lab import bench_cloud
        return bench_cloud.run(args)
    if args.speed:
        from tests.lab import bench_speed
        return bench_speed.run(args, os.path.abspath(args.output_dir))
    defaults = QUICK if args.quick else FULL
    if args.nodes is None:
        args.nodes = list(defaults['nodes'])
    if args.image_size_mib is None:
        args.image_size_mib = defaults['image_size_mib']
    out = os.path.abspath(args.output_dir)
    if args.rss:
        return run_rss(args, out)
    if args.levers:
        if not args.nodes or args.nodes == defaults['nodes']:
            args.nodes = [16]
        return run_levers(args, out)
    return run_scaling(args, out)


if __name__ == '__main__':
    sys.exit(main())
