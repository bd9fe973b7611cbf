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

"""One benchmark run: the lab, the seeder, N clients, their timings."""

import contextlib
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time


from ironic_bt.common import certs
from ironic_bt.common import publication
from ironic_bt.common import torrent as torrent_mod
from tests.lab import bench_metrics
from tests.lab import bench_variants
from tests.lab import disks
from tests.lab import images
from tests.lab import procs
from tests.lab import swarm as lab_swarm

PYTHON = sys.executable
WORKER = [PYTHON, '-m', 'tests.lab.bench_worker']
SEED_PORT = lab_swarm.SEED_PORT
TRACKER_PORT = lab_swarm.TRACKER_PORT
HTTP_PORT = lab_swarm.HTTP_PORT
AGENT_PORT = 6881


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
            state_dir, max_nodes,
            disk_size=image_size + 16 * bench_metrics.MiB,
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
            self.nonzero = (images.nonzero_bytes(self.image.path)
                            if self.sparse else self.image.size)
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
            piece_size = bench_variants.old_piece_size(self.image.size)
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
            bench_metrics.wipe(
                self.swarm.devices[host.name], self.image.size, self.lab)

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
            lambda: all(bench_metrics.log_event(log, 'ready') is not None
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
        cpu0 = bench_metrics.cpu_times()
        pids = [proc.pid for proc, _log in clients.values()] + list(
            extra_pids)
        own0 = {pid: bench_metrics.proc_cpu(pid) for pid in pids}
        own1 = dict(own0)
        done = {}
        peak = {}
        deadline = time.monotonic() + self.timeout
        seed = self.seed_host
        while len(done) < len(clients) and time.monotonic() < deadline:
            for pid in pids:
                # The last value seen: a client that exits is not lost.
                own1[pid] = max(own1[pid], bench_metrics.proc_cpu(pid))
            if timeline is not None:
                wire = bench_metrics.wire_counters(hosts + [seed])
                timeline.append([round(time.time() - start_at, 2),
                                 wire[seed.name][1],
                                 [wire[h.name][0] for h in hosts]])
            for name, (proc, log) in clients.items():
                if name in done:
                    continue
                if rss is not None:
                    peak[name] = max(peak.get(name, 0),
                                     bench_metrics.vmrss(proc.pid))
                ev = bench_metrics.log_event(log, 'verified')
                if ev is not None:
                    done[name] = ev['at']
                elif proc.poll() is not None:
                    done[name] = None
            time.sleep(0.1)
        cpu1 = bench_metrics.cpu_times()
        for pid in pids:
            own1[pid] = max(own1[pid], bench_metrics.proc_cpu(pid))
        own = sum(own1.values()) - sum(own0.values())
        for proc, _log in clients.values():
            try:
                proc.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._stop(proc)
        if rss is not None:
            rss.update(peak)
        busy = bench_metrics.cpu_busy(cpu0, cpu1)
        window = sum(cpu1.values()) - sum(cpu0.values())
        busy['ours'] = round(own / window, 3) if window else None
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
        wire0 = bench_metrics.wire_counters(hosts + [seed])
        start_at = self._go(clients, start_file)
        timeline = []
        cpu = self._wait_clients(clients, start_at, hosts,
                                 timeline=timeline,
                                 extra_pids=[self.http.pid])
        wire1 = bench_metrics.wire_counters(hosts + [seed])
        verified = self._verify(hosts)
        nodes = []
        for host in hosts:
            proc, log = clients[host.name]
            events = bench_metrics.read_events(log)
            ev = bench_metrics.find_event(events, 'verified') or {}
            usage = bench_metrics.find_event(events, 'usage') or {}
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
        variant = variant or bench_variants.Variant()
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
            wire0 = bench_metrics.wire_counters(hosts + [seed])
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
            wire1 = bench_metrics.wire_counters(hosts + [seed])
        finally:
            for proc, _log in clients.values():
                self._stop(proc)
            self._stop(seeder)
        seed_events = bench_metrics.read_events(seed_log)
        done = [e for e in seed_events
                if 'uploaded_bytes' in e] or [{}]
        seed_usage = bench_metrics.find_event(seed_events, 'usage') or {}
        verified = self._verify(hosts)
        nodes = []
        for host in hosts:
            proc, log = clients[host.name]
            events = bench_metrics.read_events(log)
            ev = bench_metrics.find_event(events, 'verified')
            res = bench_metrics.write_result(events) or {}
            usage = bench_metrics.find_event(events, 'usage') or {}
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
        return bench_metrics.log_event(log, 'zero') or {
            'error': procs.tail_log(log, 10)}

    def run_publish(self):
        log = self._fresh_log('publish')
        data_dir = os.path.join(self.state_dir, 'publisher')
        proc = self.seed_host.popen(
            WORKER + ['publish', self.image.path, '--listen',
                      '%s:%d' % (self.seed_host.ip, SEED_PORT),
                      '--data-dir', data_dir], log)
        proc.wait(self.timeout)
        events = bench_metrics.read_events(log)
        return {'create': bench_metrics.find_event(events, 'create'),
                'publish': bench_metrics.find_event(events, 'publish'),
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
