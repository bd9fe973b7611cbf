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

"""Real swarms: a seeder with its built-in tracker and writers, each in its
own network namespace, writing to loop devices through ``ironic-bt``.
"""

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from ironic_bt.cmd import cli
from ironic_bt.common import torrent
from tests import bencode
from tests.lab import disks
from tests.lab import images
from tests.lab import swarm as lab_swarm

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='network namespaces and loop devices '
                                       'need root')

MiB = 1024 * 1024


@pytest.fixture(scope='module')
def swarm(tmp_path_factory):
    state = tmp_path_factory.mktemp('swarm')
    with lab_swarm.Swarm(str(state), nodes=3, disk_size=40 * MiB,
                         rate_mbit=400) as s:
        yield s


def _cli(host, *args, timeout=120):
    return host.run(lab_swarm.CLI + list(args), capture_output=True,
                    text=True, timeout=timeout)


def test_three_writers_get_identical_disks(swarm):
    image = images.make_random_image(
        os.path.join(swarm.state_dir, 'random.raw'), 24 * MiB, seed=7)

    result = lab_swarm.run_bittorrent(swarm, image, linger=5)

    assert [n.name for n in result.nodes] == ['n1', 'n2', 'n3']
    for node in result.nodes:
        assert node.ok, node.error
        assert node.sha256 == image.sha256
        assert disks.sha256_region(swarm.devices[node.name],
                                   image.size) == image.sha256
    # Each node received the image once; the seeder did not have to send
    # it to every node, and peers traded pieces among themselves.
    assert all(n.downloaded_bytes >= image.size for n in result.nodes)
    assert sum(n.uploaded_bytes for n in result.nodes) > 0
    # The piece plan's promise: each piece leaves the seeder about once
    # (every byte at least once: no node had any of it).
    assert image.size <= result.seeder_uploaded_bytes <= 1.3 * image.size, (
        'the seeder sent %.2f copies' % (
            result.seeder_uploaded_bytes / image.size))


def test_sparse_image_zero_pieces_never_cross_the_wire(swarm):
    image = images.make_sparse_image(
        os.path.join(swarm.state_dir, 'sparse.raw'), 32 * MiB,
        nonzero_fraction=0.1, seed=3, extents=4)
    nonzero = images.nonzero_bytes(image.path)
    # Dirty every disk first: zero pieces must be zeroed, not assumed.
    for dev in swarm.devices.values():
        with open(dev, 'r+b') as f:
            f.write(b'\xa5' * (33 * MiB))

    result = lab_swarm.run_bittorrent(swarm, image, linger=2)

    piece = torrent.piece_size_for(image.size)
    for node in result.nodes:
        assert node.ok, node.error
        # The sparse target of the performance issue: at most 1.1 x the
        # non-zero bytes (end-game mode may fetch a block twice) plus the
        # pieces that an extent only partly covers, two per extent.
        assert node.downloaded_bytes <= 1.1 * nonzero + 2 * 4 * piece, node
        assert node.downloaded_bytes >= nonzero // 2


def test_image_larger_than_device_fails_and_writes_nothing(swarm, tmp_path):
    host = swarm.hosts[0]
    small = disks.create_loop(
        swarm.lab, os.path.join(swarm.state_dir, 'small.disk'), 4 * MiB)
    disks.assert_lab_loop(small, swarm.lab)
    with open(small, 'r+b') as f:
        f.write(b'\x5a' * (4 * MiB))
    image = images.make_random_image(
        os.path.join(swarm.state_dir, 'big.raw'), 6 * MiB, seed=9)
    torrent = os.path.join(swarm.state_dir, 'big.torrent')
    _cli(host, 'create', image.path, '-o', torrent).check_returncode()

    proc = _cli(host, 'write', torrent, small, '--peer', '198.18.0.9:1')

    assert proc.returncode == 1
    assert small in proc.stderr
    assert 'holds only 4194304 bytes' in proc.stderr
    assert disks.sha256_region(small, 4 * MiB) == hashlib.sha256(
        b'\x5a' * (4 * MiB)).hexdigest()


def test_corrupt_torrent_is_refused_and_writes_nothing(swarm):
    host = swarm.hosts[0]
    dev = swarm.devices[host.name]
    bad = os.path.join(swarm.state_dir, 'corrupt.torrent')
    with open(bad, 'wb') as f:
        f.write(b'd8:announce5:http:4:info')
    before = disks.sha256_region(dev, MiB)

    proc = _cli(host, 'write', bad, dev, '--peer', '198.18.0.9:1')

    assert proc.returncode == 1
    assert 'corrupt.torrent is not a valid .torrent file' in proc.stderr
    assert disks.sha256_region(dev, MiB) == before


def _get(host, url):
    code = ('import sys, urllib.request; '
            'sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], '
            'timeout=10).read())')
    out = host.run(['python3', '-c', code, url], capture_output=True,
                   timeout=30, check=True)
    return out.stdout


def test_tracker_refuses_bad_announces(swarm):
    image = images.make_random_image(
        os.path.join(swarm.state_dir, 'tiny.raw'), MiB, seed=1)
    torrent = os.path.join(swarm.state_dir, 'tiny.torrent')
    host = swarm.hosts[0]
    _cli(host, 'create', image.path, '-o', torrent).check_returncode()
    seeder = swarm.start_seeder(torrent, image.path)
    try:
        base = swarm.tracker_url
        malformed = bencode.decode(_get(host, base + '?info_hash=abc'))
        unknown = bencode.decode(_get(
            host, base + '?info_hash=' + '%11' * 20 + '&peer_id='
            + 'A' * 20 + '&port=6881&uploaded=0&downloaded=0&left=5'))
    finally:
        swarm.stop(seeder)
    assert b'info_hash' in malformed[b'failure reason']
    assert b'unknown info_hash ' + b'11' * 20 in unknown[b'failure reason']


def test_cli_help_for_every_subcommand():
    for sub in ('create', 'seed', 'certificate', 'tracker', 'write',
                'status'):
        out = subprocess.run(lab_swarm.CLI + [sub, '--help'],
                             capture_output=True, text=True, check=True)
        assert out.stdout.startswith('usage: ironic-bt ' + sub)


def test_status_shows_each_node(swarm):
    image = images.make_random_image(
        os.path.join(swarm.state_dir, 'status.raw'), 2 * MiB, seed=5)
    torrent = os.path.join(swarm.state_dir, 'status.torrent')
    host = swarm.hosts[0]
    _cli(host, 'create', image.path, '-o', torrent).check_returncode()
    seeder = swarm.start_seeder(torrent, image.path)
    writer = swarm.start_writer(host, torrent, linger=30)
    # Operators ask from the tracker's own host.
    operator = swarm.seed_host
    status_url = cli._status_url(swarm.tracker_url)

    def complete():
        out = operator.run(['curl', '-s', '--max-time', '2', status_url],
                           capture_output=True, text=True).stdout
        try:
            swarms = json.loads(out)['swarms']
        except (ValueError, KeyError):
            return False
        return any(peer['node'] == 'n1' and peer['left'] == 0
                   for each in swarms for peer in each['peers'])

    try:
        # Alone with the seeder, the node stops seeding (and announces it)
        # half a second after it has the image: held still once the tracker
        # has it complete, so that the operator's view is not a race.
        lab_swarm.procs.wait_for(complete, timeout=60, interval=0.02,
                                 what='n1 complete in tracker status',
                                 proc=writer)
        os.killpg(writer.pid, signal.SIGSTOP)
        try:
            out = _cli(operator, 'status', '--tracker', swarm.tracker_url,
                       '--torrent', torrent).stdout
        finally:
            os.killpg(writer.pid, signal.SIGCONT)
        # A node on the provisioning network sees counts, not its
        # neighbours' addresses and progress.
        other = _cli(host, 'status', '--tracker', swarm.tracker_url,
                     '--torrent', torrent)
    finally:
        swarm.stop(writer)
        swarm.stop(seeder)
    assert 'n1' in out
    assert '100.0%' in out
    assert other.returncode == 0, other.stderr
    assert 'scrape counts only' in other.stdout
    assert 'n1' not in other.stdout and host.ip not in other.stdout


def _capture_count(pcap, expression):
    out = subprocess.run(['tcpdump', '-n', '-r', pcap, expression],
                         capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_nothing_leaves_the_provisioning_network(swarm):
    """A capture of a whole swarm run: not one packet to another network.

    Every host is given a default route to a sink (a namespace that
    forwards nothing), so that anything sent off the subnet -- a DNS query,
    a multicast announce, a STUN request -- would reach the wire and the
    capture, instead of being refused by the kernel for want of a route.
    """
    if not shutil.which('tcpdump'):
        pytest.skip('tcpdump is not installed (tools/install-deps.sh)')
    lab = swarm.lab
    sink = lab.add_host('sink')
    hosts = [swarm.seed_host] + swarm.hosts
    for host in hosts:
        host.run(['ip', 'route', 'replace', 'default', 'via', sink.ip],
                 check=True)
    pcap = os.path.join(swarm.state_dir, 'egress.pcap')
    capture = lab.popen(['tcpdump', '-i', lab.bridge, '-n', '-U', '-w',
                         pcap], swarm.log('tcpdump'))
    try:
        lab_swarm.procs.wait_for(lambda: os.path.exists(pcap), 10,
                                 what='tcpdump to start')
        # The control: one datagram off the subnet (to the benchmarking
        # range, which goes no further than the sink) must be seen.
        control = next(str(ip) for ip in ipaddress.ip_network(
            '198.18.0.0/15').hosts() if ip not in lab.subnet)
        swarm.hosts[0].run(
            [sys.executable, '-c', 'import socket; socket.socket(socket.'
             'AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("%s", 9))' % control],
            check=True)
        image = images.make_random_image(
            os.path.join(swarm.state_dir, 'egress.raw'), 8 * MiB, seed=21)
        result = lab_swarm.run_bittorrent(swarm, image, linger=2)
    finally:
        swarm.stop(capture)
        for host in hosts:
            host.run(['ip', 'route', 'del', 'default'], check=False)
    assert result.ok, lab_swarm.summary(result)
    subnet = str(lab.subnet)
    inside = _capture_count(pcap, 'ip and src net %s and dst net %s'
                            % (subnet, subnet))
    # The root namespace's own kernel (the bridge's address) reports its
    # multicast memberships; no process of this test runs there.
    outside = _capture_count(pcap, '(ip or ip6) and not (src net %s and '
                             'dst net %s) and not src host %s'
                             % (subnet, subnet, lab.gateway_ip))
    # The capture saw the swarm and the control (it would see egress) ...
    assert len(inside) > 100
    assert [line for line in outside if '> %s.9:' % control in line]
    outside = [line for line in outside if '> %s.9:' % control not in line]
    # ... and nothing else: no DNS, no multicast, no STUN, no IPv6.
    assert outside == []
