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

"""A swarm without Ironic: one seeder host and N writer hosts.

Each host is a network namespace on the lab bridge; each writer writes to a
loop device of its own through the real ``ironic-bt`` command. This is the
component-level harness of the functional tests, the swarm demo and the
benchmark's fast mode. ``python -m tests.lab.swarm --nodes 3`` runs the
demo and prints a summary.
"""

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from tests.lab import clients as clients_lib
from tests.lab import disks
from tests.lab import images
from tests.lab import net
from tests.lab import procs

PYTHON = sys.executable
CLI = [PYTHON, '-m', 'ironic_bt.cmd.cli']
SEED_PORT = 6881
TRACKER_PORT = 6969
HTTP_PORT = 8080


@dataclasses.dataclass
class NodeResult:
    name: str
    ip: str
    device: str
    ok: bool
    seconds: float
    downloaded_bytes: int
    uploaded_bytes: int
    sha256: str
    error: str = ''
    from_seeder_bytes: int = 0
    #: What the writer counted from web seeds (HTTP).
    web_seed_bytes: int = 0
    resumed_bytes: int = 0
    hash_failures: int = 0


@dataclasses.dataclass
class SwarmResult:
    method: str
    image_size: int
    image_sha256: str
    nodes: list
    seconds: float
    seeder_uploaded_bytes: int
    #: Bytes the web seed's HTTP server sent, per client address.
    http_sent: dict = dataclasses.field(default_factory=dict)
    #: Standard clients in the swarm: name -> '' if they got the whole
    #: image, else what went wrong.
    clients: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self):
        return all(n.ok for n in self.nodes)

    def to_dict(self):
        return dataclasses.asdict(self)


def json_lines(path):
    out = []
    try:
        with open(path, errors='replace') as f:
            for line in f:
                line = line.strip()
                if line.startswith('{'):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out


class Swarm:
    """Lab hosts for one seeder and ``nodes`` writers, with loop devices."""

    def __init__(self, state_dir, nodes, disk_size, rate_mbit=None,
                 prefix='ibs', subnet=None):
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        self.lab = net.Lab(self.state_dir, prefix=prefix,
                           subnet=subnet or net.free_subnet(),
                           rate_mbit=rate_mbit)
        self.nodes_wanted = nodes
        self.disk_size = disk_size
        self.seed_host = None
        self.hosts = []
        self.devices = {}

    def __enter__(self):
        self.lab.__enter__()
        try:
            self.seed_host = self.lab.add_host('seed')
            for i in range(1, self.nodes_wanted + 1):
                host = self.lab.add_host('n%d' % i)
                dev = disks.create_loop(
                    self.lab, os.path.join(self.state_dir, 'n%d.disk' % i),
                    self.disk_size)
                disks.assert_lab_loop(dev, self.lab)
                self.hosts.append(host)
                self.devices[host.name] = dev
            self.lab.pin_neighbours()
        except BaseException:
            self.lab.teardown()
            raise
        return self

    def __exit__(self, *exc):
        return self.lab.__exit__(*exc)

    def log(self, name):
        return os.path.join(self.state_dir, '%s.log' % name)

    def start_seeder(self, torrent_path, image_path, extra=()):
        ip = self.seed_host.ip
        proc = self.seed_host.popen(
            CLI + ['seed', torrent_path, image_path,
                   '--listen', '%s:%d' % (ip, SEED_PORT),
                   '--with-tracker', '%s:%d' % (ip, TRACKER_PORT),
                   '--interval', '5'] + list(extra),
            self.log('seeder'))
        procs.wait_port(ip, TRACKER_PORT, timeout=30,
                        netns=self.seed_host.netns, proc=proc,
                        log_path=self.log('seeder'))
        return proc

    def start_http(self, root):
        """Serve ``root`` over HTTP from the seed host.

        As the conductor's web server serves ``[deploy]http_root``: a
        process of its own, so it outlives the seeder.
        """
        ip = self.seed_host.ip
        proc = self.seed_host.popen(
            [PYTHON, '-m', 'tests.lab.cloud_http', '--bind', ip,
             '--port', str(HTTP_PORT), '--root', root,
             '--stats', self.http_stats], self.log('http'))
        procs.wait_port(ip, HTTP_PORT, timeout=30,
                        netns=self.seed_host.netns, proc=proc,
                        log_path=self.log('http'))
        return proc

    @property
    def http_stats(self):
        return os.path.join(self.state_dir, 'http-stats.json')

    def http_sent(self):
        try:
            with open(self.http_stats) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def web_seed_url(self, name):
        return 'http://%s:%d/%s' % (self.seed_host.ip, HTTP_PORT, name)

    def dirty(self, size):
        """Fill the first ``size`` bytes of every disk with a pattern.

        So that a run finds none of the image a previous run wrote.
        """
        for dev in self.devices.values():
            disks.assert_lab_loop(dev, self.lab)
            with open(dev, 'r+b') as f:
                for offset in range(0, size, 1 << 20):
                    f.write(b'\xa5' * min(1 << 20, size - offset))
                os.fsync(f.fileno())

    @property
    def tracker_url(self):
        return 'http://%s:%d/announce' % (self.seed_host.ip, TRACKER_PORT)

    def start_writer(self, host, torrent_path, linger=30, extra=()):
        dev = self.devices[host.name]
        disks.assert_lab_loop(dev, self.lab)
        return host.popen(
            CLI + ['write', torrent_path, dev,
                   '--tracker', '%s?node=%s' % (self.tracker_url, host.name),
                   '--peer', '%s:%d' % (self.seed_host.ip, SEED_PORT),
                   '--listen', '%s:%d' % (host.ip, SEED_PORT),
                   '--linger', str(linger), '--progress-interval', '2',
                   '--stall-timeout', '120', '--json'] + list(extra),
            self.log(host.name))

    def stop(self, proc, timeout=15):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except Exception:
            proc.kill()
            proc.wait()

    def verify(self, host, image):
        return disks.sha256_region(self.devices[host.name],
                                   image.size) == image.sha256


def run_bittorrent(swarm, image, linger=30, timeout=600, web_seed=False,
                   fault=None, writer_extra=(), clients=()):
    """Seed ``image`` and write it to every node; verify every disk.

    :param web_seed: also serve the image over HTTP from the seed host, in
        a process of its own, and give its URL to the writers as their web
        seed (the fallback).
    :param fault: called as ``fault(swarm, seeder, writers, start)`` once
        every writer runs, to inject a fault; it may replace processes in
        ``writers`` (a dict of host name to process).
    :param clients: functions that take the torrent's path and the
        tracker's URL and return a :class:`tests.lab.clients.Client` in a
        host of their own; each is
        started with the seeder, before the writers, and must have the
        whole image before the seeder stops.
    """
    torrent_path = os.path.join(swarm.state_dir, 'image.torrent')
    subprocess_run = swarm.lab.host('seed').run
    subprocess_run(CLI + ['create', image.path, '-o', torrent_path],
                   check=True, capture_output=True)
    extra = list(writer_extra)
    http = None
    if web_seed:
        if os.path.exists(swarm.http_stats):
            os.unlink(swarm.http_stats)
        http = swarm.start_http(os.path.dirname(image.path))
        extra += ['--web-seed',
                  swarm.web_seed_url(os.path.basename(image.path))]
    seeder = swarm.start_seeder(torrent_path, image.path)
    others = []
    results = []
    writers = {}
    try:
        for make in clients:
            others.append(make(torrent_path, swarm.tracker_url).start())
        start = time.monotonic()
        writers.update({h.name: swarm.start_writer(
            h, torrent_path, linger=linger, extra=extra)
            for h in swarm.hosts})
        if fault is not None:
            seeder = fault(swarm, seeder, writers, start) or seeder
        for host in swarm.hosts:
            proc = writers[host.name]
            remaining = max(1, timeout - (time.monotonic() - start))
            try:
                proc.wait(remaining)
            except Exception:
                swarm.stop(proc)
            lines = json_lines(swarm.log(host.name))
            res = lines[-1] if lines and 'sha256' in lines[-1] else None
            error = '' if res else procs.tail_log(swarm.log(host.name), 5)
            ok = bool(res) and proc.returncode == 0 and swarm.verify(
                host, image)
            results.append(NodeResult(
                name=host.name, ip=host.ip,
                device=swarm.devices[host.name], ok=ok,
                seconds=(res['seconds'] - res['linger_seconds']
                         if res else -1),
                downloaded_bytes=res['downloaded_bytes'] if res else 0,
                uploaded_bytes=res['uploaded_bytes'] if res else 0,
                sha256=res['sha256'] if res else '', error=error,
                from_seeder_bytes=(res['downloaded_from_seeder_bytes']
                                   if res else 0),
                web_seed_bytes=(res['downloaded_from_web_seed_bytes']
                                if res else 0),
                resumed_bytes=res['resumed_bytes'] if res else 0,
                hash_failures=res['hash_failures'] if res else 0))
        done = clients_lib.wait_complete(
            others, image, max(1, timeout - (time.monotonic() - start)))
    finally:
        for client in others:
            client.stop()
        for proc in writers.values():
            swarm.stop(proc)
        swarm.stop(seeder)
        if http is not None:
            swarm.stop(http)
    seeder_lines = json_lines(swarm.log('seeder'))
    uploaded = seeder_lines[-1].get('uploaded_bytes', 0) if seeder_lines \
        else 0
    return SwarmResult(
        method='bittorrent', image_size=image.size,
        image_sha256=image.sha256, nodes=results,
        seconds=max((n.seconds for n in results), default=0),
        seeder_uploaded_bytes=uploaded, http_sent=swarm.http_sent(),
        clients=done)


def summary(result):
    lines = ['%-6s %-15s %-12s %9s %14s %14s  %s' % (
        'node', 'address', 'device', 'seconds', 'from network',
        'uploaded', 'result')]
    for n in result.nodes:
        lines.append('%-6s %-15s %-12s %9.2f %14d %14d  %s' % (
            n.name, n.ip, n.device, n.seconds, n.downloaded_bytes,
            n.uploaded_bytes, 'verified' if n.ok else 'FAILED ' + n.error))
    lines.append('image: %d bytes, sha256 %s; seeder uploaded %d bytes '
                 '(%.2f x the image); slowest node %.2f s' % (
                     result.image_size, result.image_sha256,
                     result.seeder_uploaded_bytes,
                     result.seeder_uploaded_bytes / float(result.image_size),
                     result.seconds))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m tests.lab.swarm',
        description='Swarm demo: one seeder with its built-in tracker and '
                    'N writers, each in its own network namespace writing '
                    'to its own loop device; prints a summary and one JSON '
                    'line. Needs root.')
    parser.add_argument('--nodes', type=int, default=3)
    parser.add_argument('--image-size-mib', type=int, default=64)
    parser.add_argument('--rate-mbit', type=float, default=200)
    parser.add_argument('--state-dir')
    args = parser.parse_args(argv)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix='ironic-bt-swarm-')
    try:
        with Swarm(state_dir, args.nodes,
                   disk_size=(args.image_size_mib + 16) * 1024 * 1024,
                   rate_mbit=args.rate_mbit) as swarm:
            image = images.make_disk_image(
                os.path.join(state_dir, 'image.raw'),
                size_mib=args.image_size_mib)
            result = run_bittorrent(swarm, image, linger=10)
        print(summary(result))
        print(json.dumps(result.to_dict()))
        return 0 if result.ok else 1
    finally:
        if not args.state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
