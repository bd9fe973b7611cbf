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

"""End-to-end deploys on the local bare-metal cloud (tests/lab/cloud.py).

One cloud for the module: a real all-in-one Ironic, four nodes, each a
network namespace with a loop device and a real ironic-python-agent.
Deploys go through ``openstack baremetal node deploy`` and every disk is
compared with the image afterwards. The tests run in order and share the
nodes: each deploy first returns its nodes to ``available``.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from ironic_bt.common import certs
from ironic_bt.common import publication
from ironic_bt.common import torrent
from tests.lab import cloud as lab_cloud
from tests.lab import cloud_report
from tests.lab import images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

IMAGE_MIB = 64
DISK_MIB = 128
# Short, so that the dead agent is noticed in about a minute; ample for
# a 64 MiB image on the lab's links.
CALLBACK_TIMEOUT = 60
DEPLOY_TIMEOUT = 300
SWARM = ['node0', 'node1', 'node2']
SOLO = ['node3']
# The fault cases run on shaped links with an image of 64 MiB of data, so
# that the fault lands while the agents still download: alone, a node takes
# about 21 s at 25 Mbit/s.
FAULT_RATE_MBIT = 25
FAULT_IMAGE_MIB = 96
FAULT_PAYLOAD_MIB = 64


@pytest.fixture(scope='module')
def cloud(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip('the local cloud needs root (network namespaces, a '
                    'bridge, loop devices)')
    # Nothing of the lab may survive: no namespace, link or loop device
    # named after it, no process (lab_cloud.running checks).
    with lab_cloud.running(str(tmp_path_factory.mktemp('cloud')),
                           nodes=len(SWARM + SOLO), disk_mib=DISK_MIB,
                           callback_timeout=CALLBACK_TIMEOUT) as cloud:
        yield cloud


def _rows(report):
    return {row['node']: row for row in report['nodes']}


def _assert_active_and_verified(report, names):
    rows = _rows(report)
    for name in names:
        row = rows[name]
        assert row['state'] == 'active', row
        assert row['last_error'] is None, row
        # The first image-size bytes are the image's (a backup GPT moved
        # to the end of the bigger disk, as IPA does, is allowed).
        assert row['verified'] is True, row


def test_bittorrent_swarm(cloud):
    assert 'bittorrent' in cloud.state['deploy_interfaces'], (
        cloud.state.get('interface_note'))
    report = cloud.deploy(interface='bittorrent', image_size_mib=IMAGE_MIB,
                          names=SWARM, timeout=DEPLOY_TIMEOUT)
    _assert_active_and_verified(report, SWARM)
    assert report['ok']
    for row in report['nodes']:
        # The conductor recorded what each agent reported.
        assert row['source'].startswith('driver_internal_info'), row
        assert 0 < row['downloaded'] <= report['image']['size'], row
    # The image crossed the conductor's HTTP server once, to fill its own
    # cache, and never to a node.
    assert report['conductor']['http_bytes_to_nodes'] == 0
    _assert_no_key_material(cloud, report)


#: An agent token that is not masked: ``agent_token=`` or a JSON or Python
#: dict item, followed by something other than asterisks.
AGENT_TOKEN = re.compile(
    rb'agent_(?:secret_)?token(?:=|["\']?\s*:\s*["\'])(?!\*)[^\s&"\']+')


def _assert_no_key_material(cloud, report):
    """No swarm secret in any log of the deploy, nor in the database.

    The database holds every node field (driver_internal_info,
    instance_info); the logs are ironic's and every agent's, at DEBUG.
    """
    directory = os.path.join(cloud.path('ironic'), 'bittorrent', 'authority')
    authority = certs.Authority.load(os.path.join(directory, 'ca.pem'),
                                     os.path.join(directory, 'ca.key'))
    with open(os.path.join(directory, 'ca.key')) as f:
        ca_key_lines = [line for line in f.read().splitlines()
                        if line and not line.startswith('-----')]
    secret = authority.derive_secret(publication.ANNOUNCE_SECRET_PURPOSE)
    info_hash = torrent.build(report['image']['path']).tracker_keys[0]
    announce_keys = [publication.announce_key(secret, row['uuid'], info_hash)
                     for row in report['nodes']]
    secrets = ['PRIVATE KEY'] + ca_key_lines + announce_keys
    places = [os.path.join(cloud.path('logs'), name)
              for name in sorted(os.listdir(cloud.path('logs')))]
    places.append(cloud.path('ironic', 'ironic.sqlite'))
    searched = 0
    for path in places:
        if not os.path.isfile(path):
            continue
        with open(path, 'rb') as f:
            data = f.read()
        searched += len(data)
        for secret_text in secrets:
            assert secret_text.encode() not in data, (
                '%s holds swarm key material' % path)
        # The agent token, in IPA's request log (the conductor's
        # commands carry it in the query string) or its lookup reply.
        # Ironic keeps it in the database by design, and oslo.db's retry
        # of a locked write logs the statement's parameters at DEBUG:
        # ironic's, not ironic-bt's, so only the agents' logs are held to
        # it.
        if os.path.basename(path).startswith('ipa-'):
            leaked = AGENT_TOKEN.search(data)
            assert leaked is None, '%s holds an agent token: %r' % (
                path, leaked.group(0)[:24])
    # The places exist and the deploy's argument reached them.
    assert searched > 0
    assert b'agent_token=***' in b''.join(
        open(p, 'rb').read() for p in places if p.endswith('.log'))
    assert b'sealed_announce_key' in b''.join(
        open(p, 'rb').read() for p in places if p.endswith('.log'))


def test_direct(cloud):
    report = cloud.deploy(interface='direct', image_size_mib=IMAGE_MIB,
                          names=SOLO, timeout=DEPLOY_TIMEOUT)
    _assert_active_and_verified(report, SOLO)
    assert report['ok']
    row = _rows(report)['node3']
    assert row['http_bytes'] == report['image']['size']


def test_dead_agent(cloud):
    victim = SWARM[-1]
    report = cloud.deploy(interface='bittorrent', image_size_mib=IMAGE_MIB,
                          names=SWARM, kill_agent=victim,
                          timeout=DEPLOY_TIMEOUT)
    assert victim in report['killed_agents']
    rows = _rows(report)
    failed = rows[victim]
    assert failed['state'] == 'deploy failed', failed
    # The operator learns that the agent stopped answering, and on which
    # node. Ironic says so in one of two ways: its callback timeout, or,
    # when a heartbeat sent just before the kill makes the conductor ask
    # the agent for its command status, the refused connection.
    assert any(said in failed['last_error'] for said in (
        'waiting for callback',
        'Failed to connect to the agent running on node')), failed
    assert failed['uuid'] in failed['last_error'], failed
    _assert_active_and_verified(report, [n for n in SWARM if n != victim])
    assert report['ok']


def _ironic_log(cloud):
    with open(cloud.path('logs', 'ironic.log'), errors='replace') as f:
        return f.read()


@pytest.fixture(scope='module')
def fault_image(cloud):
    path = cloud.path('fault-image.img')
    if not os.path.exists(path):
        images.make_disk_image(path, size_mib=FAULT_IMAGE_MIB,
                               payload_mib=FAULT_PAYLOAD_MIB, seed=5)
    return path


@pytest.fixture
def shaped(cloud):
    lab_cloud._reshape(cloud, FAULT_RATE_MBIT)
    try:
        yield cloud
    finally:
        lab_cloud._reshape(cloud, None)


def test_conductor_restart(shaped, fault_image):
    cloud = shaped
    fault = lab_cloud.RestartConductor(SWARM, delay=5)
    report = cloud.deploy(interface='bittorrent', image=fault_image,
                          names=SWARM, fault=fault, timeout=DEPLOY_TIMEOUT)
    print(json.dumps({'conductor_restart': report['faults'],
                      'slowest_s': report['slowest_active_seconds']}))

    assert fault.events, 'ironic was never restarted'
    _assert_active_and_verified(report, SWARM)
    assert report['ok']
    log = _ironic_log(cloud)
    for row in report['nodes']:
        # The new conductor seeded the same torrent again for each node.
        assert re.search(r'Seeding torrent [0-9a-f]{40} again for node %s'
                         % row['uuid'], log), row


def test_agent_restart_resumes(shaped, fault_image):
    cloud = shaped
    victim, = SOLO
    fault = lab_cloud.RestartAgent(victim, delay=10)
    report = cloud.deploy(interface='bittorrent', image=fault_image,
                          names=SOLO, fault=fault, timeout=DEPLOY_TIMEOUT)

    assert fault.events, 'the agent was never restarted'
    _assert_active_and_verified(report, SOLO)
    assert report['ok']
    row = _rows(report)[victim]
    size = report['image']['size']
    meta = torrent.build(report['image']['path'])
    # The conductor ran the step again on the new agent, once, and it
    # found what the first agent had written.
    assert row['agent_restarts'] == 1, row
    assert row['resumed'] > 0.2 * (size - meta.zero_bytes), row
    assert 'restarted while writing the image: starting' in \
        _ironic_log(cloud)
    # Alone with the seeder, everything the node got came from it: the
    # seeder sent the image once, plus at most 10 % again.
    uploaded = [int(m) for m in re.findall(
        r'after node %s, the last to need it, released it; the seeder '
        r'uploaded (\d+) bytes' % row['uuid'], _ironic_log(cloud))][-1]
    again = uploaded - (size - meta.zero_bytes)
    print(json.dumps({'agent_restart': {
        'resumed': row['resumed'], 'downloaded': row['downloaded'],
        'seeder_uploaded': uploaded,
        'downloaded_again_fraction': round(again / float(size), 4)}}))
    assert again <= 0.1 * size


# Run in a child: the lab manager patches IPA at import, which must not
# leak into the test process.
_NO_HOST_ACTIONS = textwrap.dedent('''
    from unittest import mock

    from ironic_python_agent import config  # noqa: registers the options
    from ironic_python_agent import errors
    from ironic_python_agent.extensions import image
    from ironic_python_agent.extensions import standby
    from ironic_python_agent import hardware
    from ironic_python_agent import utils

    import tests.lab.ipa_test_hw  # noqa: the import patches IPA

    with mock.patch.object(utils, 'execute', autospec=True) as execute:
        ext = standby.StandbyExtension()
        ext._run_shutdown_command('poweroff')
        ext._run_shutdown_command('reboot')
        ext._sync_clock()
        hardware.GenericHardwareManager().initialize()
        utils.copy_config_from_vmedia()
        assert not execute.called, execute.call_args_list
        result = image.ImageExtension().install_bootloader(root_uuid='x')
        result.join()
        assert isinstance(result.command_error, errors.RESTError), result
        assert not execute.called, execute.call_args_list
    print('safe')
''')


def test_lab_agent_never_acts_on_the_host():
    """The test hardware manager keeps IPA from powering off the host."""
    proc = subprocess.run([sys.executable, '-c', _NO_HOST_ACTIONS],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith('safe'), proc.stdout


def _data_range(image_path, pieces=4):
    """``pieces`` whole pieces of the image's data, halfway through it.

    Never a zero piece: the agent zeroes those locally before it
    downloads, and the failure must hit the download.
    """
    meta = torrent.build(image_path)
    data = set(range(meta.num_pieces)) - set(meta.zero_pieces)
    starts = [i for i in sorted(data)
              if all(j in data for j in range(i, i + pieces))]
    first = starts[len(starts) // 2]
    return first * meta.piece_length, pieces * meta.piece_length


def _log_sizes(cloud):
    paths = [p for n in cloud.node_names()
             for p in (cloud.nodes[n]['log'],
                       cloud.path('logs', 'ipa-%s.out' % n))]
    return {p: os.path.getsize(p) if os.path.exists(p) else 0
            for p in paths}


def _logged_since(sizes):
    """What each log got after ``sizes`` were taken."""
    text = {}
    for path, size in sizes.items():
        with open(path, errors='replace') as f:
            f.seek(size)
            text[path] = f.read()
    return text


def test_failing_disk_fails_the_deploy_in_seconds(shaped, fault_image):
    cloud = shaped
    victim, healthy = SOLO[0], SWARM[0]
    bad = _data_range(fault_image)
    sizes = _log_sizes(cloud)
    with cloud.faulty_disk(victim, fail_writes=bad) as disk:
        device = disk.device
        report = cloud.deploy(interface='bittorrent', image=fault_image,
                              names=[healthy, victim],
                              timeout=DEPLOY_TIMEOUT)
        first = disk.first_failed_write
        failed_at = cloud_report.parse_time(cloud.node_json(
            cloud.nodes[victim]['uuid']).get('provision_updated_at'))
    rows = _rows(report)
    failed = rows[victim]
    error = failed['last_error'] or ''
    seconds = failed_at - first['time'] if first else None
    print(json.dumps({'failing_disk': {
        'device': device, 'bad_range': bad, 'first_failed_write': first,
        'seconds_to_deploy_failed':
            None if seconds is None else round(seconds, 2),
        'last_error': error}}))

    assert first is not None, 'no write ever reached the bad range'
    assert failed['state'] == 'deploy failed', failed
    # The operator learns which disk failed, how, and what to check; not
    # to look at the network.
    assert device in error, error
    assert 'EIO' in error, error
    assert 'kernel log' in error, error
    assert 'network is not at fault' in error, error
    assert 'reachable' not in error, error
    assert seconds < 15, seconds
    # The other node did not suffer for it, and no peer was taken for a
    # sender of bad data.
    _assert_active_and_verified(report, [healthy])
    for path, text in _logged_since(sizes).items():
        assert 'Banned peer' not in text, path
        assert 'a peer sent bad data' not in text, path
    # The node has its own disk and agent back.
    assert cloud.nodes[victim]['device'] != device
    assert cloud.agent_alive(victim)
