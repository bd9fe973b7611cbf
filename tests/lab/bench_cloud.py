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

"""Cloud mode of the benchmark: ``direct`` against ``bittorrent`` in Ironic.

``python -m tests.lab.bench --cloud [--quick]`` measures what an operator
sees. It brings up the local cloud (:mod:`tests.lab.cloud`: a real
all-in-one Ironic, one network namespace, loop device and real
ironic-python-agent per node) once, with as many nodes as the largest N,
and every link shaped with ``tc tbf`` to ``--rate-mbit`` in both
directions -- the conductor's too (the bridge's own egress, which carries
everything the conductor's HTTP server and seeder send into the lab), so
that HTTP from the conductor is bound by B as in the component mode.
For every N of ``--nodes`` it deploys the first N nodes with the stock
``direct`` interface (each agent downloads the image from the conductor
over HTTP) and then with ``bittorrent``, the same random image each time
(``--sparse``: mostly zeros), with ``openstack baremetal node deploy``.
The time of a deploy runs from that command to the last node ``active``
(its ``provision_updated_at``); the harness then checks every disk byte
for byte. Between deploys the harness returns the nodes to ``available``
(``deleted``, no automated cleaning), discards their disks and boots
fresh agents, outside the timing. One untimed N=1 deploy per interface
comes first, so that the conductor's image cache and torrent are made
before the timed runs.

It prints a table (N, direct seconds, bittorrent seconds, their ratio,
bittorrent / (F/B), MiB sent by the conductor for each), the per-node
times, and writes ``results.json`` (``"mode": "cloud"``: every deploy's
harness report, per-node seconds, bytes from the conductor and from peers,
the bytes the conductor's link carried, CPU use) and ``bench.png`` to
``--output-dir`` (``.bench/cloud`` when that is left at its default, so the
component results are not overwritten). The deploys' progress goes to
``deploys.log`` there, and the cloud's logs are copied there if a deploy
failed. The cloud is torn down at the end whatever happens (failure,
Ctrl-C, SIGTERM).

Defaults: N = 1,2,4,8 and a 64 MiB image; ``--quick``: N = 1,2,4 and
16 MiB, under three minutes on a 2-core VM. ``--nodes 1,2,4,8,16`` works
there too (16 agents and Ironic on 2 cores) and takes about 12 minutes at
64 MiB and 50 Mbit/s, most of it the direct deploy of 16 nodes. Unlike
the component mode, a deploy here also carries Ironic's fixed cost (API,
conductor steps, agent commands and heartbeats, the client's start-up):
it shows at N=1 as the difference between the time and F/B, and it is why
bittorrent / (F/B) is well above the component mode's for small images.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.lab import bench
from tests.lab import bench_metrics
from tests.lab import bench_report
from tests.lab import cloud as lab_cloud
from tests.lab import images
from tests.lab import net

MiB = bench_metrics.MiB
QUICK = {'nodes': [1, 2, 4], 'image_size_mib': 16}
FULL = {'nodes': [1, 2, 4, 8], 'image_size_mib': 64}
METHODS = ('direct', 'bittorrent')
#: What the component mode calls its HTTP method.
_ALIASES = {'unicast': 'direct', 'http': 'direct'}
#: Room on each node's disk beyond the image.
DISK_SLACK_MIB = 16
#: --output-dir's default in bench.py, and where cloud mode writes then.
COMPONENT_OUTPUT_DIR = '.bench'
CLOUD_OUTPUT_DIR = os.path.join('.bench', 'cloud')


# -- pure helpers -------------------------------------------------------------

def methods(requested):
    """The deploy interfaces to run, in the benchmark's order."""
    wanted = {_ALIASES.get(m, m) for m in requested or METHODS}
    unknown = wanted - set(METHODS)
    if unknown:
        raise ValueError('unknown methods for the cloud mode: %s (use %s)'
                         % (', '.join(sorted(unknown)), ', '.join(METHODS)))
    return [m for m in METHODS if m in wanted]


def deploy_timeout(n, image_size, rate_mbit):
    """Seconds a deploy of ``n`` nodes may take before it is a failure.

    Generous: N x F/B (unicast from one link) plus ten minutes of Ironic.
    """
    return int(600 + 2 * n * bench_metrics.wire_seconds(image_size, rate_mbit))


def summarize(report, cpu=None, wire=None):
    """The figures of one deploy, from the harness's report.

    :param report: what :meth:`tests.lab.cloud.Cloud.deploy` returned.
    :param cpu: :func:`tests.lab.bench_metrics.cpu_busy` over the deploy.
    :param wire: bytes the conductor's link carried into the lab.
    :returns: a dict; ``seconds`` is the time to the last node active, or
        None when the deploy did not succeed.
    """
    totals = report.get('totals') or {}
    nodes = [{'node': r['node'], 'state': r['state'],
              'seconds': r['seconds'], 'disk': r['disk'],
              'verified': r['verified'],
              'from_conductor': r['from_conductor'],
              'from_peers': r['from_peers'],
              'uploaded': r['uploaded'], 'last_error': r['last_error']}
             for r in report.get('nodes', [])]
    ok = bool(report.get('ok'))
    return {
        'ok': ok,
        'seconds': report.get('slowest_active_seconds') if ok else None,
        'wall_seconds': report.get('wall_seconds'),
        'node_seconds': [r['seconds'] for r in nodes],
        'from_conductor': totals.get('from_conductor'),
        'from_peers': totals.get('from_peers'),
        'downloaded': totals.get('downloaded'),
        'conductor_wire_bytes': wire,
        'cpu': cpu,
        'nodes': nodes,
    }


def _mib(nbytes):
    return None if nbytes is None else round(nbytes / MiB, 1)


def cloud_rows(runs, image_size, rate_mbit):
    """Table rows from ``[{'nodes': N, 'direct': {...}, ...}]``.

    Each method's dict is a :func:`summarize` result (``seconds`` None
    when that deploy failed); a method may be missing.
    """
    bound = bench_metrics.wire_seconds(image_size, rate_mbit)
    rows = []
    for run in runs:
        direct = run.get('direct') or {}
        bt = run.get('bittorrent') or {}
        ds, bs = direct.get('seconds'), bt.get('seconds')
        rows.append({
            'nodes': run['nodes'],
            'direct_seconds': ds,
            'bittorrent_seconds': bs,
            'direct_over_bittorrent': round(ds / bs, 2)
            if ds and bs else None,
            'bittorrent_over_wire': round(bs / bound, 2) if bs else None,
            'direct_over_wire': round(ds / bound, 2) if ds else None,
            'direct_conductor_mib': _mib(direct.get('from_conductor')),
            'bittorrent_conductor_mib': _mib(bt.get('from_conductor')),
            'direct_cpu_busy': (direct.get('cpu') or {}).get('busy'),
            'bittorrent_cpu_busy': (bt.get('cpu') or {}).get('busy'),
        })
    return rows


def format_table(rows):
    fmt = bench_report.fmt
    lines = ['%5s %9s %12s %10s %9s %11s %11s %7s %7s' % (
        'N', 'direct s', 'bittorrent s', 'direct/bt', 'bt/(F/B)',
        'MiB cond d', 'MiB cond bt', 'cpu d', 'cpu bt')]
    for r in rows:
        lines.append('%5d %9s %12s %10s %9s %11s %11s %7s %7s' % (
            r['nodes'], fmt(r['direct_seconds'], '%.1f'),
            fmt(r['bittorrent_seconds'], '%.1f'),
            fmt(r['direct_over_bittorrent']),
            fmt(r['bittorrent_over_wire']),
            fmt(r['direct_conductor_mib'], '%.1f'),
            fmt(r['bittorrent_conductor_mib'], '%.1f'),
            fmt(r['direct_cpu_busy']), fmt(r['bittorrent_cpu_busy'])))
    return '\n'.join(lines)


def format_nodes(runs):
    """One line per deploy: every node's seconds, in node order."""
    lines = []
    for run in runs:
        for method in METHODS:
            res = run.get(method)
            if not res:
                continue
            lines.append('N=%-3d %-10s %s' % (
                run['nodes'], method, ' '.join(
                    '-' if s is None else '%.1f' % s
                    for s in res['node_seconds'])))
    return '\n'.join(lines)


def plot(rows, image_size, rate_mbit, path):
    bound = bench_metrics.wire_seconds(image_size, rate_mbit)
    bench_report.plot_scaling(
        path, rows,
        [('direct_seconds', 'o-', 'tab:red',
          'Ironic direct (HTTP from the conductor)'),
         ('bittorrent_seconds', 's-', 'tab:blue', 'Ironic bittorrent')],
        bound, 'seconds from "node deploy" to the last node active',
        'Through Ironic: %d MiB image, %g Mbit/s links' % (
            image_size // MiB, rate_mbit),
        guides=[([r['nodes'] * bound for r in rows], ':', 'tab:red',
                 'N x F/B (one link, unicast)')])


# -- the run ------------------------------------------------------------------

def _say(msg, *args):
    print(msg % args if args else msg, flush=True)


def _bridge_tx(lab):
    """Bytes the root namespace (the conductor) sent into the lab."""
    return bench_metrics.read_int('/sys/class/net/%s/statistics/tx_bytes'
                                  % lab.bridge)


def shaping(lab, names):
    """The qdisc of every shaped device: the conductor's and the nodes'.

    :raises RuntimeError: a link is not shaped (the numbers would not be
        bound by the link rate).
    """
    devices = [('conductor', lab.bridge)] + [
        (name, lab.host(name).veth_root) for name in names]
    out = {}
    for owner, dev in devices:
        text = subprocess.run(['tc', 'qdisc', 'show', 'dev', dev, 'root'],
                              capture_output=True, text=True).stdout.strip()
        if 'tbf' not in text:
            raise RuntimeError('the link of %s (%s) is not shaped: %r'
                               % (owner, dev, text))
        out['%s %s' % (owner, dev)] = text
    for name in names:
        host = lab.host(name)
        text = host.run(['tc', 'qdisc', 'show', 'dev', host.veth_ns, 'root'],
                        capture_output=True, text=True).stdout.strip()
        if 'tbf' not in text:
            raise RuntimeError('the upload of %s is not shaped: %r'
                               % (name, text))
        out['%s %s (in its namespace)' % (name, host.veth_ns)] = text
    return out


def cli_seconds(cloud):
    """How long the openstack client takes to run a trivial command.

    Part of every deploy's time (the client starts, then the deploy);
    reported so that Ironic's fixed cost can be read off the table.
    """
    cmd = [os.path.join(lab_cloud.BINDIR, 'openstack'), 'baremetal', 'node',
           'list', '-f', 'value', '-c', 'UUID']
    start = time.monotonic()
    subprocess.run(cmd, env=lab_cloud.osc_env(cloud),
                   capture_output=True, check=True)
    return round(time.monotonic() - start, 2)


def _deploy(cloud, method, names, image, image_size, rate_mbit, log):
    lab = cloud.lab
    log.write('\n==== %s, N=%d: %s\n' % (method, len(names),
                                         ', '.join(names)))
    log.flush()
    cpu0 = bench_metrics.cpu_times()
    wire0 = _bridge_tx(lab)
    report = cloud.deploy(
        interface=method, image=image.path, names=names,
        timeout=deploy_timeout(len(names), image_size, rate_mbit),
        out=log)
    cpu = bench_metrics.cpu_busy(cpu0, bench_metrics.cpu_times())
    res = summarize(report, cpu, _bridge_tx(lab) - wire0)
    res['report'] = report
    return res


def _progress(n, method, res):
    failed = ['%s %s: %s' % (r['node'], r['state'],
                             (r['last_error'] or r['disk'] or '')[-200:])
              for r in res['nodes']
              if r['state'] != 'active' or not r['verified']]
    return ('N=%-3d %-10s %s s (wall %s s; conductor sent %s MiB, peers %s '
            'MiB; cpu busy %.0f%%)%s' % (
                n, method, bench_report.fmt(res['seconds'], '%.1f'),
                bench_report.fmt(res['wall_seconds'], '%.1f'),
                bench_report.fmt(_mib(res['from_conductor']), '%.1f'),
                bench_report.fmt(_mib(res['from_peers']), '%.1f'),
                100 * (res['cpu'] or {}).get('busy', 0),
                '  FAILED: ' + '; '.join(failed) if failed else ''))


def source():
    """The code being measured: its checkout, commit and local changes.

    The agents and the conductor import ironic-bt from this checkout
    (:data:`tests.lab.cloud.REPO`); uncommitted changes there are part of
    what is measured.
    """
    repo = lab_cloud.REPO
    info = {'repo': repo, 'commit': None, 'modified': None}
    try:
        info['commit'] = subprocess.run(
            ['git', '-C', repo, 'rev-parse', 'HEAD'], capture_output=True,
            text=True, check=True).stdout.strip()
        status = subprocess.run(
            ['git', '-C', repo, 'status', '--porcelain', '--',
             'ironic_bt', 'ipa_extension', 'tests/lab'],
            capture_output=True, text=True, check=True).stdout
        info['modified'] = [line[3:] for line in status.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        pass  # not a git checkout (e.g. an exported tree)
    return info


def _teardown(state_dir, purge):
    """``cloud down``, not to be cut short by a second Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return lab_cloud.down(state_dir, purge=purge)
    finally:
        signal.signal(signal.SIGINT, previous)


def _output_dir(args):
    out = args.output_dir
    if os.path.normpath(out) == COMPONENT_OUTPUT_DIR:
        out = CLOUD_OUTPUT_DIR
    return os.path.abspath(out)


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM raises SystemExit, so that ``finally`` tears down."""
    previous = signal.signal(signal.SIGTERM,
                             lambda s, f: sys.exit(128 + s))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args):
    """``python -m tests.lab.bench --cloud``; returns the exit status."""
    if args.levers or args.rss:
        _say('--cloud cannot be combined with --levers or --rss')
        return 2
    defaults = QUICK if args.quick else FULL
    nodes = args.nodes or list(defaults['nodes'])
    size_mib = args.image_size_mib or defaults['image_size_mib']
    image_size = size_mib * MiB
    rate = args.rate_mbit
    try:
        order = methods(args.methods)
    except ValueError as e:
        _say('%s', e)
        return 2
    out = _output_dir(args)
    os.makedirs(out, exist_ok=True)
    disk_mib = size_mib + DISK_SLACK_MIB
    # Loop backing files (max N disks), the image, its copies in the
    # conductor's cache and HTTP root.
    need = (max(nodes) * disk_mib + 4 * size_mib) * MiB
    if args.state_dir:
        state_dir, temporary = os.path.abspath(args.state_dir), False
        os.makedirs(state_dir, exist_ok=True)
    else:
        state_dir, temporary = tempfile.mkdtemp(
            prefix='ironic-bt-bench-cloud-',
            dir=bench.tmp_dir(args, need)), True
    bound = bench_metrics.wire_seconds(image_size, rate)
    report = {'mode': 'cloud', 'machine': bench_metrics.machine(),
              'source': source(),
              'config': {'nodes': nodes, 'image_size': image_size,
                         'rate_mbit': rate, 'sparse': args.sparse,
                         'methods': order, 'disk_mib': disk_mib,
                         'database': args.cloud_database,
                         'state_dir': state_dir,
                         'wire_seconds': round(bound, 3)}}
    runs = []
    failed = False
    started = time.monotonic()
    log_path = os.path.join(out, 'deploys.log')
    cloud = lab_cloud.Cloud(state_dir)
    try:
        with _sigterm_as_exit(), open(log_path, 'w') as log:
            image = images.make_labelled_image(
                os.path.join(state_dir, 'bench-%dm.img' % size_mib),
                image_size, args.sparse)
            report['image'] = {'size': image.size, 'sha256': image.sha256,
                               'sparse': args.sparse}
            _say('cloud benchmark: N=%s, %d MiB %s image, %g Mbit/s '
                 '(F/B = %.1f s); state in %s, progress in %s',
                 ','.join(map(str, nodes)), size_mib,
                 'sparse' if args.sparse else 'random', rate, bound,
                 state_dir, log_path)
            cloud.up(nodes=max(nodes), rate_mbit=rate, disk_mib=disk_mib,
                     database=args.cloud_database)
            if not set(order) <= set(cloud.state['deploy_interfaces']):
                raise lab_cloud.CloudError(
                    'cannot benchmark %s: %s' % (
                        ', '.join(order), cloud.state['interface_note']))
            names = cloud.node_names()
            report['shaping'] = shaping(cloud.lab, names)
            report['cli_seconds'] = cli_seconds(cloud)
            _say('cloud of %d nodes up in %.0f s, every link shaped to %g '
                 'Mbit/s (conductor included); "openstack baremetal node '
                 'list" takes %.1f s', len(names),
                 time.monotonic() - started, rate, report['cli_seconds'])
            report['warmup'] = {}
            for method in order:
                res = _deploy(cloud, method, names[:1], image, image_size,
                              rate, log)
                report['warmup'][method] = res
                _say('warm-up (untimed): %s', _progress(1, method, res))
                failed = failed or not res['ok']
            for n in nodes:
                by_method = {'nodes': n}
                runs.append(by_method)
                for method in order:
                    res = _deploy(cloud, method, names[:n], image,
                                  image_size, rate, log)
                    by_method[method] = res
                    _say('%s', _progress(n, method, res))
                    failed = failed or not res['ok']
    except (lab_cloud.CloudError, net.LabError, TimeoutError,
            RuntimeError) as e:
        failed = True
        report['error'] = str(e)
        _say('cloud benchmark failed: %s', e)
    except KeyboardInterrupt:
        failed = True
        report['error'] = 'interrupted'
        _say('interrupted: tearing down')
    finally:
        if failed and os.path.isdir(cloud.path('logs')):
            shutil.rmtree(os.path.join(out, 'logs'), ignore_errors=True)
            shutil.copytree(cloud.path('logs'), os.path.join(out, 'logs'),
                            ignore_dangling_symlinks=True)
            _say('the cloud\'s logs are in %s', os.path.join(out, 'logs'))
        problems = _teardown(state_dir, temporary)
        for problem in problems:
            _say('teardown problem: %s', problem)
        report['teardown_problems'] = problems
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
    report['seconds'] = round(time.monotonic() - started, 1)
    rows = cloud_rows(runs, image_size, rate)
    report['rows'] = rows
    report['runs'] = runs
    _say('')
    _say('through Ironic: image %d MiB%s, links %g Mbit/s (conductor '
         'included), F/B = %.2f s; client start-up %s s',
         size_mib, ' sparse' if args.sparse else ' random', rate, bound,
         report.get('cli_seconds', '-'))
    _say('%s', format_table(rows))
    _say('seconds of each node (node order):')
    _say('%s', format_nodes(runs))
    bench_report.write_json(os.path.join(out, 'results.json'), report)
    png = os.path.join(out, 'bench.png')
    if any(r['direct_seconds'] or r['bittorrent_seconds'] for r in rows):
        plot(rows, image_size, rate, png)
    _say('wrote %s and %s (%.0f s)%s', os.path.join(out, 'results.json'),
         png, report['seconds'], '; FAILED' if failed else '')
    return 1 if failed or report['teardown_problems'] else 0
