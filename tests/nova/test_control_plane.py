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

"""The local cloud with Keystone, Glance, Placement and Nova in front.

``tox -e nova``: real RabbitMQ, Keystone, Glance, Placement and Nova
(tests/lab/cloud_nova.py) beside the all-in-one ironic, which sits behind
Keystone. What an operator sees before booting a server: ironic refuses
requests without a token, Glance records an image's sha256, and Nova has
turned every node into a resource provider with one unit of its resource
class, which a bare-metal flavor asks for.
"""

import hashlib
import os
import subprocess

import requests

from tests.lab import cloud_nova
from tests.lab import images


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _descendants(pids):
    """The processes and all their children (RabbitMQ's Erlang VM)."""
    parents = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
    found = set(pids)
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found}
        grew = not children <= found
        found |= children
    return {str(pid) for pid in found}


def test_ironic_wants_a_token(cloud):
    url = cloud.state['api_url'] + '/v1/nodes'
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 401, reply.text
    # The cloud admin, scoped to the system, sees every node.
    names = sorted(n.name for n in cloud.conn.baremetal.nodes())
    assert names == sorted(cloud.nodes), names


def test_glance_records_the_image_sha256(cloud, tmp_path):
    image = str(tmp_path / 'image.img')
    images.make_disk_image(image, size_mib=32, payload_mib=4, seed=5)
    conn = cloud_nova.connect(cloud)
    created = conn.image.create_image(
        name='raw', filename=image, disk_format='raw',
        container_format='bare', visibility='public', wait=True)
    got = conn.image.get_image(created.id)
    assert got.status == 'active'
    assert got.hash_algo == 'sha256'
    assert got.hash_value == _sha256(image)


def test_nova_offers_every_node_to_a_baremetal_flavor(cloud):
    conn = cloud_nova.connect(cloud)
    rc = cloud_nova.resource_class_name()
    nodes = {n.id for n in cloud.conn.baremetal.nodes()}
    offered = {}
    for provider in conn.placement.resource_providers():
        for inventory in conn.placement.resource_provider_inventories(
                provider):
            if inventory.resource_class == rc:
                offered[provider.name] = inventory.total
    # The ironic driver names each provider after its node.
    assert offered == {uuid: 1 for uuid in nodes}, offered
    hypervisors = {h.name for h in conn.compute.hypervisors()}
    assert hypervisors == nodes


def test_nothing_listens_beyond_the_lab(cloud):
    """Every control plane port is on the bridge address or loopback

    (epmd adds the IPv6 loopback address to the one it is given).
    """
    pids = _descendants({record['pid']
                         for record in cloud.state['services'].values()})
    out = subprocess.run(['ss', '-Hltnup'], capture_output=True, text=True,
                         check=True).stdout
    allowed = (cloud.state['gateway_ip'], '127.0.0.1', '::1')
    ours = [line for line in out.splitlines()
            if any('pid=%s,' % pid in line for pid in pids)]
    assert ours, out
    for line in ours:
        local = line.split()[4]
        host = local.rsplit(':', 1)[0].strip('[]')
        assert host in allowed, line
