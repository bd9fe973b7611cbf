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

"""Standard BitTorrent clients in a swarm of ironic-bt writers.

qBittorrent (libtorrent, v1+v2, fast extension) and rtorrent
(libtorrent-rakshasa: v1 only, no fast extension) from Debian download the
same torrent as two ``ironic-bt write`` nodes, from the same seeder and
built-in tracker, on shaped links.
"""

import functools
import json
import os

import pytest

from tests.lab import clients as lab_clients
from tests.lab import disks
from tests.lab import images
from tests.lab import swarm as lab_swarm

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0,
                       reason='network namespaces and loop devices need '
                              'root'),
    pytest.mark.skipif(not all(c.available()
                               for c in lab_clients.CLIENTS),
                       reason='qbittorrent-nox and rtorrent are installed '
                              'by tools/install-deps.sh'),
]

MiB = 1024 * 1024
RATE_MBIT = 100


@pytest.fixture(scope='module')
def swarm(tmp_path_factory):
    state = tmp_path_factory.mktemp('interop')
    with lab_swarm.Swarm(str(state), nodes=2, disk_size=40 * MiB,
                         rate_mbit=RATE_MBIT) as s:
        yield s


def _client(swarm, cls, torrent_path, tracker_url):
    host = swarm.lab.add_host(cls.name[:2], rate_mbit=RATE_MBIT)
    return cls(host, swarm.state_dir, torrent_path, tracker_url)


def test_standard_clients_and_writers_share_one_swarm(swarm):
    image = images.make_random_image(
        os.path.join(swarm.state_dir, 'interop.raw'), 24 * MiB, seed=11)
    made = [functools.partial(_client, swarm, cls)
            for cls in lab_clients.CLIENTS]

    result = lab_swarm.run_bittorrent(swarm, image, linger=20,
                                      timeout=120, clients=made)

    print(json.dumps(result.to_dict(), indent=1))
    for node in result.nodes:
        assert node.ok, node.error
        assert disks.sha256_region(swarm.devices[node.name],
                                   image.size) == image.sha256
    # Both clients have the image byte for byte: rtorrent, which speaks
    # only v1 and has no fast extension, too.
    assert result.clients == {'qbittorrent': '', 'rtorrent': ''}
    # The clients are no members of the piece plan, and the agents still
    # take about one copy from the seeder between them (0.87 in one run),
    # not one each.
    from_seeder = sum(n.from_seeder_bytes for n in result.nodes)
    assert from_seeder <= 1.2 * image.size, from_seeder / image.size


def test_client_without_fast_extension_gets_every_block(swarm):
    # The seeder sized for 16 nodes lets each agent queue 2 requests.
    # rtorrent ignores that (it has no BEP 6 reject to learn from), and
    # libtorrent drops what is over the limit: it used to wait forever.
    image = images.make_random_image(
        os.path.join(swarm.state_dir, 'alone.raw'), 16 * MiB, seed=12)
    torrent_path = os.path.join(swarm.state_dir, 'alone.torrent')
    swarm.seed_host.run(lab_swarm.CLI + ['create', image.path, '-o',
                                         torrent_path],
                        check=True, capture_output=True)
    seeder = swarm.start_seeder(torrent_path, image.path,
                                extra=['--nodes', '16'])
    host = swarm.lab.add_host('r2', rate_mbit=RATE_MBIT)
    client = lab_clients.Rtorrent(host, swarm.state_dir, torrent_path,
                                  swarm.tracker_url)
    try:
        client.start()
        problems = lab_clients.wait_complete([client], image, timeout=60)
    finally:
        client.stop()
        swarm.stop(seeder)
    assert problems == {'rtorrent': ''}
