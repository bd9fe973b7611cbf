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

"""Tests for the cloud mode's figures and table (tests/lab/bench_cloud)."""

from unittest import mock

import pytest

from tests.lab import bench
from tests.lab import bench_cloud
from tests.lab import bench_metrics

MiB = 1024 * 1024


def _report(ok=True, seconds=(20.0, 25.5), from_conductor=32 * MiB):
    return {
        'ok': ok,
        'slowest_active_seconds': max(s for s in seconds if s),
        'wall_seconds': 30.2,
        'totals': {'downloaded': 2 * 16 * MiB,
                   'from_conductor': from_conductor,
                   'from_peers': 32 * MiB - from_conductor},
        'nodes': [{'node': 'node%d' % i, 'state': 'active',
                   'seconds': s, 'disk': 'exact', 'verified': True,
                   'from_conductor': from_conductor // 2,
                   'from_peers': 16 * MiB - from_conductor // 2,
                   'uploaded': 0, 'last_error': None}
                  for i, s in enumerate(seconds)],
    }


def test_summarize_takes_the_last_active_node():
    res = bench_cloud.summarize(_report(), cpu={'busy': 0.5}, wire=123)
    assert res['ok'] is True
    assert res['seconds'] == 25.5
    assert res['node_seconds'] == [20.0, 25.5]
    assert res['from_conductor'] == 32 * MiB
    assert res['from_peers'] == 0
    assert res['conductor_wire_bytes'] == 123
    assert res['cpu'] == {'busy': 0.5}
    assert [n['node'] for n in res['nodes']] == ['node0', 'node1']


def test_summarize_failed_deploy_has_no_time():
    res = bench_cloud.summarize(_report(ok=False))
    assert res['ok'] is False
    assert res['seconds'] is None
    # The nodes' own times are kept for the post-mortem.
    assert res['node_seconds'] == [20.0, 25.5]


def test_cloud_rows_ratios_and_bound():
    # 16 MiB at 50 Mbit/s: F/B = 2.68 s.
    size, rate = 16 * MiB, 50
    bound = bench_metrics.wire_seconds(size, rate)
    runs = [{'nodes': 2,
             'direct': bench_cloud.summarize(
                 _report(seconds=(30.0, 40.0)), cpu={'busy': 0.25}),
             'bittorrent': bench_cloud.summarize(
                 _report(seconds=(19.0, 20.0),
                         from_conductor=16 * MiB))}]
    [row] = bench_cloud.cloud_rows(runs, size, rate)
    assert row['nodes'] == 2
    assert row['direct_seconds'] == 40.0
    assert row['bittorrent_seconds'] == 20.0
    assert row['direct_over_bittorrent'] == 2.0
    assert row['bittorrent_over_wire'] == round(20.0 / bound, 2)
    assert row['direct_over_wire'] == round(40.0 / bound, 2)
    assert row['direct_conductor_mib'] == 32.0
    assert row['bittorrent_conductor_mib'] == 16.0
    assert row['direct_cpu_busy'] == 0.25
    assert row['bittorrent_cpu_busy'] is None


def test_cloud_rows_missing_or_failed_method():
    runs = [{'nodes': 1,
             'direct': bench_cloud.summarize(_report(ok=False))}]
    [row] = bench_cloud.cloud_rows(runs, 16 * MiB, 50)
    assert row['direct_seconds'] is None
    assert row['bittorrent_seconds'] is None
    assert row['direct_over_bittorrent'] is None
    assert row['bittorrent_over_wire'] is None
    table = bench_cloud.format_table([row])
    header, line = table.splitlines()
    assert header.split()[:3] == ['N', 'direct', 's']
    assert line.split()[:5] == ['1', '-', '-', '-', '-']


def test_format_table_and_nodes():
    runs = [{'nodes': 2,
             'direct': bench_cloud.summarize(_report(seconds=(30.0, 40.0))),
             'bittorrent': bench_cloud.summarize(
                 _report(seconds=(19.0, 20.0)))}]
    rows = bench_cloud.cloud_rows(runs, 16 * MiB, 50)
    line = bench_cloud.format_table(rows).splitlines()[1]
    assert line.split()[:5] == ['2', '40.0', '20.0', '2.00', '7.45']
    assert bench_cloud.format_nodes(runs).splitlines() == [
        'N=2   direct     30.0 40.0', 'N=2   bittorrent 19.0 20.0']


@pytest.mark.parametrize('requested, expected', [
    (None, ['direct', 'bittorrent']),
    (['unicast', 'bittorrent'], ['direct', 'bittorrent']),
    (['bittorrent', 'direct'], ['direct', 'bittorrent']),
    (['bittorrent'], ['bittorrent']),
])
def test_methods(requested, expected):
    assert bench_cloud.methods(requested) == expected


def test_methods_refuses_unknown():
    with pytest.raises(ValueError, match='iscsi'):
        bench_cloud.methods(['iscsi'])


def test_deploy_timeout_grows_with_n():
    size = 64 * MiB
    assert bench_cloud.deploy_timeout(1, size, 50) >= 600
    assert (bench_cloud.deploy_timeout(8, size, 50)
            > bench_cloud.deploy_timeout(1, size, 50)
            + 7 * bench_metrics.wire_seconds(size, 50))


def test_default_output_dir_is_not_the_component_one():
    args = mock.Mock(output_dir='.bench')
    assert bench_cloud._output_dir(args).endswith('/.bench/cloud')
    args = mock.Mock(output_dir='/tmp/x')
    assert bench_cloud._output_dir(args) == '/tmp/x'


def test_bench_dispatches_cloud_mode():
    args = bench.build_parser().parse_args(['--cloud', '--quick'])
    assert args.cloud and args.quick
    assert not bench.build_parser().parse_args([]).cloud
    with mock.patch.object(bench_cloud, 'run', autospec=True,
                           return_value=0) as run, \
            mock.patch.object(bench.os, 'geteuid', autospec=True,
                              return_value=0):
        assert bench.main(['--cloud']) == 0
    run.assert_called_once_with(mock.ANY)
    assert run.call_args[0][0].cloud is True
