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

"""Swarms that lose machines: the seeder, a writer, a node's link, and a
peer that lies. Real ``ironic-bt`` processes in network namespaces on
25 Mbit/s links, writing to loop devices; every figure is printed, so
``pytest -s`` shows what the closing notes quote.
"""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from ironic_bt.common import torrent
from tests.lab import disks
from tests.lab import images
from tests.lab import procs
from tests.lab import swarm as lab_swarm

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='network namespaces and loop devices '
                                       'need root')

MiB = 1024 * 1024
RATE = 25
SIZE = 32 * MiB


def _report(name, **figures):
    print('\n%s: %s' % (name, json.dumps(figures, sort_keys=True)))


def _swarm(tmp_path_factory, nodes, prefix):
    state = tmp_path_factory.mktemp('faults%d' % nodes)
    with lab_swarm.Swarm(str(state), nodes=nodes, disk_size=SIZE + 8 * MiB,
                         rate_mbit=RATE, prefix=prefix) as s:
        yield s


@pytest.fixture(scope='module')
def swarm4(tmp_path_factory):
    yield from _swarm(tmp_path_factory, 4, 'ibf')


@pytest.fixture(scope='module')
def image4(swarm4):
    return images.make_random_image(
        os.path.join(swarm4.state_dir, 'image.raw'), SIZE, seed=11)


def _sleep_until(deadline):
    time.sleep(max(0.0, deadline - time.monotonic()))


def _pieces_on(dev, meta):
    """Indexes of the pieces whose bytes on ``dev`` match the torrent."""
    found = set()
    with open(dev, 'rb') as f:
        for index in range(meta.num_pieces):
            data = f.read(meta.piece_length)
            if hashlib.sha1(data[:meta.piece_size(index)]).digest() == \
                    meta.piece_hash(index):
                found.add(index)
    return found


def test_seeder_killed_halfway_web_seed_finishes_every_node(swarm4, image4):
    swarm4.dirty(SIZE)
    clean = lab_swarm.run_bittorrent(swarm4, image4, linger=5,
                                     web_seed=True)
    assert clean.ok, lab_swarm.summary(clean)
    # A healthy swarm never falls back: not one byte over HTTP.
    assert sum(clean.http_sent.values()) == 0, clean.http_sent
    assert all(n.web_seed_bytes == 0 for n in clean.nodes)

    meta = torrent.build(image4.path)
    held = set()

    def kill_seeder(swarm, seeder, writers, start):
        _sleep_until(start + clean.seconds / 2)
        seeder.kill()
        seeder.wait()
        # What the swarm holds now: the pieces on any node's disk (the
        # loop devices' page cache included).
        for dev in swarm.devices.values():
            held.update(_pieces_on(dev, meta))

    swarm4.dirty(SIZE)
    faulty = lab_swarm.run_bittorrent(swarm4, image4, linger=5,
                                      web_seed=True, fault=kill_seeder)

    assert faulty.ok, lab_swarm.summary(faulty)
    for node in faulty.nodes:
        assert disks.sha256_region(swarm4.devices[node.name],
                                   SIZE) == image4.sha256
    missing = SIZE - sum(meta.piece_size(i) for i in held)
    http = sum(faulty.http_sent.values())
    _report('seeder killed', clean_s=clean.seconds, faulty_s=faulty.seconds,
            ratio=round(faulty.seconds / clean.seconds, 2),
            missing_bytes=missing, http_bytes=http,
            http_over_missing=round(http / float(missing), 3),
            per_node_web=[n.web_seed_bytes for n in faulty.nodes])
    assert missing > SIZE // 4, 'the seeder died too late to test anything'
    # Each missing piece came over HTTP about once, then spread.
    assert http <= 1.2 * missing
    assert sum(n.web_seed_bytes for n in faulty.nodes) <= http
    assert faulty.seconds <= 2 * clean.seconds


def _torrent(swarm, name, image):
    """Make ``name``.torrent of ``image`` with the real command."""
    path = os.path.join(swarm.state_dir, name + '.torrent')
    swarm.seed_host.run(lab_swarm.CLI + ['create', image.path, '-o', path],
                        check=True, capture_output=True)
    return path


def _seeder_uploaded(swarm, seeder):
    swarm.stop(seeder)
    lines = lab_swarm.json_lines(swarm.log('seeder'))
    return lines[-1]['uploaded_bytes']


def test_writer_killed_and_restarted_fetches_only_the_rest(swarm4, image4):
    host = swarm4.hosts[0]
    swarm4.dirty(SIZE)
    torrent_path = _torrent(swarm4, 'restart', image4)
    seeder = swarm4.start_seeder(torrent_path, image4.path)
    try:
        first = swarm4.start_writer(host, torrent_path, linger=0)
        # Alone on a 25 Mbit/s link the image takes about 11 s: kill the
        # writer (as a crashing agent dies) about half-way.
        time.sleep(5.5)
        first.kill()
        first.wait()
        second = swarm4.start_writer(host, torrent_path, linger=0)
        assert second.wait(120) == 0, procs.tail_log(swarm4.log(host.name))
        result = lab_swarm.json_lines(swarm4.log(host.name))[-1]
    finally:
        uploaded = _seeder_uploaded(swarm4, seeder)

    assert disks.sha256_region(swarm4.devices[host.name],
                               SIZE) == image4.sha256
    assert result['sha256'] == image4.sha256
    again = uploaded - SIZE
    _report('writer restarted', resumed_bytes=result['resumed_bytes'],
            downloaded_bytes=result['downloaded_bytes'],
            seeder_uploaded=uploaded,
            downloaded_again_fraction=round(again / float(SIZE), 4))
    assert 0.2 * SIZE < result['resumed_bytes'] < 0.8 * SIZE
    # The seeder sent the image once, plus at most 10 % again.
    assert again <= 0.1 * SIZE


def test_corrupt_peer_is_banned_and_the_disk_is_exact(swarm4, image4):
    host = swarm4.hosts[1]
    swarm4.dirty(SIZE)
    meta = torrent.build(image4.path)
    torrent_path = os.path.join(swarm4.state_dir, 'corrupt.torrent')
    with open(torrent_path, 'wb') as f:
        f.write(meta.data)
    bad = swarm4.lab.add_host('bad', rate_mbit=RATE)
    stats = os.path.join(swarm4.state_dir, 'bad-peer.json')
    liar = bad.popen([sys.executable, '-m', 'tests.lab.badpeer',
                      '--bind', bad.ip, '--port', '6881',
                      '--info-hash', meta.info_hash,
                      '--pieces', str(meta.num_pieces), '--stats', stats],
                     swarm4.log('bad'))
    procs.wait_port(bad.ip, 6881, netns=bad.netns, proc=liar,
                    log_path=swarm4.log('bad'))
    seeder = swarm4.start_seeder(torrent_path, image4.path)
    try:
        proc = swarm4.start_writer(host, torrent_path, linger=0,
                                   extra=['--peer', '%s:6881' % bad.ip])
        assert proc.wait(120) == 0, procs.tail_log(swarm4.log(host.name))
    finally:
        swarm4.stop(seeder)
        swarm4.stop(liar)
    result = lab_swarm.json_lines(swarm4.log(host.name))[-1]
    with open(swarm4.log(host.name)) as f:
        log = f.read()
    with open(stats) as f:
        lied = json.load(f)['sent_bytes']

    assert disks.sha256_region(swarm4.devices[host.name],
                               SIZE) == image4.sha256
    assert lied > 0, 'the bad peer was never asked for anything'
    assert result['hash_failures'] >= 1
    assert 'Banned peer %s' % bad.ip in log
    assert 'a peer sent bad data' in log


def test_nothing_reachable_fails_naming_every_source(swarm4, image4):
    host = swarm4.hosts[2]
    swarm4.dirty(SIZE)
    torrent_path = _torrent(swarm4, 'alone', image4)
    # The seed host's address, with nothing running there.
    gone = swarm4.seed_host.ip
    start = time.monotonic()
    proc = host.run(
        lab_swarm.CLI + [
            'write', torrent_path, swarm4.devices[host.name],
            '--tracker', 'http://%s:6969/announce' % gone,
            '--peer', '%s:6881' % gone,
            '--web-seed', 'http://%s:8080/image.raw?temp_url_sig=s3cr3t'
            % gone,
            '--listen', '%s:6881' % host.ip],
        capture_output=True, text=True, timeout=200)
    elapsed = time.monotonic() - start
    _report('nothing reachable', seconds=round(elapsed, 1))

    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert 'nothing to download from' in message
    assert 'tracker http://%s:6969/announce' % gone in message
    assert 'seeder %s:6881' % gone in message
    assert 'web seed http://%s:8080/...?...' % gone in message
    assert 'Connection refused' in message
    # The signature of a temporary URL is a secret, and so is the path of
    # the conductor's web seed in SSL swarms: never printed.
    assert 's3cr3t' not in proc.stderr
    assert 'image.raw' not in proc.stderr
    # The documented default (60 s), plus start-up.
    assert 60 <= elapsed < 75


@pytest.fixture(scope='module')
def swarm8(tmp_path_factory):
    yield from _swarm(tmp_path_factory, 8, 'ibg')


def test_node_cut_off_halfway_does_not_hold_up_the_others(swarm8):
    image = images.make_random_image(
        os.path.join(swarm8.state_dir, 'image.raw'), SIZE, seed=12)
    swarm8.dirty(SIZE)
    clean = lab_swarm.run_bittorrent(swarm8, image, linger=5)
    assert clean.ok, lab_swarm.summary(clean)
    victim = swarm8.hosts[-1]

    def cut_off(swarm, seeder, writers, start):
        _sleep_until(start + clean.seconds / 2)
        # As a node that loses power: its link goes, nobody is told.
        subprocess.run(['ip', 'link', 'set', victim.veth_root, 'down'],
                       check=True)
        writers[victim.name].kill()
        writers[victim.name].wait()

    swarm8.dirty(SIZE)
    faulty = lab_swarm.run_bittorrent(swarm8, image, linger=5,
                                      fault=cut_off)

    others = [n for n in faulty.nodes if n.name != victim.name]
    for node in others:
        assert node.ok, lab_swarm.summary(faulty)
        assert disks.sha256_region(swarm8.devices[node.name],
                                   SIZE) == image.sha256
    slowest = max(n.seconds for n in others)
    _report('node cut off', clean_s=clean.seconds, faulty_s=slowest,
            ratio=round(slowest / clean.seconds, 2))
    assert slowest <= 1.2 * clean.seconds
