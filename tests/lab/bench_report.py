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

"""The benchmark's tables, target checks, plots and JSON."""

import json


from tests.lab import bench_metrics


def fmt(value, spec='%.2f'):
    return '-' if value is None else spec % value


def scaling_rows(runs, image_size, rate_mbit):
    bound = bench_metrics.wire_seconds(image_size, rate_mbit)
    rows = []
    for n, by_method in runs:
        uni = by_method.get('unicast', {}).get('seconds')
        bt = by_method.get('bittorrent', {}).get('seconds')
        rows.append({
            'nodes': n, 'unicast_seconds': uni, 'bittorrent_seconds': bt,
            'unicast_over_bittorrent': round(uni / bt, 2)
            if uni and bt else None,
            'bittorrent_over_wire': round(bt / bound, 2) if bt else None,
            'unicast_cpu_busy': by_method.get('unicast', {}).get(
                'cpu', {}).get('busy'),
            'bittorrent_cpu_busy': by_method.get('bittorrent', {}).get(
                'cpu', {}).get('busy')})
    return rows


def format_table(rows):
    lines = ['%5s %10s %12s %10s %10s %8s %8s' % (
        'N', 'unicast s', 'bittorrent s', 'uni/bt', 'bt/(F/B)',
        'cpu uni', 'cpu bt')]
    for r in rows:
        lines.append('%5d %10s %12s %10s %10s %8s %8s' % (
            r['nodes'], fmt(r['unicast_seconds']),
            fmt(r['bittorrent_seconds']),
            fmt(r['unicast_over_bittorrent']),
            fmt(r['bittorrent_over_wire']),
            fmt(r['unicast_cpu_busy']), fmt(r['bittorrent_cpu_busy'])))
    return '\n'.join(lines)


def check_targets(rows, image_size, rate_mbit):
    """The issue 4 targets this table can decide, as (name, ok, detail)."""
    out = []
    bts = [(r['nodes'], r['bittorrent_over_wire']) for r in rows
           if r['bittorrent_over_wire'] is not None]
    if bts:
        worst = max(bts, key=lambda x: x[1])
        out.append(('bittorrent <= 1.25 x F/B for every N',
                    worst[1] <= 1.25,
                    'worst %.2f x at N=%d' % (worst[1], worst[0])))
    for r in rows:
        if r['nodes'] == 1 and r['unicast_seconds'] and \
                r['bittorrent_seconds']:
            ratio = r['bittorrent_seconds'] / r['unicast_seconds']
            out.append(('1 node: bittorrent <= 1.10 x unicast',
                        ratio <= 1.10, '%.2f x' % ratio))
        if r['nodes'] == 16 and r['unicast_over_bittorrent']:
            out.append(('N=16: unicast >= 12 x bittorrent',
                        r['unicast_over_bittorrent'] >= 12,
                        '%.2f x' % r['unicast_over_bittorrent']))
    return out


def plot_scaling(path, rows, series, bound, ylabel, title, guides=()):
    """Seconds against N (log2 axis), one line per method, to a PNG.

    :param rows: dicts with ``nodes`` and the keys named in ``series``.
    :param series: (key, style, color, label) per method; points whose
        value is missing are left out.
    :param bound: the wire bound F/B, drawn as a grey line.
    :param guides: extra (ys, linestyle, color, label) lines.
    """
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    ns = [r['nodes'] for r in rows]
    fig, ax = pyplot.subplots(figsize=(7, 4.5), dpi=110)
    for key, style, color, label in series:
        points = [(r['nodes'], r[key]) for r in rows if r[key]]
        if points:
            ax.plot(*zip(*points), style, color=color, label=label)
    for ys, linestyle, color, label in guides:
        ax.plot(ns, ys, color=color, linestyle=linestyle, linewidth=1,
                label=label)
    ax.axhline(bound, color='gray', linestyle='-', linewidth=1,
               label='wire bound F/B = %.1f s' % bound)
    ax.set_xscale('log', base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel('nodes deployed at once (N)')
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)


def plot(rows, image_size, rate_mbit, path, title_extra=''):
    bound = bench_metrics.wire_seconds(image_size, rate_mbit)
    plot_scaling(
        path, rows,
        [('unicast_seconds', 'o-', 'tab:red', 'HTTP unicast'),
         ('bittorrent_seconds', 's-', 'tab:blue', 'ironic-bt')],
        bound, 'seconds until the last node is done',
        '%d MiB image, %g Mbit/s links%s' % (
            image_size // bench_metrics.MiB, rate_mbit, title_extra),
        guides=[([1.25 * bound] * len(rows), ':', 'gray',
                 'target 1.25 x F/B')])


def write_json(path, data):
    with open(path, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write('\n')
