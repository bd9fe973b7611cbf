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

"""A test-only IPA hardware manager for the local bare-metal cloud.

The cloud harness (:mod:`tests.lab.cloud`) runs a real ironic-python-agent
per emulated node, as an ordinary process inside the node's network
namespace on a shared machine. Two things make that unsafe or impossible
with IPA's stock managers:

* the machine has no udevadm, lshw or dmidecode, and the host's real disks
  and interfaces must never be offered to the agent;
* IPA believes it owns the machine: it powers it off, reboots it through
  sysrq, sets the hardware clock, loads kernel modules, assembles RAID
  arrays, writes UEFI boot entries.

:class:`LabHardwareManager` answers every hardware question from the node's
JSON description (the path is in the ``IRONIC_BT_LAB_NODE`` environment
variable) and reports only the node's loop device, after checking that it
is a loop device backed by a file inside the cloud's state directory.
Importing this module also neutralises every IPA code path that would act
on the host (see :func:`_neutralise_host_actions`).

It is registered through a throw-away ``*.dist-info`` that the harness puts
on the agents' ``PYTHONPATH`` only (see
:func:`tests.lab.cloud_conf.write_agent_site`); it never ships in
ironic-bt's ``setup.cfg``. The harness starts each agent through
:func:`main`, IPA's own entry point run after this module is imported, so
that the patches are in place before the agent does anything.
"""

import inspect
import json
import os
import platform

from oslo_log import log

from ironic_python_agent import agent
from ironic_python_agent import errors
from ironic_python_agent.extensions import base as ext_base
from ironic_python_agent.extensions import image
from ironic_python_agent.extensions import rescue
from ironic_python_agent.extensions import standby
from ironic_python_agent import hardware
from ironic_python_agent import tls_utils
from ironic_python_agent import utils

from tests.lab import disks

LOG = log.getLogger(__name__)

NODE_ENV = 'IRONIC_BT_LAB_NODE'
"""Environment variable holding the path of the node's JSON description."""

WIPE_BYTES = 1024 * 1024

# Deploy and clean steps of IPA's generic manager that would act on the
# host (its NVRAM, RAID arrays, pstore, every disk it can list) or only
# burn CPU. Dispatch reaches this manager first, so defining them here and
# refusing is enough to keep the generic implementations from running.
_REFUSED_STEPS = (
    'apply_configuration', 'burnin_cpu', 'burnin_disk', 'burnin_gpu',
    'burnin_memory', 'burnin_network', 'clean_uefi_nvram',
    'create_configuration', 'delete_configuration', 'erase_pstore',
    'execute_bootc_install', 'inject_files',
)


class LabSafetyError(errors.RESTError):
    """The agent was about to touch something the lab did not create."""

    message = 'Refused by the ironic-bt lab'

    def __init__(self, details):
        super().__init__(details)


def load_node(path=None):
    """Read the node's description written by the harness.

    :param path: path of the JSON file; defaults to ``$IRONIC_BT_LAB_NODE``.
    :raises: LabSafetyError if it is not set.
    :returns: a dict with ``name``, ``interface``, ``mac``, ``ip``,
        ``device``, ``state_dir`` and ``run_dir``.
    """
    path = path or os.environ.get(NODE_ENV)
    if not path:
        raise LabSafetyError('%s is not set: this hardware manager only '
                             'runs under the ironic-bt lab' % NODE_ENV)
    with open(path) as f:
        return json.load(f)


def check_lab_device(device, state_dir):
    """Make sure ``device`` is a loop device the lab created.

    :param device: a block device path, such as ``/dev/loop3``.
    :param state_dir: the cloud's (and its lab's) state directory.
    :raises: LabSafetyError unless ``device`` is a loop device whose backing
        file lies inside ``state_dir``.
    :returns: the size of the device in bytes.
    """
    try:
        disks.assert_lab_loop(device, state_dir)
    except AssertionError as e:
        raise LabSafetyError(str(e))
    return disks.block_size(device)


class LabHardwareManager(hardware.HardwareManager):
    """Hardware as the lab describes it: one NIC and one loop disk."""

    HARDWARE_MANAGER_NAME = 'ironic_bt_lab'
    HARDWARE_MANAGER_VERSION = '1.0'

    def __init__(self):
        self.node = load_node()

    def evaluate_hardware_support(self):
        # Above SERVICE_PROVIDER so that even a product manager at that
        # level never gets to answer a hardware question first.
        return hardware.HardwareSupport.SERVICE_PROVIDER + 1

    def initialize(self):
        # The agent built its extensions (and their command maps) before
        # it loaded any hardware manager, so the commands patched at import
        # are still mapped to the originals: map them again.
        for name in ('image', 'rescue', 'standby'):
            ext = ext_base.get_extension(name)
            ext.command_map = {v.command_name: v
                               for _, v in inspect.getmembers(ext)
                               if hasattr(v, 'command_name')}
        self._device()
        LOG.info('Lab hardware: interface %(ifc)s (%(mac)s, %(ip)s), '
                 'disk %(dev)s', {'ifc': self.node['interface'],
                                  'mac': self.node['mac'],
                                  'ip': self.node['ip'],
                                  'dev': self.node['device']})

    def _device(self):
        size = check_lab_device(self.node['device'], self.node['state_dir'])
        return self.node['device'], size

    def list_network_interfaces(self):
        return [hardware.NetworkInterface(
            self.node['interface'], self.node['mac'],
            ipv4_address=self.node['ip'], has_carrier=True)]

    def get_ipv4_addr(self, interface_id):
        return self.node['ip']

    def get_cpus(self):
        return hardware.CPU(model_name='ironic-bt lab vCPU',
                            frequency='2000', count=1,
                            architecture=platform.machine(), flags=[],
                            socket_count=1)

    def get_memory(self):
        return hardware.Memory(total=2 * 1024 ** 3, physical_mb=2048)

    def list_block_devices(self, include_partitions=False):
        device, size = self._device()
        return [hardware.BlockDevice(name=device, model='ironic-bt lab loop',
                                     size=size, rotational=False,
                                     serial=self.node['name'],
                                     vendor='ironic-bt',
                                     logical_sectors=512,
                                     physical_sectors=512)]

    def list_block_devices_check_skip_list(self, node,
                                           include_partitions=False):
        return self.list_block_devices(include_partitions)

    def get_skip_list_from_node_for_disks(self, node, block_devices=None):
        return set()

    def get_skip_list_from_node_for_raids(self, node):
        return set()

    def get_os_install_device(self, permit_refresh=False):
        return self._device()[0]

    def wait_for_disks(self):
        # The loop device exists before the agent starts.
        self._device()

    def get_bmc_address(self):
        return None

    def get_bmc_v6address(self):
        return None

    def get_bmc_mac(self):
        return None

    def get_boot_info(self):
        return hardware.BootInfo(current_boot_mode='uefi',
                                 pxe_interface=self.node['mac'])

    def get_system_vendor_info(self):
        return hardware.SystemVendorInfo(
            product_name='ironic-bt lab node',
            serial_number=self.node['name'], manufacturer='ironic-bt',
            firmware=hardware.SystemFirmware(vendor='ironic-bt',
                                             version='1.0', build_date=''))

    def get_usb_devices(self):
        return []

    def generate_tls_certificate(self, ip_address):
        # IPA's default writes /run/ironic-python-agent/agent.{crt,key},
        # which every agent on this machine would share and overwrite.
        run_dir = self.node['run_dir']
        os.makedirs(run_dir, exist_ok=True)
        cert = os.path.join(run_dir, 'agent.crt')
        key = os.path.join(run_dir, 'agent.key')
        text = tls_utils._generate_tls_certificate(
            cert, key, self.node['name'], ip_address)
        return tls_utils.TlsCertificate(text, cert, key)

    def full_sync(self):
        fd = os.open(self._device()[0], os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def collect_system_logs(self, io_dict, file_list):
        # The generic manager would collect the host's journal, dmesg and
        # network setup; the agent's own log file is all the lab needs.
        log_file = self.node.get('log_file')
        if log_file:
            file_list.append(log_file)

    def _wipe(self):
        """Zero the head and tail of the lab disk, nothing else."""
        device, size = self._device()
        fd = os.open(device, os.O_WRONLY)
        try:
            for offset in (0, max(0, size - WIPE_BYTES)):
                os.pwrite(fd, b'\0' * WIPE_BYTES, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        LOG.info('Lab: wiped the partition tables of %s', device)
        return {device: 'wiped by the ironic-bt lab'}

    def erase_devices(self, node, ports):
        return self._wipe()

    def erase_devices_metadata(self, node, ports):
        self._wipe()

    def erase_devices_express(self, node, ports):
        self._wipe()

    def erase_block_device(self, node, block_device):
        if block_device.name != self._device()[0]:
            raise LabSafetyError('refusing to erase %s' % block_device.name)
        self._wipe()


def _refuse_step(name):
    def refuse(self, *args, **kwargs):
        raise LabSafetyError('step %s would act on the host running the '
                             'lab; it is not available here' % name)
    refuse.__name__ = name
    return refuse


for _step in _REFUSED_STEPS:
    setattr(LabHardwareManager, _step, _refuse_step(_step))


def _refused_command(name, decorator):
    def refuse(self, **kwargs):
        raise LabSafetyError('command %s would act on the host running the '
                             'lab; it is not available here' % name)
    return decorator(name)(refuse)


def _neutralise_host_actions():
    """Patch out every IPA code path that acts on the host itself.

    The agents run as root on a shared machine. Without this, a deploy's
    final power off (or a stray reboot) would run ``poweroff`` or write to
    ``/proc/sysrq-trigger`` on the host. Nodes also set
    ``driver_info/deploy_forces_oob_reboot`` so the conductor never asks,
    but the lab must not rely on that alone.
    """
    def no_shutdown(self, command):
        # Also skips _sync_clock, which runs "hwclock --systohc".
        LOG.warning('Lab: not running "%s" on the host; the harness plays '
                    'the BMC', command)

    def no_clock(self, ignore_errors=False):
        LOG.info('Lab: not touching the host clock')

    def no_generic_init(self):
        # GenericHardwareManager.initialize loads kernel modules, starts
        # multipathd, runs "mdadm --assemble --scan" and iscsistart on the
        # host.
        LOG.info('Lab: skipping the generic manager\'s host initialisation')

    def no_lockdown(self):
        LOG.warning('Lab: not locking down the host\'s interfaces')

    def no_vmedia_config():
        # It would mount a host device that looks like virtual media and
        # copy its files into the host's /etc.
        LOG.info('Lab: not looking for configuration on virtual media')

    standby.StandbyExtension._run_shutdown_command = no_shutdown
    standby.StandbyExtension._sync_clock = no_clock
    hardware.GenericHardwareManager.initialize = no_generic_init
    agent.IronicPythonAgent._lockdown_system = no_lockdown
    utils.copy_config_from_vmedia = no_vmedia_config
    # install_bootloader writes UEFI boot entries with efibootmgr (the
    # host's NVRAM) and chroots into mounted partitions; finalize_rescue
    # writes into the host's /etc; bootc install runs containers.
    image.ImageExtension.install_bootloader = _refused_command(
        'install_bootloader', ext_base.async_command)
    rescue.RescueExtension.finalize_rescue = _refused_command(
        'finalize_rescue', ext_base.sync_command)
    standby.StandbyExtension.execute_bootc_install = _refused_command(
        'execute_bootc_install', ext_base.async_command)


_neutralise_host_actions()


def main():
    """Run the real agent with the lab's patches in place from the start.

    ``python -c 'import tests.lab.ipa_test_hw as m; m.main()' --config-file
    F`` is ``ironic-python-agent --config-file F``, except that nothing
    IPA does before it loads its hardware managers (looking for virtual
    media, for one) can act on the host either.
    """
    from ironic_python_agent.cmd import agent as agent_cmd
    agent_cmd.run()
