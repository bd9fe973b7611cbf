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
    image, seconds = lab_instance.get()
    print('\n' + json.dumps({'instance_image': {
        'path': image, 'bytes': os.path.getsize(image),
        'build_seconds': seconds}}))
    state = tmp_path_factory.mktemp('vmlab')
    with lab_cloud.running(str(state), nodes=0, vms=VMS,
                           ipmi_vms=IPMI_VMS) as c:
        c.instance_image = image
        yield c


def _run(cloud, names, interface, power_cut=None):
    report = cloud_vms.run(cloud, lab_cloud.osc_env(cloud), names,
                           interface, cloud.instance_image,
                           power_cut=power_cut)
    print(json.dumps({'vm_deploy': report}, sort_keys=True))
    return report


def test_vms_boot_the_instance_written_over_bittorrent(cloud):
    names = sorted(cloud.state['vm_nodes'])
    bmcs = {n: cloud.state['vm_nodes'][n]['bmc'] for n in names}
    assert sorted(bmcs.values()) == ['ipmi'] + ['redfish'] * (VMS - 1)
    reports = {}
    for interface in ('bittorrent', 'direct'):
        report = reports[interface] = _run(cloud, names, interface)
        for name, node in report['nodes'].items():
            assert node['state'] == 'active', (name, node)
            # The instance booted from the disk and read its config drive.
            assert node['booted_s'] is not None, (name, node)
            # Read from the host with the guest off.
            assert node['disk'] == cloud_vms.DISK_OK, (name, node)
        assert report['ok']
    print(json.dumps({'vm_lab': {
        'vms': VMS, 'ipmi_vms': IPMI_VMS,
        'accelerator': cloud.state['vms']['accel'],
        'image_bytes': reports['bittorrent']['image_bytes'],
        'bittorrent_last_booted_s': reports['bittorrent']['last_booted_s'],
        'direct_last_booted_s': reports['direct']['last_booted_s'],
        'bittorrent_over_direct': round(
            reports['bittorrent']['last_booted_s']
            / reports['direct']['last_booted_s'], 2)}}))


def test_vm_losing_power_mid_download_fails_alone(cloud):
    names = sorted(cloud.state['vm_nodes'])[:3]
    victim = names[0]
    report = _run(cloud, names, 'bittorrent', power_cut=(victim, 20))
    failed = report['nodes'][victim]
    assert failed['state'] == 'deploy failed', failed
    # Named for what happened, well before the callback timeout.
    assert 'lost power while writing the image over BitTorrent: its BMC ' \
        'reports the power off' in failed['last_error'], failed
    assert failed['failed_s'] < cloud_vms.CALLBACK_TIMEOUT, failed
    for name in names[1:]:
        node = report['nodes'][name]
        assert node['state'] == 'active', (name, node)
        assert node['disk'] == cloud_vms.DISK_OK, (name, node)
