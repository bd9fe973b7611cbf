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

"""The processes :mod:`tests.lab.bench` starts inside lab hosts.

``python -m tests.lab.bench_worker MODE ...`` with MODE one of:

``seed``
    The conductor side: the seeder with its built-in tracker, through
    ``ironic-bt seed`` (``--cli``) or through the library with libtorrent
    setting overrides (``--settings JSON``), which the command does not
    take.
``write``
    The agent side, through ``ironic-bt write`` (``--cli``) or
    ``ipa_extension.writer.write(settings=...)``.
``http``
    A plain threaded HTTP server sending one file with ``sendfile``: the
    ``direct`` deploy's image server (Ironic leaves serving to Apache or
    nginx, which use ``sendfile`` too).
``fetch``
    The ``direct`` deploy's agent: stream an HTTP URL onto a device,
    hashing on the fly as IPA does, then fsync.
``publish``
    Time torrent creation against ``sha256sum`` and the publisher's
    re-publish cache.
``zero``
    Time the writer's zeroing of all-zero pieces: BLKZEROOUT against
    writing zeros.

Clients (``write``, ``fetch``) import everything, report ``ready``, then
wait for the benchmark to write the common start time into
``--start-file``, like agents that are already running when the deploy
step reaches them; so the benchmark times the transfer, not Python's
start-up. Every mode prints one JSON object per line on stdout (events and
results); logs go to stderr.
"""

import argparse
import hashlib
import http.server
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

from oslo_utils import netutils


def _report(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


def _usage():
    """CPU seconds used and peak RSS (VmHWM, KiB) of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # ru_maxrss is the kernel's VmHWM, in KiB on Linux.
    hwm = ru.ru_maxrss
    return {'cpu_seconds': round(ru.ru_utime + ru.ru_stime, 3),
            'user_seconds': round(ru.ru_utime, 3),
            'system_seconds': round(ru.ru_stime, 3),
            'vmhwm_kib': hwm}


def _wait_until(when):
    if when:
        delay = when - time.time()
        if delay > 0:
            time.sleep(delay)


def _wait_start(path):
    """Wait for the benchmark's go: ``path`` holding the start time."""
    while True:
        try:
            with open(path) as f:
                start = float(f.read())
            break
        except (FileNotFoundError, ValueError):
            time.sleep(0.01)
    _wait_until(start)


def _host_port(value):
    host, port = netutils.parse_host_port(value)
    return host, int(port)


def _settings(value):
    settings = json.loads(value or '{}')
    if not isinstance(settings, dict):
        raise SystemExit('--settings must be a JSON object')
    return settings


def _setup_logging(debug=False):
    from ironic_bt.cmd import cli
    cli.setup_logging(argparse.Namespace(debug=debug))


def _stop_event():
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_a: stop.set())
    return stop


# -- seed -----------------------------------------------------------------

def cmd_seed(args):
    from ironic_bt.cmd import cli
    if args.cli:
        argv = ['seed', args.torrent, args.image, '--listen', args.listen,
                '--with-tracker', args.tracker_listen,
                '--interval', str(args.interval)]
        if not args.seed_mode:
            # The bench hashed this image into the torrent, as the
            # conductor's publisher does with its cache.
            argv.append('--trust-image')
        if args.nodes:
            argv += ['--nodes', str(args.nodes)]
        if args.ssl_authority:
            argv += ['--ssl-authority', args.ssl_authority]
        code = cli.main(argv)
        _report(event='usage', **_usage())
        return code

    import libtorrent as lt

    from ironic_bt.common import torrent
    from ironic_bt import seeder

    _setup_logging(args.debug)
    meta = torrent.load_file(args.torrent)
    host, port = _host_port(args.listen)
    tracker = cli.start_tracker(_host_port(args.tracker_listen),
                                args.interval, [meta])
    trackers = [tracker.announce_url(_host_port(args.tracker_listen)[0])]
    credentials = None
    if args.ssl_authority:
        import datetime

        from ironic_bt.common import certs
        credentials = certs.Authority.load_or_create(
            args.ssl_authority).credentials('seeder',
                                            datetime.timedelta(hours=2))
    seed = seeder.Seeder(host, port, upload_rate_limit=args.upload_rate,
                         settings=_settings(args.settings), nodes=args.nodes,
                         ssl=credentials is not None)
    stop = _stop_event()
    try:
        # The bench hashed this image into the torrent, as the conductor's
        # publisher does (it vouches for its own torrent cache).
        seed.add(meta, args.image, trackers=trackers,
                 verified=not args.seed_mode, credentials=credentials,
                 flags=lt.torrent_flags.super_seeding if args.super_seed
                 else 0)
        _report(event='ready', info_hash=meta.info_hash, listen=args.listen,
                trackers=trackers)
        peers = [_host_port(p) for p in args.connect]
        if peers:
            # The conductor handing out peers: connect to every agent as
            # soon as they listen, instead of waiting for them to find us.
            _wait_start(args.start_file)
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                for peer_host, peer_port in peers:
                    seed.connect(meta.info_hash, peer_host, peer_port)
                stats = seed.stats().get(meta.info_hash, {})
                if stats.get('peers', 0) >= len(peers):
                    break
                stop.wait(0.2)
        while not stop.wait(1):
            seed.pump_alerts()
        stats = seed.stats().get(meta.info_hash, {})
        _report(event='done', info_hash=meta.info_hash,
                uploaded_bytes=stats.get('uploaded', 0))
    finally:
        seed.close()
        tracker.stop()
        _report(event='usage', **_usage())
    return 0


# -- write ----------------------------------------------------------------

def cmd_write(args):
    from ipa_extension import writer
    from ironic_bt.cmd import cli
    from ironic_bt.common import torrent

    _report(event='ready', at=time.time())
    _wait_start(args.start_file)
    started = time.time()
    _report(event='started', at=started)
    if args.stripes:
        code = _stripes_write(args)
    elif args.cli:
        # The command as operators run it; its output says when it is
        # done, and lingering is over by then: time what it reports.
        argv = ['write', args.torrent, args.target, '--listen', args.listen,
                '--linger', str(args.linger), '--progress-interval', '2',
                '--stall-timeout', '120', '--json']
        for url in args.tracker:
            argv += ['--tracker', url]
        for peer in args.peer:
            argv += ['--peer', peer]
        if args.sha256:
            argv += ['--sha256', args.sha256]
        if args.ssl_credentials:
            argv += ['--ssl-credentials', args.ssl_credentials]
        code = _cli_write(cli, argv, started)
    else:
        _setup_logging(args.debug)
        host, port = _host_port(args.listen)
        meta = torrent.load_file(args.torrent)
        tuning = writer.Tuning(settings=_settings(args.settings) or {})
        if args.poll:
            tuning.poll_interval = args.poll
        if args.plan_backup is not None:
            tuning.plan_backup = args.plan_backup
        if args.no_overlap:
            tuning.overlap_read_back = False
        if args.flush_interval is not None:
            tuning.flush_interval = args.flush_interval
        if args.no_sequential:
            tuning.sequential_alone = False
        block_log = os.environ.get('BENCH_BLOCK_LOG')
        if block_log:
            import libtorrent as lt

            from ironic_bt.common import swarm
            tuning.settings['alert_mask'] = int(
                swarm.ALERT_MASK | lt.alert_category.block_progress)
        observer = _bench_observer(args.diag, block_log)
        credentials = None
        if args.ssl_credentials:
            from ironic_bt.common import certs
            credentials = certs.Credentials.load(args.ssl_credentials)
        try:
            result = writer.write(
                meta, args.target, trackers=args.tracker, peers=args.peer,
                listen_host=host, listen_port=port,
                linger_timeout=args.linger, progress_interval=2,
                stall_timeout=120, expected_sha256=args.sha256,
                share_pieces=not args.no_share, tuning=tuning,
                observer=observer, credentials=credentials)
        except writer.WriterError as e:
            print('ironic-bt: error: %s' % e, file=sys.stderr)
            code = 1
        else:
            print(json.dumps(result.to_dict()), flush=True)
            code = 0
    _report(event='usage', **_usage())
    return code


def _stripes_write(args):
    """The study writer of tests.lab.stripes (several sessions)."""
    from ironic_bt.common import torrent
    from tests.lab import stripes

    _setup_logging(args.debug)
    host, port = _host_port(args.listen)
    credentials = None
    if args.ssl_credentials:
        from ironic_bt.common import certs
        credentials = certs.Credentials.load(args.ssl_credentials)
    try:
        result = stripes.write(
            torrent.load_file(args.torrent), args.target,
            _host_port(args.peer[0]), host, port, args.stripes,
            credentials=credentials, settings=_settings(args.settings),
            report=_report)
    except RuntimeError as e:
        print('ironic-bt: error: %s' % e, file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


def _cli_write(cli, argv, started):
    """Run ``ironic-bt write``; report when it had verified the image.

    The command's result says how long downloading and verifying took from
    its start; lingering and closing the session come after.
    """
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    for line in out.getvalue().splitlines():
        print(line, flush=True)
        with contextlib.suppress(ValueError):
            result = json.loads(line)
            if 'sha256' in result:
                _report(event='verified',
                        at=started + result['download_seconds']
                        + result['verify_seconds'])
    return code


def _flags(p, lt):
    names = []
    for name in ('interesting', 'choked', 'remote_interested',
                 'remote_choked', 'seed', 'snubbed', 'endgame_mode',
                 'on_parole', 'rc4_encrypted', 'plaintext_encrypted'):
        if p.flags & getattr(lt.peer_info, name):
            names.append(name)
    return names


def _bench_observer(diag, block_log):
    from ipa_extension import writer

    class BenchObserver(writer.Observer):
        """What the benchmark watches, through the writer's seam.

        * ``verified``: the moment the image is verified on the target,
          before lingering, is what the benchmark times;
        * ``diag`` seconds: the peers, logged for experiments;
        * ``block_log``: a directory where every block received is logged
          ("time piece sender-ip" in ``blocks-<pid>.jsonl``), from which
          the seeder's duplicate sends can be counted.
        """

        def __init__(self, diag=None, block_log=None):
            self.diag = diag
            self.block_log = block_log and os.path.join(
                block_log, 'blocks-%d.jsonl' % os.getpid())
            self.start = time.time()
            self.last_diag = 0

        def verified(self, sha256):
            _report(event='verified', at=time.time())

        def alert(self, alert):
            import libtorrent as lt
            if self.block_log and isinstance(alert, lt.block_finished_alert):
                with open(self.block_log, 'a') as f:
                    f.write('%.4f %d %s\n' % (time.time(), alert.piece_index,
                                              alert.ip[0]))

        def peers(self, peer_info):
            import libtorrent as lt
            now = time.time()
            if not self.diag or now - self.last_diag < self.diag:
                return
            self.last_diag = now
            _report(event='peers', t=round(now - self.start, 2),
                    peers=[{'ip': p.ip[0], 'down': p.payload_down_speed,
                            'up': p.payload_up_speed,
                            'dq': p.download_queue_length,
                            'uq': p.upload_queue_length,
                            'rtt': p.rtt, 'sendbuf': p.used_send_buffer,
                            'flags': _flags(p, lt)} for p in peer_info])
    return BenchObserver(diag, block_log)


# -- http -----------------------------------------------------------------

class _FileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def do_GET(self):
        path = self.server.path
        with open(path, 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(size))
            self.end_headers()
            self.wfile.flush()
            sent = self.connection.sendfile(f)
        with self.server.lock:
            self.server.sent += sent
        self.close_connection = True

    def log_message(self, format, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def cmd_http(args):
    server = _Server(_host_port(args.listen), _FileHandler)
    server.path = args.file
    server.sent = 0
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _report(event='ready', listen=args.listen)
    _stop_event().wait()
    server.shutdown()
    _report(event='done', sent_bytes=server.sent, **_usage())
    return 0


# -- fetch ----------------------------------------------------------------

_CHUNK = 1024 * 1024


def cmd_fetch(args):
    import urllib.request

    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    digest = hashlib.sha256()
    _report(event='ready', at=time.time())
    _wait_start(args.start_file)
    started = time.time()
    fd = os.open(args.target, os.O_WRONLY)
    total = 0
    try:
        with urllib.request.urlopen(args.url, timeout=60) as resp:
            while True:
                n = resp.readinto(buf)
                if not n:
                    break
                digest.update(view[:n])
                done = 0
                while done < n:
                    done += os.write(fd, view[done:n])
                total += n
        os.fsync(fd)
    finally:
        os.close(fd)
    finished = time.time()
    sha = digest.hexdigest()
    ok = not args.sha256 or sha == args.sha256
    _report(event='verified', at=finished, started=started, bytes=total,
            sha256=sha, ok=ok, seconds=round(finished - started, 3))
    _report(event='usage', **_usage())
    return 0 if ok else 1


# -- publish --------------------------------------------------------------

def _drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _hashlib_sha256(path):
    """What ironic and IPA use to checksum images (OpenSSL's SHA-256)."""
    digest = hashlib.sha256()
    with open(path, 'rb', buffering=0) as f:
        for chunk in iter(lambda: f.read(4 * 1024 * 1024), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _timed(func):
    start = time.monotonic()
    result = func()
    return time.monotonic() - start, result


def cmd_publish(args):
    """Torrent creation against sha256sum, then the publisher's cache."""
    from ironic_bt.common import torrent

    image = args.image
    sha256sum = lambda: subprocess.run(  # noqa: E731
        ['sha256sum', image], check=True, capture_output=True)
    # Warm: both read from the page cache (the conductor just converted
    # the image to raw, so it usually is there). Cold: from the disk.
    sha256sum()
    warm_sha, _ = _timed(sha256sum)
    warm_hashlib, _ = _timed(lambda: _hashlib_sha256(image))
    warm_create, meta = _timed(lambda: torrent.build(image))
    _drop_cache(image)
    cold_sha, _ = _timed(sha256sum)
    _drop_cache(image)
    cold_create, _ = _timed(lambda: torrent.build(image))
    _report(event='create', size=meta.size, piece_length=meta.piece_length,
            sha256sum_warm=round(warm_sha, 3),
            hashlib_sha256_warm=round(warm_hashlib, 3),
            create_warm=round(warm_create, 3),
            sha256sum_cold=round(cold_sha, 3),
            create_cold=round(cold_create, 3))

    try:
        from oslo_config import cfg

        from ironic_bt import publisher
    except ImportError as e:
        _report(event='publish', skipped=str(e))
        return 0
    conf = cfg.CONF
    conf([], project='ironic', default_config_files=[])
    host, _port = _host_port(args.listen)
    for name, value in (('data_dir', args.data_dir),
                        ('advertise_host', host),
                        ('seeder_listen_host', host),
                        ('tracker_listen_host', host)):
        conf.set_override(name, value, group='bittorrent')
    pub = publisher.Publisher()
    try:
        first, _ = _timed(lambda: pub.publish('bench-node-1', image))
        second, _ = _timed(lambda: pub.publish('bench-node-2', image))
    finally:
        pub.shutdown()
    # A conductor restart: a new publisher, the .torrent cache on disk.
    pub = publisher.Publisher()
    try:
        restart, _ = _timed(lambda: pub.publish('bench-node-3', image))
    finally:
        pub.shutdown()
    _report(event='publish', first=round(first, 3), again=round(second, 3),
            after_restart=round(restart, 3))
    return 0


# -- zero ------------------------------------------------------------------

def cmd_zero(args):
    """Time the writer's zeroing of the all-zero pieces, both ways."""
    from ipa_extension import device
    from ironic_bt.common import torrent

    meta = torrent.load_file(args.torrent)
    runs = device.zero_runs(meta)
    start = time.monotonic()
    with device.Target(args.target) as target:
        zeroed = target.zero(meta)
    blkzeroout = time.monotonic() - start
    fd = os.open(args.target, os.O_WRONLY)
    try:
        start = time.monotonic()
        for offset, length in runs:
            device.write_zeros(fd, offset, length)
        os.fsync(fd)
        written = time.monotonic() - start
    finally:
        os.close(fd)
    _report(event='zero', bytes=zeroed, runs=len(runs),
            blkzeroout_seconds=round(blkzeroout, 3),
            write_seconds=round(written, 3))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m tests.lab.bench_worker')
    parser.add_argument('--debug', action='store_true')
    sub = parser.add_subparsers(dest='mode', required=True)

    p = sub.add_parser('seed')
    p.add_argument('torrent')
    p.add_argument('image')
    p.add_argument('--listen', required=True)
    p.add_argument('--tracker-listen', required=True)
    p.add_argument('--interval', type=int, default=5)
    p.add_argument('--upload-rate', type=int, default=0)
    p.add_argument('--settings')
    p.add_argument('--super-seed', action='store_true')
    p.add_argument('--seed-mode', action='store_true',
                   help='hash each piece on its first send')
    p.add_argument('--nodes', type=int,
                   help='nodes downloading at once (as the conductor knows)')
    p.add_argument('--connect', action='append', default=[])
    p.add_argument('--start-file')
    p.add_argument('--cli', action='store_true')
    p.add_argument('--ssl-authority',
                   help='an SSL swarm of the authority in this directory')
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser('write')
    p.add_argument('torrent')
    p.add_argument('target')
    p.add_argument('--listen', required=True)
    p.add_argument('--tracker', action='append', default=[])
    p.add_argument('--peer', action='append', default=[])
    p.add_argument('--linger', type=float, default=30)
    p.add_argument('--sha256')
    p.add_argument('--settings')
    p.add_argument('--start-file', required=True)
    p.add_argument('--cli', action='store_true')
    p.add_argument('--poll', type=float,
                   help='prototype: the writer polls its status this often')
    p.add_argument('--plan-backup', type=int,
                   help='PiecePlan backup threshold (experiments)')
    p.add_argument('--no-share', action='store_true',
                   help='plain rarest-first: no piece plan')
    p.add_argument('--no-overlap', action='store_true',
                   help='read the image back only after the download')
    p.add_argument('--no-sequential', action='store_true',
                   help='never fetch pieces in order, even alone')
    p.add_argument('--flush-interval', type=float,
                   help='seconds between flushes while downloading')
    p.add_argument('--diag', type=float,
                   help='log the peers every DIAG seconds')
    p.add_argument('--ssl-credentials',
                   help='join an SSL swarm with these credentials')
    p.add_argument('--stripes', type=int, default=0,
                   help='study: this many sessions on stripes of the '
                        'pieces, from the first --peer only '
                        '(tests.lab.stripes)')
    p.set_defaults(func=cmd_write)

    p = sub.add_parser('http')
    p.add_argument('file')
    p.add_argument('--listen', required=True)
    p.set_defaults(func=cmd_http)

    p = sub.add_parser('fetch')
    p.add_argument('url')
    p.add_argument('target')
    p.add_argument('--sha256')
    p.add_argument('--start-file', required=True)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser('publish')
    p.add_argument('image')
    p.add_argument('--listen', required=True)
    p.add_argument('--data-dir', required=True)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser('zero')
    p.add_argument('torrent')
    p.add_argument('target')
    p.set_defaults(func=cmd_zero)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
