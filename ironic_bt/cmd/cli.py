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

"""The ``ironic-bt`` command: the library's parts, for operators and tests.
"""

import argparse
import datetime
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from oslo_config import cfg
from oslo_log import log
from oslo_utils import netutils

from ironic_bt.common.i18n import _

LOG = log.getLogger(__name__)


class CommandError(Exception):
    """A failure to report as ``ironic-bt: error: ...`` with exit code 1."""


def _host_port(value, default_port=None):
    try:
        host, port = netutils.parse_host_port(value, default_port)
        if port is None or not 0 <= port <= 65535:
            raise ValueError(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _('"%s" is not HOST:PORT with a port from 0 to 65535') % value)
    return host or '0.0.0.0', port


def _positive_int(value):
    try:
        number = int(value)
        if number < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            _('"%s" is not a whole number of at least 1') % value)
    return number


def setup_logging(args):
    conf = cfg.ConfigOpts()
    log.register_options(conf)
    conf([], project='ironic-bt')
    conf.set_override('debug', args.debug)
    # Logs go to stderr so that stdout carries only results (--json).
    conf.set_override('use_stderr', True)
    conf.set_override('log_file', None)
    log.setup(conf, 'ironic-bt')
    if not args.debug:
        log.set_defaults(default_log_levels=['libtorrent=WARN'])


def _wait_for_signal(duration=None):
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_args: stop.set())
    stop.wait(duration)


def cmd_create(args):
    from ironic_bt.common import torrent

    meta = torrent.build(args.image, piece_size=args.piece_size)
    output = args.output or os.path.basename(args.image) + '.torrent'
    with open(output, 'wb') as f:
        f.write(torrent.with_trackers(meta.data, args.tracker))
    summary = {'torrent': output, 'info_hash': meta.info_hash,
               'info_hash_v2': meta.info_hash_v2.hex(), 'size': meta.size,
               'piece_length': meta.piece_length,
               'pieces': meta.num_pieces,
               'zero_pieces': len(meta.zero_pieces),
               'zero_bytes': meta.zero_bytes}
    if args.json:
        print(json.dumps(summary))
    else:
        print(meta.info_hash, flush=True)
        print(_('%(t)s: %(size)d bytes, %(n)d pieces of %(plen)d bytes, '
                '%(z)d all-zero pieces (%(zb)d bytes never sent)')
              % {'t': output, 'size': meta.size, 'n': meta.num_pieces,
                 'plen': meta.piece_length, 'z': len(meta.zero_pieces),
                 'zb': meta.zero_bytes}, file=sys.stderr)


def _status_token():
    # From the environment only: a token on the command line would show in
    # every process listing.
    return os.environ.get('IRONIC_BT_STATUS_TOKEN') or None


def start_tracker(listen, interval, metas, names=None, on_clients=None,
                  announce_secret=None):
    from ironic_bt.tracker import server
    from ironic_bt.tracker import swarm_table

    table = swarm_table.SwarmTable(interval=interval, on_clients=on_clients,
                                   announce_secret=announce_secret)
    for meta, name in zip(metas, names or [m.info_hash for m in metas]):
        table.publish(meta.tracker_keys, name, size=meta.size)
    tracker = server.TrackerServer(table, host=listen[0], port=listen[1],
                                   status_token=_status_token())
    tracker.start()
    return tracker


def _announce_host(host):
    return '127.0.0.1' if host in ('0.0.0.0', '') else host


def _announce_secret(authority):
    """The secret of the announce keys, shared with the conductors."""
    from ironic_bt.common import publication

    return authority.derive_secret(publication.ANNOUNCE_SECRET_PURPOSE)


def _keyed(url, secret, node, meta):
    """``url`` with the announce key of ``node`` ('' for a seeder)."""
    from ironic_bt.common import publication

    if secret is None:
        return url
    return publication.keyed_url(url, secret, node, meta.tracker_keys[0])


def cmd_seed(args):
    from ironic_bt.common import torrent
    from ironic_bt import seeder

    meta = torrent.load_file(args.torrent)
    try:
        size = os.stat(args.image).st_size
    except OSError as e:
        raise CommandError(_('Cannot read image %(i)s: %(e)s')
                           % {'i': args.image, 'e': e})
    if size != meta.size:
        raise CommandError(
            _('Image %(i)s is %(s)d bytes but torrent %(t)s describes '
              '%(ts)d bytes: this is not the image the torrent was made '
              'from.') % {'i': args.image, 's': size, 't': args.torrent,
                          'ts': meta.size})
    trackers = list(args.tracker)
    tracker = None
    credentials = secret = None
    if args.ssl_authority:
        authority = _authority(args.ssl_authority)
        credentials = authority.credentials(
            'seeder', datetime.timedelta(seconds=SEEDER_LIFETIME))
        secret = _announce_secret(authority)
    seed = seeder.Seeder(args.listen[0], args.listen[1],
                         upload_rate_limit=args.upload_rate,
                         nodes=args.nodes, ssl=credentials is not None)
    try:
        if args.with_tracker:
            tracker = start_tracker(args.with_tracker, args.interval, [meta],
                                    [os.path.basename(args.image)],
                                    on_clients=seed.serve_clients,
                                    announce_secret=secret)
            trackers.append(_keyed(tracker.announce_url(
                _announce_host(args.with_tracker[0])), secret, '', meta))
        seed.add(meta, args.image, trackers=trackers,
                 verified=args.trust_image, credentials=credentials)
        print(json.dumps({'info_hash': meta.info_hash,
                          'listen': '%s:%d' % (
                              netutils.escape_ipv6(args.listen[0]),
                              seed.port),
                          'trackers': trackers}), flush=True)
        _wait_for_signal(args.duration)
        stats = seed.stats().get(meta.info_hash, {})
        print(json.dumps({'info_hash': meta.info_hash,
                          'uploaded_bytes': stats.get('uploaded', 0)}),
              flush=True)
    finally:
        seed.close()
        if tracker is not None:
            tracker.stop()


#: Seconds the certificate of ``ironic-bt seed --ssl-authority`` is valid.
SEEDER_LIFETIME = 7 * 24 * 3600


def _authority(directory):
    from ironic_bt.common import certs

    try:
        return certs.Authority.load_or_create(directory)
    except (certs.CertificateError, OSError) as e:
        raise CommandError(_('Cannot use the swarm authority in %(d)s: '
                             '%(e)s') % {'d': directory, 'e': e})


def cmd_certificate(args):
    authority = _authority(args.authority)
    creds = authority.credentials(args.name, datetime.timedelta(
        seconds=args.lifetime))
    try:
        creds.save(args.output)
    except OSError as e:
        raise CommandError(_('Cannot write %(o)s: %(e)s')
                           % {'o': args.output, 'e': e})
    result = {'credentials': args.output, 'name': args.name,
              'lifetime': args.lifetime}
    if args.announce_url:
        # The tracker URL this node announces with: its label and its key
        # for the torrent (see "ironic-bt tracker --ssl-authority").
        from ironic_bt.common import torrent

        meta = torrent.load_file(args.torrent) if args.torrent else None
        if meta is None:
            raise CommandError(_('--announce-url needs --torrent: an '
                                 'announce key is for one torrent.'))
        result['announce_url'] = _keyed(args.announce_url,
                                        _announce_secret(authority),
                                        args.name, meta)
    print(json.dumps(result), flush=True)


def _credentials(path):
    from ironic_bt.common import certs

    try:
        return certs.Credentials.load(path)
    except certs.CertificateError as e:
        raise CommandError(str(e))


def cmd_tracker(args):
    from ironic_bt.common import torrent

    metas = [torrent.load_file(path) for path in args.torrent]
    secret = (_announce_secret(_authority(args.ssl_authority))
              if args.ssl_authority else None)
    tracker = start_tracker(args.listen, args.interval, metas,
                            [os.path.basename(p) for p in args.torrent],
                            announce_secret=secret)
    try:
        print(json.dumps({
            'announce': tracker.announce_url(_announce_host(args.listen[0])),
            'announce_keys': secret is not None,
            'info_hashes': [m.info_hash for m in metas]}), flush=True)
        _wait_for_signal()
    finally:
        tracker.stop()


def _mounted(target, mounts='/proc/mounts', sys_block='/sys/class/block'):
    """Mount points of the target or of its partitions.

    The partitions are the kernel's (``/sys/class/block/DISK/PART``): a
    prefix of the name would take ``/dev/loop10`` for a partition of
    ``/dev/loop1``.
    """
    real = os.path.realpath(target)
    devices = {real}
    if real.startswith('/dev/'):
        disk = os.path.join(sys_block, os.path.basename(real))
        try:
            devices.update(
                os.path.join('/dev', entry) for entry in os.listdir(disk)
                if os.path.exists(os.path.join(disk, entry, 'partition')))
        except OSError:
            pass
    found = []
    try:
        with open(mounts) as f:
            for line in f:
                source, mountpoint = line.split()[:2]
                if source.startswith('/') and \
                        os.path.realpath(source) in devices:
                    found.append(mountpoint)
    except OSError:
        pass
    return found


def cmd_write(args):
    from ipa_extension import writer
    from ironic_bt.common import torrent

    meta = torrent.load_file(args.torrent)
    mounts = _mounted(args.target)
    if mounts:
        raise CommandError(
            _('%(t)s is mounted on %(m)s; refusing to overwrite a disk in '
              'use.') % {'t': args.target, 'm': ', '.join(mounts)})
    credentials = (_credentials(args.ssl_credentials)
                   if args.ssl_credentials else None)
    result = writer.write(
        meta, args.target, trackers=args.tracker, peers=args.peer,
        listen_host=args.listen[0], listen_port=args.listen[1],
        linger_timeout=args.linger, progress_interval=args.progress_interval,
        stall_timeout=args.stall_timeout, expected_sha256=args.sha256,
        create=args.create, web_seeds=args.web_seed,
        web_seed_delay=args.web_seed_delay,
        unreachable_timeout=args.unreachable_timeout,
        credentials=credentials)
    if args.json:
        print(json.dumps(result.to_dict()), flush=True)
    else:
        print(_('Wrote %(size)d bytes of %(ih)s to %(t)s in %(s).1f s: '
                '%(down)d bytes downloaded, %(zero)d zeroed locally, '
                '%(up)d uploaded; sha256 %(sha)s')
              % {'size': result.size, 'ih': result.info_hash,
                 't': result.target, 's': result.seconds,
                 'down': result.downloaded_bytes, 'zero': result.zero_bytes,
                 'up': result.uploaded_bytes, 'sha': result.sha256})


def _bar(fraction, width=30):
    filled = int(round(fraction * width))
    return '[' + '#' * filled + '.' * (width - filled) + ']'


def _status_url(tracker):
    base = tracker.split('?')[0]
    if base.endswith('/announce'):
        base = base[:-len('/announce')]
    return base.rstrip('/') + '/status'


def _render_status(status, sizes):
    lines = []
    for swarm in status.get('swarms', []):
        lines.append('%s  %s  complete=%d incomplete=%d' % (
            swarm['info_hashes'][0], swarm.get('name', ''),
            swarm.get('complete', 0), swarm.get('incomplete', 0)))
        size = swarm.get('size') or sizes.get(swarm['info_hashes'][0])
        for peer in swarm.get('peers', []):
            address = '%s:%s' % (netutils.escape_ipv6(peer['ip']),
                                 peer['port'])
            label = peer.get('node') or address
            left = peer.get('left', 0)
            if size:
                done = max(0.0, min(1.0, 1.0 - float(left) / size))
                progress = '%s %5.1f%%' % (_bar(done), done * 100)
            else:
                progress = _('done') if left == 0 else (
                    _('%d bytes left') % left)
            lines.append('  %-38s %-21s %s' % (label, address, progress))
    if status.get('source') == 'scrape':
        lines.append(_('(scrape counts only: this tracker does not show '
                       'its peers here)'))
    return '\n'.join(lines) or _('No published torrents.')


def _scrape_status(tracker, metas):
    """A status from BEP 48 scrape counts, for trackers without /status."""
    from ironic_bt.common import torrent

    base = tracker.split('?')[0]
    if not base.endswith('/announce'):
        base = base.rstrip('/') + '/announce'
    url = base[:-len('/announce')] + '/scrape'
    query = '&'.join('info_hash=%s' % urllib.parse.quote_from_bytes(
        meta.info_hash_v1, safe='') for meta in metas)
    with urllib.request.urlopen(url + ('?' + query if query else ''),
                                timeout=10) as resp:
        reply = torrent.bdecode(resp.read(), url)
    if b'failure reason' in reply:
        raise ValueError(reply[b'failure reason'].decode('utf-8', 'replace'))
    names = {meta.info_hash_v1: meta for meta in metas}
    swarms = []
    for key, counts in sorted((reply.get(b'files') or {}).items()):
        meta = names.get(key)
        swarms.append({'info_hashes': [key.hex()],
                       'name': meta.name if meta else '',
                       'size': meta.size if meta else None,
                       'complete': counts.get(b'complete', 0),
                       'incomplete': counts.get(b'incomplete', 0),
                       'downloaded': counts.get(b'downloaded', 0),
                       'peers': []})
    return {'swarms': swarms, 'source': 'scrape'}


def _read_status(tracker, metas):
    url = _status_url(tracker)
    request = urllib.request.Request(url)
    token = _status_token()
    if token:
        request.add_header('X-Status-Token', token)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        if e.code not in (403, 404):
            raise
        refused = e.code
    # Not ironic-bt's tracker (opentracker has no /status), or not allowed
    # from here: the scrape counts are all there is.
    LOG.info('%(u)s answered %(code)d: showing scrape counts only',
             {'u': url, 'code': refused})
    return _scrape_status(tracker, metas)


def cmd_status(args):
    from ironic_bt.common import torrent

    sizes = {}
    metas = []
    for path in args.torrent:
        meta = torrent.load_file(path)
        sizes[meta.info_hash] = meta.size
        metas.append(meta)
    while True:
        try:
            status = _read_status(args.tracker, metas)
        except (OSError, ValueError) as e:
            raise CommandError(_('Cannot read tracker status from %(u)s: '
                                 '%(e)s. Check the tracker URL.')
                               % {'u': args.tracker, 'e': e})
        if args.json:
            print(json.dumps(status), flush=True)
        else:
            print(_render_status(status, sizes), flush=True)
        if not args.watch:
            return
        time.sleep(args.watch)


def build_parser():
    parser = argparse.ArgumentParser(
        prog='ironic-bt',
        description=_('Peer-to-peer (BitTorrent) deployment of raw disk '
                      'images: the parts of the ironic-bt deploy interface '
                      'as commands.'))
    parser.add_argument('--debug', action='store_true',
                        help=_('log debug messages'))
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    p = sub.add_parser('create', help=_('make a .torrent from a raw image'),
                       description=_(
                           'Hash a raw disk image into a deterministic '
                           'hybrid (v1+v2) torrent and print its info-hash. '
                           'The same image gives the same info-hash on any '
                           'machine.'))
    p.add_argument('image', help=_('raw disk image'))
    p.add_argument('-o', '--output', metavar='FILE.torrent',
                   help=_('where to write the torrent (default: '
                          'IMAGE.torrent in the current directory)'))
    p.add_argument('--piece-size', type=int, metavar='BYTES',
                   help=_('override the piece size policy (power of two); '
                          'changes the info-hash'))
    p.add_argument('--tracker', action='append', default=[], metavar='URL',
                   help=_('announce URL to put in the file, for standard '
                          'BitTorrent clients (repeatable; the info-hash '
                          'does not change)'))
    p.add_argument('--json', action='store_true',
                   help=_('print a JSON summary instead of the info-hash'))
    p.set_defaults(func=cmd_create)

    p = sub.add_parser('seed', help=_('seed an image (optionally with a '
                                      'built-in tracker)'),
                       description=_('Seed IMAGE as FILE.torrent until '
                                     'interrupted. Prints one JSON line when '
                                     'ready and one with the upload total at '
                                     'exit.'))
    p.add_argument('torrent', metavar='FILE.torrent')
    p.add_argument('image', help=_('the raw image the torrent was made from'))
    p.add_argument('--listen', type=_host_port, default=('0.0.0.0', 6881),
                   metavar='HOST:PORT',
                   help=_('peer listen address (default 0.0.0.0:6881)'))
    p.add_argument('--tracker', action='append', default=[], metavar='URL',
                   help=_('announce to this tracker (repeatable)'))
    p.add_argument('--with-tracker', type=lambda v: _host_port(v, 6969),
                   metavar='HOST[:PORT]',
                   help=_('also run the built-in tracker on this address, '
                          'serving this torrent'))
    p.add_argument('--interval', type=int, default=10, metavar='SECONDS',
                   help=_('announce interval of the built-in tracker'))
    p.add_argument('--nodes', type=_positive_int, metavar='N',
                   help=_('how many nodes will download at once; sizes the '
                          'request queue per peer (default: 8 requests)'))
    p.add_argument('--upload-rate', type=int, default=0, metavar='BYTES',
                   help=_('upload rate limit in bytes/s (0: unlimited)'))
    p.add_argument('--duration', type=float, metavar='SECONDS',
                   help=_('stop after this long instead of waiting for a '
                          'signal'))
    p.add_argument('--trust-image', action='store_true',
                   help=_('IMAGE is the very file the torrent was made from, '
                          'unchanged since: send pieces without hashing '
                          'them first, as the conductor does with its own '
                          'image cache (default: hash each piece the first '
                          'time it is sent, so a wrong or altered image is '
                          'never served)'))
    p.add_argument('--ssl-authority', metavar='DIR',
                   help=_('serve an SSL torrent: only peers with a '
                          'certificate of the authority in DIR (made there '
                          'if empty; see "ironic-bt certificate") get '
                          'bytes'))
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser('certificate',
                       help=_('issue credentials for an SSL swarm'),
                       description=_('Issue a member of SSL swarms its '
                                     'credentials: a new private key and a '
                                     'certificate of the authority in '
                                     'AUTHORITY_DIR (made there if empty), '
                                     'written with the authority\'s '
                                     'certificate to one PEM file of mode '
                                     '0600 for "ironic-bt write '
                                     '--ssl-credentials".'))
    p.add_argument('authority', metavar='AUTHORITY_DIR')
    p.add_argument('name', help=_('who it is for (a node name)'))
    p.add_argument('-o', '--output', required=True, metavar='FILE.pem')
    p.add_argument('--lifetime', type=_positive_int, default=3600,
                   metavar='SECONDS',
                   help=_('seconds until the certificate expires (default '
                          '3600)'))
    p.add_argument('--announce-url', metavar='URL',
                   help=_('also print this tracker URL with the node\'s '
                          'label and announce key for --torrent, for '
                          '"ironic-bt write --tracker" against a tracker '
                          'run with --ssl-authority'))
    p.add_argument('--torrent', metavar='FILE.torrent',
                   help=_('the torrent the announce key is for'))
    p.set_defaults(func=cmd_certificate)

    p = sub.add_parser('tracker', help=_('run the tracker standalone'),
                       description=_('Run the HTTP tracker (announce, '
                                     'scrape, status) serving only the '
                                     'given torrents.'))
    p.add_argument('--listen', type=lambda v: _host_port(v, 6969),
                   default=('0.0.0.0', 6969), metavar='HOST[:PORT]',
                   help=_('listen address (default 0.0.0.0:6969)'))
    p.add_argument('--torrent', action='append', default=[],
                   metavar='FILE.torrent',
                   help=_('serve this torrent (repeatable)'))
    p.add_argument('--interval', type=int, default=10, metavar='SECONDS',
                   help=_('announce interval asked of peers'))
    p.add_argument('--ssl-authority', metavar='DIR',
                   help=_('serve only announcers with a key of the swarm '
                          'authority in DIR, as the conductors sharing it '
                          'hand their nodes (see "ironic-bt certificate '
                          '--announce-url"); others get a failure reply '
                          'and no peers'))
    p.set_defaults(func=cmd_tracker)

    p = sub.add_parser('write', help=_('download a torrent straight to a '
                                       'device or file'),
                       description=_(
                           'The agent-side writer: download FILE.torrent '
                           'into TARGET (a block device or a file) through '
                           'the swarm, zero the all-zero pieces locally, '
                           'verify what was written, keep seeding while '
                           'peers are incomplete (--linger), then exit. '
                           'TARGET is overwritten.'))
    p.add_argument('torrent', metavar='FILE.torrent')
    p.add_argument('target', metavar='TARGET')
    p.add_argument('--tracker', action='append', default=[], metavar='URL',
                   help=_('announce URL (repeatable)'))
    p.add_argument('--peer', action='append', default=[],
                   metavar='HOST:PORT',
                   help=_('connect to this peer directly (repeatable)'))
    p.add_argument('--listen', type=_host_port, default=('0.0.0.0', 6881),
                   metavar='HOST:PORT',
                   help=_('peer listen address (default 0.0.0.0:6881)'))
    p.add_argument('--linger', type=float, default=60, metavar='SECONDS',
                   help=_('most seconds to keep seeding after verifying '
                          'while peers are incomplete (default 60)'))
    p.add_argument('--progress-interval', type=float, default=10,
                   metavar='SECONDS', help=_('seconds between progress '
                                             'log lines'))
    p.add_argument('--stall-timeout', type=float, default=300,
                   metavar='SECONDS',
                   help=_('give up after this long without progress'))
    p.add_argument('--web-seed', action='append', default=[], metavar='URL',
                   help=_('HTTP(S) URL of the raw image, fetched only for '
                          'the pieces no peer has once the seeder has been '
                          'out of reach for --web-seed-delay (repeatable)'))
    p.add_argument('--web-seed-delay', type=float, default=5,
                   metavar='SECONDS',
                   help=_('seconds the seeder must be out of reach before '
                          'the web seeds are used (default 5)'))
    p.add_argument('--unreachable-timeout', type=float, default=60,
                   metavar='SECONDS',
                   help=_('give up after this long with no source '
                          'connected and no progress, naming every source '
                          '(default 60)'))
    p.add_argument('--sha256', metavar='HEX',
                   help=_('expected sha256 of the image'))
    p.add_argument('--create', action='store_true',
                   help=_('create TARGET as a regular file if it does not '
                          'exist'))
    p.add_argument('--ssl-credentials', metavar='FILE.pem',
                   help=_('join an SSL swarm with these credentials '
                          '("ironic-bt certificate")'))
    p.add_argument('--json', action='store_true',
                   help=_('end with one JSON line of results'))
    p.set_defaults(func=cmd_write)

    p = sub.add_parser('status', help=_('show per-peer progress from a '
                                        'tracker'),
                       description=_('Show every peer the tracker knows, '
                                     'with its progress.'))
    p.add_argument('--tracker', required=True, metavar='URL',
                   help=_('tracker base or announce URL, e.g. '
                          'http://198.18.0.1:6969/announce'))
    p.add_argument('--torrent', action='append', default=[],
                   metavar='FILE.torrent',
                   help=_('torrent(s), to show percentages from trackers '
                          'that do not report sizes'))
    p.add_argument('--watch', type=float, metavar='SECONDS',
                   help=_('refresh every SECONDS until interrupted'))
    p.add_argument('--json', action='store_true',
                   help=_('print the raw JSON status'))
    p.epilog = _('The per-peer status is served to the tracker\'s own host; '
                 'from elsewhere, set IRONIC_BT_STATUS_TOKEN to the '
                 'tracker\'s status token. Trackers without a status (and '
                 'ironic-bt\'s without the token) give the BEP 48 scrape '
                 'counts instead.')
    p.set_defaults(func=cmd_status)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args)
    from ipa_extension import writer
    from ironic_bt.common import torrent
    from ironic_bt import seeder
    try:
        args.func(args)
    except (CommandError, torrent.InvalidTorrent, writer.WriterError,
            seeder.SeederError) as e:
        print('ironic-bt: error: %s' % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
