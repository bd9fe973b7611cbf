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
        self.terminal_at = {}

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
        now = time.time()
        for swarm in (status or {}).get('swarms', []):
            for peer in swarm.get('peers', []):
                # The same image has the same info-hash every time: skip
                # what a previous deploy's agents announced.
                if now - peer.get('seconds_since_seen', 0) < self.started:
                    continue
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
            if node.provision_state in ('active', 'deploy failed'):
                self.terminal_at.setdefault(name, time.time())
            step = (node.deploy_step or {}).get('step') or ''
            left = self._left(name)
            agent = 'up' if self.cloud.agent_alive(name) else 'down'
            rows.append((name, node.provision_state, step, left, agent))
        if self.tty:
            lines = ['[%5.1fs] %-8s %-16s %-24s %9s %s' % (
                elapsed, 'node', 'state', 'step', 'left MiB', 'agent')]
            for name, state, step, left, agent in rows:
                lines.append('         %-8s %-16s %-24s %9s %s' % (
                    name, state, step, _mib(left), agent))
            if self._drawn:
                self.out.write('\x1b[%dA\x1b[J' % self._drawn)
            self.out.write('\n'.join(lines) + '\n')
            self.out.flush()
            self._drawn = len(lines)
            return
        for name, state, step, left, agent in rows:
            # A line per change of state or step, or of "left" by 8 MiB.
            key = (state, step, None if left is None else left >> 23, agent)
            if self._last.get(name) != key:
                self._last[name] = key
                self._print('[%5.1fs] %-8s %-16s %-24s %s agent %s' % (
                    elapsed, name, state, step,
                    '' if left is None else 'left %s MiB' % _mib(left),
                    agent))

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


def fault_figures(node):
    """What the conductor recorded about faults the node's deploy met."""
    info = node.driver_internal_info or {}
    result = info.get('bittorrent_result') or {}
    return {'resumed': result.get('resumed_bytes'),
            'web_seed_bytes': result.get('downloaded_from_web_seed_bytes'),
            'agent_restarts': info.get('bittorrent_agent_restarts', 0)}


# What IPA's stock write path (standby's fix_gpt_partition, "sgdisk -e")
# changes when the disk is bigger than a GPT image: it moves the backup
# GPT to the end of the disk, which rewrites the protective MBR's
# partition entry (CHS end, size) and, in the primary header, its CRC,
# the backup header's LBA and the last usable LBA. Nothing else.
_GPT_RELOCATION_BYTES = {
    0: set(range(446, 462)),
    1: set(range(16, 20)) | set(range(32, 40)) | set(range(48, 56)),
}
_SECTOR = 512


def _differing_sectors(image_path, device, length, limit=64):
    """{sector: [byte offsets]} where ``device`` differs from the image."""
    diffs = {}
    chunk = 4 * 1024 * 1024
    with open(image_path, 'rb') as a, open(device, 'rb') as b:
        offset = 0
        while offset < length:
            x = a.read(min(chunk, length - offset))
            y = b.read(len(x))
            if x != y:
                for s in range(0, len(x), _SECTOR):
                    xs, ys = x[s:s + _SECTOR], y[s:s + _SECTOR]
                    if xs != ys:
                        diffs[(offset + s) // _SECTOR] = [
                            i for i in range(len(xs)) if xs[i] != ys[i]]
                        if len(diffs) >= limit:
                            return diffs
            offset += len(x)
    return diffs


def verify(cloud, name, image):
    """Compare the first image-size bytes of a node's disk to the image.

    :returns: ``exact`` if they hash the same; ``gpt-relocated`` if they
        differ only by IPA's backup GPT relocation (see
        ``_GPT_RELOCATION_BYTES``); otherwise a description of the first
        differences.
    """
    device = cloud.nodes[name]['device']
    disks.assert_lab_loop(device, cloud.state_dir)
    if disks.sha256_region(device, image.size) == image.sha256:
        return 'exact'
    diffs = _differing_sectors(image.path, device, image.size)
    if all(set(offsets) <= _GPT_RELOCATION_BYTES.get(sector, set())
           for sector, offsets in diffs.items()):
        return 'gpt-relocated'
    return 'mismatch in sectors %s' % sorted(diffs)[:16]


def verified(result, strict=False):
    """Whether a verification result counts as a good disk.

    ``direct`` finishes like IPA's standby extension: when sgdisk is
    installed, it moves the backup GPT to the end of a disk bigger than the
    image, after the image was verified. That is accepted unless
    ``strict``, and always reported. ``bittorrent`` leaves the disk byte
    for byte the image (its deploys are checked with ``strict``).
    """
    return result == 'exact' or (result == 'gpt-relocated' and not strict)


def build_report(cloud, names, nodes, interface, image, started, progress,
                 http_before, killed, strict=False):
    http_after = read_json(cloud.state['http_stats']) or {}

    def http_bytes(ip):
        return http_after.get(ip, 0) - http_before.get(ip, 0)

    rows = []
    for name in names:
        node = nodes[name]
        ip = cloud.nodes[name]['ip']
        ok = check = None
        if node.provision_state == 'active':
            check = verify(cloud, name, image)
            ok = verified(check, strict)
        web = http_bytes(ip)
        if interface == 'bittorrent':
            down, up, seeder, source = bittorrent_figures(
                node, progress.tracker.get(name))
            if seeder is None and len(names) == 1:
                seeder = down  # alone in the swarm: all from the seeder
            from_conductor = None if seeder is None else seeder + web
            from_peers = (None if seeder is None or down is None
                          else down - seeder)
        else:
            down, up, source = web, 0, 'http server log'
            from_conductor, from_peers = web, 0
        finished = parse_time(cloud.node_json(node.id).get(
            'provision_updated_at')) or progress.terminal_at.get(name)
        rows.append({
            'node': name, 'uuid': node.id, 'ip': ip,
            'state': node.provision_state,
            'seconds': round(finished - started, 1) if finished else None,
            'verified': ok, 'disk': check,
            'downloaded': down, 'uploaded': up,
            'from_conductor': from_conductor, 'from_peers': from_peers,
            'http_bytes': web, 'source': source,
            'agent_killed': name in killed,
            'last_error': node.last_error,
        })
        rows[-1].update(fault_figures(node))
    done = [r['seconds'] for r in rows if r['state'] == 'active'
            and r['seconds'] is not None]
    gateway = cloud.state['gateway_ip']
    seeder_up = progress.seeder.get('uploaded') if progress.seeder else None
    downloaded = sum(r['downloaded'] or 0 for r in rows)
    to_nodes = sum(r['http_bytes'] for r in rows)
    from_conductor = to_nodes
    if interface == 'bittorrent':
        # Every byte a node got came from the seeder, the web seed or
        # another node; what the nodes uploaded went to each other. The
        # seeder's own count on the tracker lags (it is only as fresh as
        # its last announce), so it is only reported.
        uploads = [r['uploaded'] for r in rows]
        if all(u is not None for u in uploads):
            from_conductor = max(0, downloaded - sum(uploads))
        elif seeder_up is not None:
            from_conductor = seeder_up + to_nodes
    return {
        'interface': interface,
        'nodes': rows,
        'image': {'path': image.path, 'size': image.size,
                  'sha256': image.sha256},
        'strict_verify': strict,
        'totals': {
            'downloaded': downloaded,
            'from_conductor': from_conductor,
            'from_peers': max(0, downloaded - from_conductor),
        },
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
            result = 'active, disk %s%s' % (
                r['disk'], '' if r['verified'] else ' (NOT VERIFIED)')
        else:
            result = '%s: %s' % (r['state'], r['last_error'] or '')
        rows.append({
            'node': r['node'],
            'seconds': r['seconds'],
            'MiB downloaded': _mib(r['downloaded']),
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
    cond, totals = report['conductor'], report['totals']
    out.write('total: %s MiB downloaded by the nodes, %s MiB of it from the '
              'conductor (HTTP %s MiB; seeder per tracker %s MiB), %s MiB '
              'from peers; conductor cache fill %s MiB\n' % (
                  _mib(totals['downloaded']),
                  _mib(totals['from_conductor']),
                  _mib(cond['http_bytes_to_nodes']),
                  _mib(cond['seeder_uploaded']),
                  _mib(totals['from_peers']),
                  _mib(cond['http_bytes_to_itself'])))
    out.write('slowest active node %ss, wall %ss: %s\n' % (
        report['slowest_active_seconds'], report['wall_seconds'],
        'OK' if report['ok'] else 'FAILED'))
    out.write(json.dumps(report, sort_keys=True) + '\n')
    out.flush()
