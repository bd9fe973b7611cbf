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

"""The deploy ramdisk a site builds boots, and its agent has ironic-bt.

``tox -e vms`` (outside CI: the first build takes minutes and downloads
Debian). The ramdisk comes from :mod:`tests.lab.ramdisk` (built once per
set of inputs), and boots in a QEMU guest with a virtio disk and no
network, so the agent looks for ironic in vain; what matters here is that
ironic-python-agent starts under a real kernel and loads ironic-bt's
hardware manager, which offers the write step.
"""

import json
import os
import subprocess

import pytest

from tests.lab import ramdisk as lab_ramdisk
from tests.lab import vms

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='diskimage-builder needs root')

#: Seconds until the agent runs: about 90 under software emulation here.
BOOT_TIMEOUT = 600
#: IPA ignores disks under 4 GiB when it picks the install device.
DISK_GIB = 5


@pytest.fixture(scope='module')
def ramdisk():
    missing = vms.available()
    if missing:
        pytest.skip(missing)
    built = lab_ramdisk.get()
    print('\n' + json.dumps({'ramdisk': dict(
        key=built.key, built_now=built.built_now,
        build_seconds=built.build_seconds, **built.sizes())}))
    return built


def test_agent_starts_with_the_bittorrent_hardware_manager(ramdisk,
                                                           tmp_path):
    disk = tmp_path / 'disk.raw'
    subprocess.run(['truncate', '-s', '%dG' % DISK_GIB, str(disk)],
                   check=True)
    console = str(tmp_path / 'console.log')
    # An address no one answers at: no traffic leaves the guest anyway.
    # With no NIC, waiting for the network would hold the agent back for
    # two minutes.
    append = ('ipa-api-url=http://198.18.0.1:6385 ipa-insecure=1 '
              'ipa-debug=1 systemd.journald.forward_to_console=1 '
              'systemd.mask=systemd-networkd-wait-online.service')
    with vms.Guest(ramdisk.kernel, ramdisk.initramfs, append, console,
                   disk=str(disk)) as guest:
        started = guest.wait_for(
            r'Started ironic-python-agent\.service', BOOT_TIMEOUT)
        loaded = guest.wait_for(
            r'Hardware manager found: '
            r'ipa_extension\.hardware_manager:BitTorrentHardwareManager',
            120)
        # The agent runs under the ramdisk's own kernel, with its disk.
        text = guest.text()
    assert 'vda' in text
    print(json.dumps({'boot': {'accelerator': guest.accel,
                               'agent_started_s': round(started, 1),
                               'manager_loaded_s': round(loaded, 1)}}))
