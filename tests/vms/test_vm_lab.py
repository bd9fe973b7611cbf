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

"""Virtual machines deployed over bittorrent boot the instance we wrote.

``tox -e vms`` (outside CI). Four QEMU guests are the nodes of the local
cloud (:mod:`tests.lab.cloud_vms`): three behind Redfish (sushy-tools),
one behind IPMI (virtualbmc). Ironic powers them on, they boot the deploy
ramdisk by PXE, the agents write the instance image over bittorrent, and
ironic boots them from their disks. The test sees each instance come up on
its serial console with the hostname from its config drive, then checks
every disk from the host, with the guests off. The same VMs are deployed
again with ``direct``, for the time against stock ironic; then a VM loses
power in the middle of its download.
"""

import json
import os

import pytest

from tests.lab import cloud as lab_cloud
from tests.lab import cloud_vms
from tests.lab import configdrive
from tests.lab import instance as lab_instance

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='the VM lab needs root')

VMS = 4
IPMI_VMS = 1


@pytest.fixture(scope='module')
def cloud(tmp_path_factory):
    missing = cloud_vms.available()
    if missing:
        pytest.skip(missing)
    image = lab_instance.get()
    state = tmp_path_factory.mktemp('vmlab')
    with lab_cloud.running(str(state), nodes=0, vms=VMS,
                           ipmi_vms=IPMI_VMS) as c:
        c.instance_image = image
        yield c


def _check_disks(cloud, names, image_path, hostnames, tmp_path):
    """Each disk: the image, then a config drive naming its host."""
    for name in names:
        vm = cloud.state['vm_nodes'][name]
        drive = configdrive.check_disk(vm['disk'], image_path)
        iso = configdrive.config_drive_file(vm['disk'], drive,
                                            str(tmp_path / ('%s.iso' % name)))
        meta = configdrive.read_json(iso, '/openstack/latest/meta_data.json')
        assert meta['hostname'] == hostnames[name], (name, meta)
        assert meta['uuid'] == vm['uuid'], (name, meta)


def _deploy(cloud, names, interface, hostnames, power_cut=None):
    image = cloud_vms.prepare_image(cloud, cloud.instance_image[0])
    return image, cloud_vms.deploy(
        cloud, lab_cloud.osc_env(cloud), names, interface, image, hostnames,
        power_cut=power_cut)


def test_vms_boot_the_instance_written_over_bittorrent(cloud, tmp_path):
    names = sorted(cloud.state['vm_nodes'])
    bmcs = {n: cloud.state['vm_nodes'][n]['bmc'] for n in names}
    assert sorted(bmcs.values()) == ['ipmi'] + ['redfish'] * (VMS - 1)
    figures = {}
    for interface in ('bittorrent', 'direct'):
        hostnames = {n: '%s-%s' % (interface[:2], n) for n in names}
        image, result = _deploy(cloud, names, interface, hostnames)
        for name, r in result.items():
            assert r['state'] == 'active', (name, r)
            assert r['booted_s'] is not None, (name, r)
        figures[interface] = {
            'last_active_s': round(max(r['active_s']
                                       for r in result.values()), 1),
            'last_booted_s': round(max(r['booted_s']
                                       for r in result.values()), 1)}
        cloud_vms.power_off_all(cloud, names)
        _check_disks(cloud, names, image[0].path, hostnames, tmp_path)
        cloud_vms.undeploy(cloud, names)
    figures['bittorrent_over_direct'] = round(
        figures['bittorrent']['last_booted_s']
        / figures['direct']['last_booted_s'], 2)
    print('\n' + json.dumps({'vm_lab': dict(
        figures, vms=VMS, ipmi_vms=IPMI_VMS,
        accelerator=cloud.state['vms']['accel'],
        image_bytes=image[0].size)}))


def test_vm_losing_power_mid_download_fails_alone(cloud):
    names = sorted(cloud.state['vm_nodes'])[:3]
    victim = names[0]
    hostnames = {n: 'cut-%s' % n for n in names}
    _image, result = _deploy(cloud, names, 'bittorrent', hostnames,
                             power_cut=(victim, 5))
    assert result[victim]['state'] == 'deploy failed', result[victim]
    error = result[victim]['last_error']
    assert 'callback' in error or 'agent' in error, error
    for name in names[1:]:
        assert result[name]['state'] == 'active', (name, result[name])
        assert result[name]['booted_s'] is not None, (name, result[name])
