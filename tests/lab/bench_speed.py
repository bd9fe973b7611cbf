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

"""``python -m tests.lab.bench --speed``: the writer at line rate.

Real provisioning networks run at 1 to 25 Gbit/s, where what limits a
deploy is the CPU and the disk path of one node, not the seeder's link.
Three cases, each HTTP streamed as IPA does it against ``bittorrent``, in
one run:

* 1 -> 1 over an unshaped veth, 1 GiB;
* 1 -> 4 and 1 -> 8 at 1 Gbit/s per link, 256 MiB.

For each: seconds until the last node is done, the ratio, CPU seconds per
GiB written (the writers, and the server side: HTTP server or seeder;
each process's CPU from the common start until the last node was done),
peak RSS, and how busy the machine's CPUs were (on a 2-core machine that
also runs the seeder and every node, a busy machine measures the machine).
"""

import json
import os
import shutil
import time

from tests.lab import bench
from tests.lab import bench_metrics
from tests.lab import bench_report
from tests.lab import bench_runner

GiB = 1024 ** 3
MiB = bench_metrics.MiB

#: (label, nodes, image MiB, link Mbit/s or None for unshaped)
CASES = [
    ('1->1 unshaped', 1, 1024, None),
    ('1->4 1 Gbit/s', 4, 256, 1000),
    ('1->8 1 Gbit/s', 8, 256, 1000),
]
#: EZIO's 1 -> 4 at 1 Gbit/s with 256 MiB on this kind of machine (issue).
EZIO_1_TO_4 = 6.8


def _server_usage(b):
    """Usage of the HTTP server since it started (it is stopped here)."""
    log = b.log('http')
    b.close_http()
    return bench_metrics.log_event(log, 'done') or {}


def _per_gib(cpu, written):
    return round(cpu / (written / GiB), 2) if cpu is not None and written \
        else None


def _summary(res, size, server_hwm):
    nodes = res['nodes']
    written = size * len(nodes)
    # CPU from the common start until the last node was done, per process:
    # not Python's start-up, not lingering.
    window = res['cpu'].get('window_cpu_seconds') or {}
    writer_cpu = sum(window.get(n['name'], 0) for n in nodes)
    server_cpu = window.get('server')
    return {
        'ok': res['ok'], 'seconds': res['seconds'],
        'writer_cpu_per_gib': _per_gib(writer_cpu, written),
        'server_cpu_per_gib': _per_gib(server_cpu, written),
        'writer_peak_rss_mib': round(max(
            (n.get('vmhwm_kib') or 0) for n in nodes) / 1024, 1),
        'server_peak_rss_mib': round((server_hwm or 0) / 1024, 1),
        'cpu_busy': res['cpu']['busy'],
        'download_seconds': max((n.get('download_seconds') or 0)
                                for n in nodes) or None,
        'verify_seconds': max((n.get('verify_seconds') or 0)
                              for n in nodes) or None,
        'errors': [n['error'][-300:] for n in nodes if not n['ok']]}


def run_case(args, label, n, size_mib, rate, variant):
    size = size_mib * MiB
    state_dir, temporary = bench.lab_state_dir(
        args, (n + 1) * (size + 16 * MiB))
    try:
        with bench_runner.Bench(state_dir, n, size, rate) as b:
            hosts = b.swarm.hosts[:n]
            b.torrent(variant.piece_size)
            uni = b.run_unicast(hosts)
            usage = _server_usage(b)
            http = _summary(uni, size, usage.get('vmhwm_kib'))
            bt = b.run_bittorrent(hosts, variant)
            torrent = _summary(bt, size, bt.get('seeder_vmhwm_kib'))
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
    row = {'case': label, 'nodes': n, 'image_mib': size_mib,
           'rate_mbit': rate, 'http': http, 'bittorrent': torrent}
    if http['seconds'] and torrent['seconds']:
        row['bt_over_http'] = round(torrent['seconds'] / http['seconds'], 2)
    if http['writer_cpu_per_gib'] and torrent['writer_cpu_per_gib']:
        row['writer_cpu_ratio'] = round(
            torrent['writer_cpu_per_gib'] / http['writer_cpu_per_gib'], 2)
    return row


def check_targets(rows):
    targets = []
    for row in rows:
        bt = row['bittorrent']
        ratio = row.get('bt_over_http')
        cpu_ratio = row.get('writer_cpu_ratio')
        if row['nodes'] == 1:
            targets.append(('1->1: bittorrent <= 1.10 x HTTP seconds',
                            ratio is not None and ratio <= 1.10,
                            '%s x' % ratio))
            targets.append(('1->1: writer CPU/GiB <= 1.5 x HTTP',
                            cpu_ratio is not None and cpu_ratio <= 1.5,
                            '%s x' % cpu_ratio))
            continue
        saturated = (bt['cpu_busy'] or 0) >= 0.9
        if row['nodes'] == 4:
            targets.append(('1->4: bittorrent <= %.1f s (EZIO)' % EZIO_1_TO_4,
                            bt['seconds'] is not None
                            and bt['seconds'] <= EZIO_1_TO_4,
                            '%s s, cpu busy %.0f%%' % (
                                bt['seconds'], 100 * (bt['cpu_busy'] or 0))))
        if saturated:
            targets.append(('%s: CPU saturated, writer CPU/GiB <= 1.5 x HTTP'
                            % row['case'],
                            cpu_ratio is not None and cpu_ratio <= 1.5,
                            '%s x' % cpu_ratio))
    return targets


def format_rows(rows):
    head = ('%-15s %-10s %7s %6s %9s %9s %8s %8s %5s' % (
        'case', 'method', 'seconds', 'bt/http', 'wr cpu/G', 'srv cpu/G',
        'wr RSS', 'srv RSS', 'busy'))
    lines = [head]
    for row in rows:
        for method in ('http', 'bittorrent'):
            m = row[method]
            lines.append('%-15s %-10s %7s %6s %9s %9s %7sM %7sM %4.0f%%' % (
                row['case'], method, bench_report.fmt(m['seconds']),
                bench_report.fmt(row.get('bt_over_http'))
                if method == 'bittorrent' else '',
                bench_report.fmt(m['writer_cpu_per_gib']),
                bench_report.fmt(m['server_cpu_per_gib']),
                m['writer_peak_rss_mib'], m['server_peak_rss_mib'],
                100 * (m['cpu_busy'] or 0)))
    return '\n'.join(lines)


def run(args, out):
    variant = bench.base_variant(args)
    cases = [c for c in CASES if not args.nodes or c[1] in args.nodes]
    report = {'mode': 'speed', 'machine': bench_metrics.machine(),
              'config': {'cases': cases, 'variant': variant.describe()}}
    started = time.monotonic()
    rows = []
    for label, n, size_mib, rate in cases:
        row = run_case(args, label, n, size_mib, rate, variant)
        rows.append(row)
        print('%-15s http %s s, bittorrent %s s (download %s s, verify '
              'after it %s s)%s' % (
                  label, bench_report.fmt(row['http']['seconds']),
                  bench_report.fmt(row['bittorrent']['seconds']),
                  bench_report.fmt(row['bittorrent']['download_seconds']),
                  bench_report.fmt(row['bittorrent']['verify_seconds']),
                  ''.join('  FAILED: ' + e for e in
                          row['http']['errors']
                          + row['bittorrent']['errors'])),
              flush=True)
    report['rows'] = rows
    report['targets'] = [{'target': t, 'ok': ok, 'detail': d}
                         for t, ok, d in check_targets(rows)]
    report['seconds'] = round(time.monotonic() - started, 1)
    print()
    print('speed: %s' % variant.describe())
    print(format_rows(rows))
    for t in report['targets']:
        print('%-52s %-4s %s' % (t['target'], 'met' if t['ok'] else 'NOT',
                                 t['detail']))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, 'speed.json')
    with open(path, 'w') as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write('\n')
    print('wrote %s (%.0f s)' % (path, report['seconds']))
    return 0 if all(r['http']['ok'] and r['bittorrent']['ok']
                    for r in rows) else 1
