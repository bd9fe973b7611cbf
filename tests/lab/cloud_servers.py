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

"""Servers through Nova in the local cloud (``up --nova``).

What an operator does: upload a whole-disk image to Glance, create servers
of the bare-metal flavor on the lab's network, all at once, and wait until
they are ACTIVE. :func:`check` then reads each server's disk as the node
left it. The e2e test (``tests/nova``) and ``tools/cloud demo --nova`` use
both.
"""

import os
import time

from tests.lab import cloud_neutron
from tests.lab import cloud_nova
from tests.lab import configdrive
from tests.lab import disks
from tests.lab import images

BOOT_TIMEOUT = 600


def upload_image(cloud, path, name):
    """Upload a raw whole-disk image to Glance; return the image."""
    conn = cloud_nova.connect(cloud)
    image = conn.image.create_image(
        name=name, filename=path, disk_format='raw',
        container_format='bare', visibility='public', wait=True)
    return conn.image.get_image(image.id)


def boot(cloud, image, count, prefix='bt', timeout=BOOT_TIMEOUT):
    """Create ``count`` servers at once; wait for them.

    :returns: (servers, seconds from the first create to the last one
        ACTIVE). A server that ends in ERROR raises.
    """
    conn = cloud_nova.connect(cloud)
    flavor = conn.compute.find_flavor(cloud_nova.FLAVOR,
                                      ignore_missing=False)
    network = conn.network.find_network(cloud_neutron.NETWORK,
                                        ignore_missing=False)
    started = time.monotonic()
    servers = [conn.compute.create_server(
        name='%s-%d' % (prefix, i), flavor_id=flavor.id, image_id=image.id,
        networks=[{'uuid': network.id}]) for i in range(count)]
    servers = [conn.compute.wait_for_server(s, wait=timeout)
               for s in servers]
    return servers, time.monotonic() - started


def nodes_of(cloud, servers):
    """{server ID: (lab node name, ironic node)} of the servers."""
    name_of = {node['uuid']: name for name, node in cloud.nodes.items()}
    ids = {s.id for s in servers}
    return {n.instance_id: (name_of[n.id], n)
            for n in cloud.conn.baremetal.nodes(details=True)
            if n.instance_id in ids}


def check(cloud, server, node_name, image_path, work_dir):
    """Check a server's disk: the image, then its config drive.

    :returns: the config drive's ``meta_data.json`` and
        ``network_data.json`` as {'meta': ..., 'network': ...}.
    :raises: configdrive.DiskMismatch naming the device.
    """
    device = disks.assert_lab_loop(cloud.nodes[node_name]['device'],
                                   cloud.state_dir)
    drive = configdrive.check_disk(device, image_path)
    iso = configdrive.config_drive_file(
        device, drive, os.path.join(work_dir, '%s.iso' % server.name))
    return {'meta': configdrive.read_json(
                iso, '/openstack/latest/meta_data.json'),
            'network': configdrive.read_json(
                iso, '/openstack/latest/network_data.json')}


def delete(cloud, servers, timeout=BOOT_TIMEOUT):
    """Delete servers and wait until Nova has forgotten them."""
    conn = cloud_nova.connect(cloud)
    for server in servers:
        conn.compute.delete_server(server)
    for server in servers:
        conn.compute.wait_for_delete(server, wait=timeout)


def demo(cloud, image_size_mib=64, timeout=BOOT_TIMEOUT, out=None):
    """One server per node through Nova, each disk checked; then deleted.

    :returns: True if every server went ACTIVE and its disk holds the
        image and a config drive with the server's metadata.
    """
    say = out or print
    os.makedirs(cloud.path('http', 'images'), exist_ok=True)
    path = cloud.path('http', 'images', 'nova-demo-%dm.img' % image_size_mib)
    if not os.path.exists(path):
        images.make_disk_image(path, size_mib=image_size_mib)
    image = upload_image(cloud, path, 'nova-demo')
    say('uploaded %s to Glance: image %s, sha256 %s'
        % (path, image.id, image.hash_value))
    servers, seconds = boot(cloud, image, len(cloud.nodes), prefix='demo',
                            timeout=timeout)
    ok = True
    try:
        nodes = nodes_of(cloud, servers)
        for server in servers:
            if server.id not in nodes:
                say('%s: %s, on no node' % (server.name, server.status))
                ok = False
                continue
            name, node = nodes[server.id]
            try:
                drive = check(cloud, server, name, path,
                              cloud.path('logs'))
            except (configdrive.DiskMismatch, OSError) as e:
                say('%s on %s: %s, disk NOT verified: %s'
                    % (server.name, name, server.status, e))
                ok = False
                continue
            good = drive['meta'].get('uuid') == server.id
            ok = ok and good and server.status == 'ACTIVE'
            say('%s on %s (%s interface): %s; disk holds the image, config '
                'drive for %s%s' % (
                    server.name, name, node.deploy_interface, server.status,
                    drive['meta'].get('hostname'),
                    '' if good else ' (NOT this server\'s)'))
        say('%d servers ACTIVE %.1f s after the first create'
            % (len(servers), seconds))
    finally:
        delete(cloud, servers, timeout=timeout)
        say('deleted the servers')
    return ok
