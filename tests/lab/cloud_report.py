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

"""Progress, verification and figures of the local cloud's deploys.

Where the bytes came from:

* ``direct``: every node downloads the image from the cloud's HTTP server,
  which counts the bytes it sent to each address
  (:mod:`tests.lab.cloud_http`);
* ``bittorrent``: the agent's deploy result, if the conductor records it
  in the node's ``driver_internal_info`` (see :data:`BT_RESULT_KEYS`),
  else the last figures the node announced to the built-in tracker. The
  conductor's own share is the seeder's ``uploaded`` on the tracker plus
  any HTTP (web seed) bytes.
"""

import datetime
import json
import sys
import time
import urllib.request

from tests.lab import disks

#: Keys of ``driver_internal_info`` where the conductor may record the
#: agent's ``deploy_result`` (``device``, ``downloaded_bytes``,
#: ``uploaded_bytes``, ``seconds``, ``sha256``, ``size``,
#: ``zero_pieces``; see the architecture page). The first one found wins.
#: An optional ``downloaded_from_seeder_bytes`` there splits a node's
#: download between the conductor and its peers.
BT_RESULT_KEYS = ('bittorrent_deploy_result', 'bittorrent_result',
                  'bittorrent')


def parse_time(value):
    """Epoch seconds of an ironic timestamp (ISO 8601, maybe naive UTC)."""
    if not value:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    dt = datetime.datetime.fromisoformat(str(value).replace('Z', '+00:00'))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fetch_json(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _mib(nbytes):
    return '-' if nbytes is None else '%.1f' % (nbytes / 1048576)


class Progress:
    """Shows each node's state while a deploy runs; remembers figures.

    On a terminal the table is redrawn every second; otherwise a line is
    printed whenever a node's state, step or progress (in 10 % steps)
    changes.
    """

    def __init__(self, cloud, names, interface, size, started,
                 out=sys.stdout):
        self.cloud = cloud
        self.names = names
        self.interface = interface
        self.size = size
        self.started = started
        self.out = out
        self.tty = out.isatty()
        self.by_uuid = {cloud.nodes[n]['uuid']: n for n in names}
        self.gateway = cloud.state['gateway_ip']
        self.tracker = {}        # node -> last announced peer dict
        self.seeder = {}         # the conductor's seeder peer
        self.notes = []
        self.kill_pending = None
        self._drawn = 0
        self._last = {}

    def note(self, message):
        self.notes.append((time.time() - self.started, message))
        self._print('[%5.1fs] %s' % (self.notes[-1][0], message))

    def _print(self, line):
        if self.tty and self._drawn:
            # Keep the table at the bottom: erase it, print, redraw later.
            self.out.write('\x1b[%dA\x1b[J' % self._drawn)
            self._drawn = 0
        self.out.write(line + '\n')
        self.out.flush()

    def _poll_tracker(self):
        status = fetch_json(self.cloud.state['tracker_status_url'], 0.5)
        for swarm in (status or {}).get('swarms', []):
            for peer in swarm.get('peers', []):
                name = self.by_uuid.get(peer.get('node'))
                if name:
                    self.tracker[name] = peer
                elif peer.get('ip') == self.gateway:
                    self.seeder = peer

    def _left(self, name):
        peer = self.tracker.get(name)
        if not peer or peer.get('left') is None:
            return None
        return peer['left']

    def update(self, nodes):
        if self.interface == 'bittorrent':
            self._poll_tracker()
        elapsed = time.time() - self.started
        rows = []
        for name in self.names:
            node = nodes[name]
            step = (node.deploy_step or {}).get('step') or ''
            left = self._left(name)
            done = None if left is None or not self.size else \
                100.0 * (self.size - left) / self.size
            agent = 'up' if self.cloud.agent_alive(name) else 'down'
            rows.append((name, node.provision_state, step, done, agent))
        if self.tty:
            lines = ['[%5.1fs] %-8s %-16s %-24s %6s %s' % (
                elapsed, 'node', 'state', 'step', 'done', 'agent')]
            for name, state, step, done, agent in rows:
                lines.append('         %-8s %-16s %-24s %6s %s' % (
                    name, state, step,
                    '-' if done is None else '%.0f%%' % done, agent))
            if self._drawn:
                self.out.write('\x1b[%dA\x1b[J' % self._drawn)
            self.out.write('\n'.join(lines) + '\n')
            self.out.flush()
            self._drawn = len(lines)
            return
        for name, state, step, done, agent in rows:
            key = (state, step, None if done is None else int(done // 10),
                   agent)
            if self._last.get(name) != key:
                self._last[name] = key
                self._print('[%5.1fs] %-8s %-16s %-24s %s agent %s' % (
                    elapsed, name, state, step,
                    '' if done is None else '%3.0f%%' % done, agent))

    def finish(self):
        self._drawn = 0


def bittorrent_figures(node, announced):
    """A node's bittorrent byte counts, and where they came from.

    This is the hook for the conductor's record of the agent's result:
    see :data:`BT_RESULT_KEYS`.

    :param node: the node (openstacksdk) after the deploy.
    :param announced: the node's last peer entry on the tracker, or None.
    :returns: (downloaded, uploaded, from_seeder or None, source)
    """
    info = node.driver_internal_info or {}
    for key in BT_RESULT_KEYS:
        result = info.get(key)
        if isinstance(result, dict) and 'downloaded_bytes' in result:
            return (result.get('downloaded_bytes'),
                    result.get('uploaded_bytes'),
                    result.get('downloaded_from_seeder_bytes'),
                    'driver_internal_info/%s' % key)
    if announced:
        return (announced.get('downloaded'), announced.get('uploaded'),
                None, 'tracker')
    return None, None, None, 'none'


def verify(cloud, name, image):
    """sha256 of the first image-size bytes of the node's disk."""
    device = cloud.nodes[name]['device']
    disks.assert_lab_loop(device, cloud.state_dir)
    return disks.sha256_region(device, image.size) == image.sha256


def build_report(cloud, names, nodes, interface, image, started, progress,
                 http_before, killed):
    http_after = read_json(cloud.state['http_stats']) or {}

    def http_bytes(ip):
        return http_after.get(ip, 0) - http_before.get(ip, 0)

    rows = []
    for name in names:
        node = nodes[name]
        ip = cloud.nodes[name]['ip']
        ok = None
        if node.provision_state == 'active':
            ok = verify(cloud, name, image)
        web = http_bytes(ip)
        if interface == 'bittorrent':
            down, up, seeder, source = bittorrent_figures(
                node, progress.tracker.get(name))
            from_conductor = None if seeder is None else seeder + web
            from_peers = (None if seeder is None or down is None
                          else down - seeder)
        else:
            down, up, source = web, 0, 'http server log'
            from_conductor, from_peers = web, 0
        finished = parse_time(node.provision_updated_at)
        rows.append({
            'node': name, 'uuid': node.id, 'ip': ip,
            'state': node.provision_state,
            'seconds': round(finished - started, 1) if finished else None,
            'verified': ok,
            'downloaded': down, 'uploaded': up,
            'from_conductor': from_conductor, 'from_peers': from_peers,
            'http_bytes': web, 'source': source,
            'agent_killed': name in killed,
            'last_error': node.last_error,
        })
    done = [r['seconds'] for r in rows if r['state'] == 'active'
            and r['seconds'] is not None]
    gateway = cloud.state['gateway_ip']
    seeder_up = progress.seeder.get('uploaded') if progress.seeder else None
    return {
        'interface': interface,
        'nodes': rows,
        'image': {'url': image.path, 'size': image.size,
                  'sha256': image.sha256},
        'rate_mbit': cloud.state.get('rate_mbit'),
        'wall_seconds': round(time.time() - started, 1),
        'slowest_active_seconds': max(done) if done else None,
        'conductor': {
            'http_bytes_to_nodes': sum(r['http_bytes'] for r in rows),
            'http_bytes_to_itself': http_bytes(gateway),
            'seeder_uploaded': seeder_up,
        },
        'killed_agents': killed,
        'notes': [m for _, m in progress.notes],
        'ok': report_ok({'nodes': rows}, expect_failed=tuple(killed)),
    }


def report_ok(report, expect_failed=()):
    """Whether a deploy went as expected.

    Every node must be active and verified, except those expected to
    fail, which must be in "deploy failed" with a last_error.
    """
    for row in report['nodes']:
        if row['node'] in expect_failed:
            if row['state'] != 'deploy failed' or not row['last_error']:
                return False
        elif row['state'] != 'active' or row['verified'] is not True:
            return False
    return True


def print_table(rows, out=sys.stdout):
    if not rows:
        return
    keys = list(rows[0])
    text = [[str('' if r[k] is None else r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(t[i]) for t in text))
              for i, k in enumerate(keys)]
    out.write('  '.join(k.ljust(w) for k, w in zip(keys, widths)).rstrip()
              + '\n')
    for t in text:
        out.write('  '.join(v.ljust(w) for v, w in zip(t, widths)).rstrip()
                  + '\n')
    out.flush()


def print_summary(report, out=sys.stdout):
    rows = []
    for r in report['nodes']:
        if r['state'] == 'active':
            result = 'active, verified' if r['verified'] else \
                'active, DISK MISMATCH'
        else:
            result = '%s: %s' % (r['state'], r['last_error'] or '')
        rows.append({
            'node': r['node'],
            'seconds': r['seconds'],
            'MiB from conductor': _mib(r['from_conductor']),
            'MiB from peers': _mib(r['from_peers']),
            'MiB uploaded': _mib(r['uploaded']),
            'result': result,
        })
    out.write('\n%s deploy of %.1f MiB to %d node(s)%s:\n' % (
        report['interface'], report['image']['size'] / 1048576,
        len(rows), ' at %s Mbit/s' % report['rate_mbit']
        if report['rate_mbit'] else ''))
    print_table(rows, out)
    cond = report['conductor']
    out.write('conductor: HTTP %s MiB to nodes, %s MiB to itself; seeder '
              'uploaded %s MiB; slowest active node %ss; %s\n' % (
                  _mib(cond['http_bytes_to_nodes']),
                  _mib(cond['http_bytes_to_itself']),
                  _mib(cond['seeder_uploaded']),
                  report['slowest_active_seconds'],
                  'OK' if report['ok'] else 'FAILED'))
    out.write(json.dumps(report, sort_keys=True) + '\n')
    out.flush()
