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

"""Nova boots bare-metal servers over BitTorrent (tox -e nova).

Three ``server create`` calls at once, with the lab's bare-metal flavor and
a whole-disk image from Glance: Nova schedules each to a node, ironic's
bittorrent deploy interface publishes the Glance image, the agents write
it from one swarm, then the config drive Nova built. Each disk must hold
the image byte for byte (the config drive partition and the GPT entries
it added aside), the config drive the server's metadata, and no log a
byte of the config drive's secrets.
"""

import json
import struct
import subprocess

import requests

from tests.lab import cloud_conductors
from tests.lab import cloud_neutron
from tests.lab import cloud_nova
from tests.lab import disks
from tests.lab import images
from tests.lab import procs

from ironic_bt import torrent

SERVERS = 3
IMAGE_MIB = 64
PAYLOAD_MIB = 32
#: The issue's bound on what the conductor uploads, in image copies.
MAX_SEEDER_COPIES = 1.3
BOOT_TIMEOUT = 600
SECTOR = 512


def _gpt_entries(read):
    """The used GPT partition entries: [(first LBA, last LBA, raw entry)].

    :param read: ``read(offset, length)`` of the disk or image.
    """
    header = read(SECTOR, 92)
    assert header[:8] == b'EFI PART', header[:8]
    start, count, size = struct.unpack_from('<QII', header, 72)
    table = read(start * SECTOR, count * size)
    entries = []
    for i in range(count):
        raw = table[i * size:(i + 1) * size]
        if raw[:16] != bytes(16):
            first, last = struct.unpack_from('<QQ', raw, 32)
            entries.append((first, last, raw))
    return entries


def _reader(path):
    def read(offset, length):
        with open(path, 'rb') as f:
            f.seek(offset)
            return f.read(length)
    return read


def _config_drive_file(device, entry, out):
    first, last, _raw = entry
    with open(device, 'rb') as src, open(out, 'wb') as dst:
        src.seek(first * SECTOR)
        dst.write(src.read((last - first + 1) * SECTOR))
    return out


def _iso_file(iso, path):
    return subprocess.run(['isoinfo', '-R', '-i', iso, '-x', path],
                          capture_output=True, check=True).stdout


def test_three_servers_over_bittorrent(cloud, tmp_path):
    conn = cloud_nova.connect(cloud)
    image_path = str(tmp_path / 'image.img')
    images.make_disk_image(image_path, size_mib=IMAGE_MIB,
                           payload_mib=PAYLOAD_MIB, seed=23)
    meta = torrent.build(image_path)
    image = conn.image.create_image(
        name='bt-whole-disk', filename=image_path, disk_format='raw',
        container_format='bare', visibility='public', wait=True)
    image = conn.image.get_image(image.id)
    assert (image.hash_algo, image.hash_value) == (
        'sha256', disks.sha256_region(image_path, meta.size))

    flavor = conn.compute.find_flavor(cloud_nova.FLAVOR)
    network = conn.network.find_network(cloud_neutron.NETWORK)
    servers = [conn.compute.create_server(
        name='bt-%d' % i, flavor_id=flavor.id, image_id=image.id,
        networks=[{'uuid': network.id}]) for i in range(SERVERS)]
    servers = [conn.compute.wait_for_server(s, wait=BOOT_TIMEOUT)
               for s in servers]
    assert [s.status for s in servers] == ['ACTIVE'] * SERVERS

    bm = cloud.conn.baremetal
    nodes = {n.instance_id: n for n in bm.nodes(details=True)
             if n.instance_id}
    assert sorted(nodes) == sorted(s.id for s in servers)
    name_of = {node['uuid']: name for name, node in cloud.nodes.items()}
    image_entries = _gpt_entries(_reader(image_path))
    with open(image_path, 'rb') as f:
        image_bytes = f.read()

    secrets = []
    for server in servers:
        node = nodes[server.id]
        assert node.deploy_interface == 'bittorrent'
        assert node.provision_state == 'active'
        device = disks.assert_lab_loop(
            cloud.nodes[name_of[node.id]]['device'], cloud.state_dir)
        disk_entries = _gpt_entries(_reader(device))
        # The image's partitions are untouched; the agent added one, the
        # config drive, behind them.
        assert [e[2] for e in disk_entries[:-1]] == [
            e[2] for e in image_entries]
        drive = disk_entries[-1]
        assert drive[0] > max(e[1] for e in image_entries)
        # Byte for byte up to the config drive, but for what adding a
        # partition changes: the protective MBR's record (it now spans
        # the whole disk), the primary GPT header and entries (LBA 1-33).
        end = min(drive[0] * SECTOR, meta.size)
        read = _reader(device)
        assert read(0, 446) == image_bytes[:446]
        assert read(446 + 16, SECTOR - 446 - 16) == \
            image_bytes[446 + 16:SECTOR]
        assert read(34 * SECTOR, end - 34 * SECTOR) == \
            image_bytes[34 * SECTOR:end], server.name

        iso = _config_drive_file(device, drive,
                                 str(tmp_path / ('%s.iso' % server.name)))
        metadata = json.loads(_iso_file(iso, '/openstack/latest/'
                                             'meta_data.json'))
        assert metadata['uuid'] == server.id
        assert metadata['hostname'].split('.')[0] == server.name
        secrets.append(metadata['admin_pass'])
        network_data = json.loads(_iso_file(
            iso, '/openstack/latest/network_data.json'))
        assert [n['ip_address'] for n in network_data['networks']] == [
            a['addr'] for a in server.addresses[cloud_neutron.NETWORK]]

    # The conductor published the Glance image as the same torrent as the
    # same bytes from anywhere else, and let it go after the last node.
    uploaded = procs.wait_for(
        lambda: cloud_conductors.seeder_uploaded(
            cloud.path('logs', 'ironic.log'), meta.info_hash),
        60, 1, 'the conductor to unpublish torrent %s' % meta.info_hash)
    copies = uploaded / float(meta.size - meta.zero_bytes)
    print(json.dumps({'nova_servers': {
        'servers': SERVERS, 'payload_bytes': meta.size - meta.zero_bytes,
        'seeder_uploaded': uploaded, 'seeder_copies': round(copies, 3)}}))
    assert copies <= MAX_SEEDER_COPIES, copies

    # The config drive (its admin password) is in no log of ironic or of
    # an agent: it travelled sealed.
    logs = [cloud.path('logs', 'ironic.log')] + [
        node['log'] for node in cloud.nodes.values()]
    for path in logs:
        with open(path, errors='replace') as f:
            text = f.read()
        for secret in secrets:
            assert secret not in text, path

    # Deleting a server tears its node down; nothing of the image is
    # published any more.
    gone = servers[0]
    node = nodes[gone.id]
    conn.compute.delete_server(gone)
    conn.compute.wait_for_delete(gone, wait=BOOT_TIMEOUT)
    bm.wait_for_nodes_provision_state([node.id], 'available', timeout=300)
    node = bm.get_node(node.id)
    assert node.instance_id is None
    assert 'bittorrent_info_hash' not in node.driver_internal_info
    status = requests.get(cloud.state['tracker_status_url'],
                          timeout=10).json()
    assert meta.info_hash not in json.dumps(status), status
