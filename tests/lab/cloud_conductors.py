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

"""Several conductors in the local cloud, and the tracker they share.

``tools/cloud up --conductors 2`` runs the all-in-one ``ironic`` (API and
the first conductor) on the bridge address as usual, and each further
conductor as an ``ironic-conductor`` process in a network namespace of its
own, as on another host: its own address, state directory, image cache,
seeder and HTTP server for ``[deploy]http_root``. All of them share the one
sqlite database, and the API reaches them over JSON-RPC; ironic's hash ring
decides which conductor deploys which node.

They share one tracker (``--tracker``):

``builtin``
    the first conductor's built-in tracker; the others point
    ``[bittorrent]tracker_url`` at it and publish their images there with
    keys signed with the ``[bittorrent]tracker_secret`` they all share;
``opentracker``
    Debian's opentracker, started on the bridge address, whose build serves
    only the info-hashes in its whitelist: the harness adds each image's
    before deploying it, as an operator would.
"""

import os
import re
import signal
import sys
import time

from oslo_utils import netutils

from ironic_bt.common import torrent
from tests.lab import cloud_conf
from tests.lab import procs

TRACKERS = ('builtin', 'opentracker')
OPENTRACKER_PORT = 6970
JSON_RPC_PORT = 8089
#: Shared by the lab's conductors; a test secret, not a credential.
TRACKER_SECRET = 'ironic-bt lab conductors'
_UPLOADED_RE = re.compile(
    r'Unpublished image .* \(torrent ([0-9a-f]{40})\) after node \S+, the '
    r'last to need it, released it; the seeder uploaded (\d+) bytes')


def _log(msg, *args):
    print('cloud: ' + (msg % args if args else msg), file=sys.stderr,
          flush=True)


def tracker_url(cloud):
    """The announce URL the conductors share.

    None where each uses its own built-in tracker (a lone conductor).
    """
    gw = cloud.state['gateway_ip']
    kind = cloud.state.get('tracker')
    if kind == 'opentracker':
        return 'http://%s:%d/announce' % (gw, OPENTRACKER_PORT)
    if kind == 'builtin' and len(cloud.state.get('conductors', [])) > 1:
        return 'http://%s:%d/announce' % (gw, cloud.state['tracker_port'])
    return None


def add_hosts(cloud, lab, count):
    """Record the conductors; make a namespace for each but the first."""
    gw = cloud.state['gateway_ip']
    conductors = [{'name': 'ironic', 'ip': gw,
                   'log': cloud.path('logs', 'ironic.log')}]
    for index in range(1, count):
        name = 'conductor%d' % index
        host = lab.add_host(name)
        directory = cloud.path('conductors', name)
        conductors.append({
            'name': name, 'ip': host.ip, 'netns': host.netns,
            'dir': directory,
            'conf': os.path.join(directory, 'ironic.conf'),
            'log': cloud.path('logs', '%s.log' % name),
            'http_stats': cloud.path('logs', '%s-http-bytes.json' % name),
        })
        _log('%s: a conductor at %s', name, host.ip)
    cloud.state['conductors'] = conductors


def conf_options(cloud):
    """ironic_conf() arguments every conductor of this cloud shares."""
    if len(cloud.state.get('conductors', [])) < 2:
        return {}
    return {'rpc_transport': 'json-rpc',
            'database_path': cloud.path('ironic', 'ironic.sqlite'),
            'tracker_secret': TRACKER_SECRET,
            # Their nodes share swarms: one authority for the SSL swarms.
            'ssl_authority_dir': cloud.path('authority'),
            'json_rpc_port': JSON_RPC_PORT}


def start_opentracker(cloud, lab):
    """Start opentracker on the bridge address, TCP and UDP."""
    directory = cloud.path('opentracker')
    os.makedirs(directory, exist_ok=True)
    whitelist = os.path.join(directory, 'whitelist.txt')
    open(whitelist, 'a').close()
    # It drops to "nobody" and chroots into its directory.
    os.chmod(directory, 0o755)
    os.chmod(whitelist, 0o644)
    gw = cloud.state['gateway_ip']
    log = cloud.path('logs', 'opentracker.log')
    proc = cloud.start_service(
        lab, 'opentracker', ['opentracker', '-i', gw,
                             '-p', str(OPENTRACKER_PORT),
                             '-P', str(OPENTRACKER_PORT),
                             '-d', directory, '-w', 'whitelist.txt'], log)
    cloud.state['opentracker_whitelist'] = whitelist
    cloud.save()
    procs.wait_port(gw, OPENTRACKER_PORT, timeout=30, proc=proc,
                    log_path=log)
    _log('opentracker on %s:%d (whitelist %s)', gw, OPENTRACKER_PORT,
         whitelist)


def allow_torrent(cloud, image_path):
    """Put an image's info-hashes on opentracker's whitelist, if it runs.

    The conductors will publish the same torrent: it is deterministic.
    """
    whitelist = cloud.state.get('opentracker_whitelist')
    if not whitelist:
        return
    meta = torrent.build(image_path)
    with open(whitelist) as f:
        known = set(f.read().split())
    wanted = [key.hex() for key in meta.tracker_keys]
    if set(wanted) <= known:
        return
    with open(whitelist, 'a') as f:
        f.write(''.join('%s\n' % key for key in wanted
                        if key not in known))
    record = cloud.state['services']['opentracker']
    if not procs.is_running(record['pid'], record['starttime']):
        raise RuntimeError('opentracker (pid %d) is gone; see %s'
                           % (record['pid'], record['log']))
    # opentracker reads its whitelist again on SIGHUP, in a thread of its
    # own: give it a moment.
    os.kill(record['pid'], signal.SIGHUP)
    time.sleep(1)


def start_conductors(cloud, lab, dirs, conf_kwargs):
    """Start every conductor but the first (the all-in-one ironic)."""
    for rec in cloud.state.get('conductors', [])[1:]:
        _start_conductor(cloud, lab, rec, dirs, conf_kwargs)
    if len(cloud.state.get('conductors', [])) > 1:
        _wait_registered(cloud)


def _start_conductor(cloud, lab, rec, dirs, conf_kwargs):
    own = {'ironic': os.path.join(rec['dir'], 'state'),
           'http_root': os.path.join(rec['dir'], 'http'),
           'logs': dirs['logs'],
           'bittorrent': os.path.join(rec['dir'], 'bittorrent')}
    for path in own.values():
        os.makedirs(path, exist_ok=True)
    for sub in ('tmp', 'locks', 'certificates'):
        os.makedirs(os.path.join(own['ironic'], sub), exist_ok=True)
    kwargs = dict(conf_kwargs, log_file=os.path.basename(rec['log']))
    with open(rec['conf'], 'w') as f:
        f.write(cloud_conf.ironic_conf(own, rec['ip'], **kwargs))
    host = lab.host(rec['name'])
    http_port = kwargs['http_port']
    rec['http_url'] = 'http://%s:%d' % (rec['ip'], http_port)
    rec['http_root'] = own['http_root']
    proc = cloud.start_service(
        host, '%s-http' % rec['name'],
        [sys.executable, '-m', 'tests.lab.cloud_http', '--bind', rec['ip'],
         '--port', str(http_port), '--root', own['http_root'],
         '--stats', rec['http_stats']],
        cloud.path('logs', '%s-http.log' % rec['name']),
        env={'PYTHONPATH': cloud_conf.REPO})
    procs.wait_port(rec['ip'], http_port, timeout=30, proc=proc)
    cloud.start_service(
        host, rec['name'], [os.path.join(cloud_conf.BINDIR,
                                         'ironic-conductor'),
                            '--config-file', rec['conf']],
        cloud.path('logs', '%s.out' % rec['name']))


def _wait_registered(cloud, timeout=120):
    wanted = {rec['ip'] for rec in cloud.state['conductors']}

    def registered():
        resp = cloud.conn.baremetal.get(
            '/conductors', headers={'X-OpenStack-Ironic-API-Version':
                                    'latest'})
        if not resp.ok:
            return False
        alive = {_address(c['hostname'])
                 for c in resp.json().get('conductors', []) if c.get('alive')}
        return wanted <= alive
    procs.wait_for(registered, timeout, 1, 'conductors %s to register'
                   % ', '.join(sorted(wanted)))
    # The API rebuilds its hash ring every [DEFAULT]hash_ring_reset_interval
    # (set short in the lab): wait for one that includes every conductor.
    time.sleep(3)
    _log('conductors registered: %s', ', '.join(sorted(wanted)))


def image_url(cloud, name, image_path, url):
    """Where a node's conductor downloads the image from.

    The first conductor serves it from its own HTTP server; the others get
    a link to it under their own, as if each had an image service nearby:
    a conductor fetches the image into its cache before seeding it, and
    over the lab's shaped provisioning links that would take longer than
    the deploy itself. The bytes, and so the torrent, are the same.
    """
    owner_ip = cloud.nodes[name].get('conductor')
    rec = next((c for c in cloud.state.get('conductors', [])[1:]
                if c['ip'] == owner_ip), None)
    if rec is None:
        return url
    directory = os.path.join(rec['http_root'], 'images')
    os.makedirs(directory, exist_ok=True)
    dest = os.path.join(directory, os.path.basename(image_path))
    if os.path.exists(dest) and not os.path.samefile(image_path, dest):
        os.unlink(dest)
    if not os.path.exists(dest):
        os.link(image_path, dest)
    return '%s/images/%s' % (rec['http_url'], os.path.basename(dest))


def owner(cloud, uuid):
    """The address of the conductor ironic's hash ring gives a node."""
    return _address(cloud.node_json(uuid).get('conductor') or '')


def _address(hostname):
    # Ironic names a JSON-RPC conductor on a non-default port HOST:PORT.
    return netutils.parse_host_port(hostname)[0]


def seeder_uploads(cloud, info_hash):
    """{conductor name: bytes its seeder uploaded of the torrent}.

    From the line each conductor logs when it unpublishes it (the last).
    """
    uploads = {}
    for rec in cloud.state.get('conductors', []):
        uploaded = seeder_uploaded(rec['log'], info_hash)
        if uploaded is not None:
            uploads[rec['name']] = uploaded
    return uploads


def seeder_uploaded(log_path, info_hash):
    """Bytes a conductor's seeder uploaded of a torrent, or None.

    From the last line the conductor logged when it unpublished it.
    """
    try:
        with open(log_path, errors='replace') as f:
            text = f.read()
    except FileNotFoundError:
        return None
    found = [int(up) for ih, up in _UPLOADED_RE.findall(text)
             if ih == info_hash]
    return found[-1] if found else None
