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
import json
import os
import shutil
import statistics
import sys
import tempfile
import time


from tests.lab import bench_metrics
from tests.lab import bench_report
from tests.lab import bench_runner
from tests.lab import bench_variants

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
    variant = bench_variants.Variant(
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
        n, method, bench_report.fmt(res['seconds']), 100 * res['cpu']['busy'],
        100 * (res['own_cpu_share'] or 0),
        '  FAILED: ' + '; '.join(failed) if failed else '')


def run_scaling(args, out):
    image_size = args.image_size_mib * bench_metrics.MiB
    methods = args.methods
    # The image, and a loop device a little larger for each node.
    state_dir, temporary = lab_state_dir(
        args, (max(args.nodes) + 1) * (image_size + 16 * bench_metrics.MiB))
    variant = base_variant(args)
    report = {'mode': 'scaling', 'machine': bench_metrics.machine(),
              'config': {'nodes': args.nodes, 'image_size': image_size,
                         'rate_mbit': args.rate_mbit,
                         'sparse': args.sparse, 'methods': methods,
                         'variant': variant.describe(),
                         'state_dir': state_dir}}
    started = time.monotonic()
    runs = []
    try:
        with bench_runner.Bench(state_dir, max(args.nodes), image_size,
                                args.rate_mbit, sparse=args.sparse) as bench:
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
    rows = bench_report.scaling_rows(runs, image_size, args.rate_mbit)
    report['rows'] = rows
    report['runs'] = [{'nodes': n, **m} for n, m in runs]
    report['targets'] = [
        {'target': t, 'ok': ok, 'detail': d}
        for t, ok, d in bench_report.check_targets(rows, image_size,
                                                   args.rate_mbit)]
    if args.sparse:
        report['sparse'] = sparse_summary(runs, report['image'],
                                          report['torrent'])
    print()
    print('image %d MiB%s, links %g Mbit/s, F/B = %.2f s; %s' % (
        image_size // bench_metrics.MiB,
        ' (sparse, %d non-zero bytes)' % bench.nonzero
        if args.sparse else ' random', args.rate_mbit,
        bench_metrics.wire_seconds(image_size, args.rate_mbit),
        variant.describe()))
    print(bench_report.format_table(rows))
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
    bench_report.write_json(os.path.join(out, 'results.json'), report)
    if rows:
        bench_report.plot(rows, image_size, args.rate_mbit,
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
                  c['size'] // bench_metrics.MiB, c['create_warm'],
                  c['sha256sum_warm'],
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
    image_size = args.image_size_mib * bench_metrics.MiB
    state_dir, temporary = lab_state_dir(
        args, (max(args.nodes) + 1) * (image_size + 16 * bench_metrics.MiB))
    if args.variants_file:
        with open(args.variants_file) as f:
            variants = [bench_variants.Variant(**v) for v in json.load(f)]
    else:
        variants = bench_variants.lever_variants()
    if args.only:
        variants = [v for v in variants
                    if v is variants[0] or v.name in args.only]
    report = {'mode': 'levers', 'machine': bench_metrics.machine(),
              'config': {'nodes': args.nodes, 'image_size': image_size,
                         'rate_mbit': args.rate_mbit,
                         'repeat': args.repeat}, 'runs': []}
    started = time.monotonic()
    try:
        with bench_runner.Bench(state_dir, max(args.nodes), image_size,
                                args.rate_mbit, sparse=args.sparse) as bench:
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
                                  n, variant.name, bench_report.fmt(
                                      res['seconds']),
                                  100 * res['cpu']['busy'],
                                  (res['seeder_uploaded_bytes'] or 0)
                                  / image_size,
                                  '' if res['ok'] else '  FAILED'),
                              flush=True)
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
    report['seconds'] = round(time.monotonic() - started, 1)
    bound = bench_metrics.wire_seconds(image_size, args.rate_mbit)
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
          '%d runs' % (image_size // bench_metrics.MiB, args.rate_mbit,
                       bound or 0, args.repeat))
    print('%4s %-30s %8s %7s %6s %6s %5s %6s  %s' % (
        'N', 'variant', 'median s', 'x base', 'x F/B', 'seedup', 'cpu',
        'own s', 'settings'))
    for s in summary:
        print('%4d %-30s %8s %7s %6s %6s %5s %6s  %s' % (
            s['nodes'], s['variant'], bench_report.fmt(s['median']),
            bench_report.fmt(s['over_baseline'], '%.3f'),
            bench_report.fmt(s['over_wire']),
            bench_report.fmt(s['seeder_up_over_image']),
            bench_report.fmt(s['cpu_busy']),
            bench_report.fmt(s['own_cpu_seconds'], '%.1f'), s['detail']))
    os.makedirs(out, exist_ok=True)
    bench_report.write_json(os.path.join(out, 'levers.json'), report)
    print('wrote %s (%.0f s)' % (os.path.join(out, 'levers.json'),
                                 report['seconds']))
    return 0


def run_rss(args, out):
    """Peak RSS of one agent writing a large image over an unshaped link."""
    size = args.rss_image_gib * 1024 * bench_metrics.MiB
    # On disk, not tmpfs: the image and the loop device's file are 2 x the
    # size, and a disk slower than the link is what fills the writer's
    # disk queue, the worst case for its memory.
    if not args.tmp_dir:
        args.tmp_dir = tempfile.gettempdir()
    state_dir, temporary = lab_state_dir(args)
    variant = base_variant(args)
    report = {'mode': 'rss', 'machine': bench_metrics.machine(),
              'config': {'image_size': size, 'variant': variant.describe()}}
    started = time.monotonic()
    try:
        usage = shutil.disk_usage(os.path.dirname(state_dir) or '/')
        if usage.free < 3 * size:
            raise SystemExit('--rss needs %d GiB free in %s' % (
                3 * size // 2 ** 30, state_dir))
        with bench_runner.Bench(state_dir, 1, size, None) as bench:
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
    bench_report.write_json(os.path.join(out, 'rss.json'), report)
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
