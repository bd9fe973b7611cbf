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

"""Virtual machines as bare-metal nodes: ``tools/cloud up --vms N``.

Each node is a QEMU guest managed by libvirt, with a virtio disk (a sparse
raw file of the cloud) and a virtio NIC on a tap device of the lab bridge.
Ironic reaches its power and boot device through a BMC emulator, as it
reaches a physical machine's:

* ``bittorrent-redfish`` nodes through sushy-tools (Redfish);
* ``bittorrent-ipmi`` nodes through virtualbmc (IPMI over LAN).

Both boot the deploy ramdisk of :mod:`tests.lab.ramdisk` by PXE: the
guest's NIC option ROM is iPXE, the lab's dnsmasq hands it the address of
the node's port and, for iPXE, ironic's ``boot.ipxe`` on the lab's HTTP
server; a client that is not iPXE gets iPXE (``undionly.kpxe``) by TFTP
first. dnsmasq serves no DNS and gives no router: a guest reaches the lab
subnet only.

Everything stays inside the cloud's state directory and the lab:

* libvirtd runs in a mount namespace of its own, where the cloud's
  directories are bind-mounted over ``/etc/libvirt``, ``/run/libvirt``,
  ``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt``:
  it sees no domain or network of the host and leaves nothing there. Its
  socket is ``<state>/libvirt/run/libvirt-sock``;
* the tap devices, libvirtd, dnsmasq and the emulators are the lab's, and
  the guests' QEMU processes (which libvirtd detaches) are killed through
  the PID files libvirtd writes, so ``down`` removes it all;
* the emulators listen on the bridge address only, behind a user name and
  a password.

The emulators and the libvirt bindings run from a virtualenv of their own,
cached like the ramdisk's tools: they are the BMCs, not part of ironic.

Guests run under KVM where KVM boots a Linux guest, else under QEMU's
software emulation (see :func:`tests.lab.vms.accelerator`).
"""

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

from tests.lab import cloud_conf
from tests.lab import configdrive
from tests.lab import disks
from tests.lab import images
from tests.lab import procs
from tests.lab import ramdisk as lab_ramdisk
from tests.lab import vms

#: The BMC emulators and the libvirt bindings (9.0.0 is Debian 12's
#: libvirt, which the bindings are built against).
BMC_TOOLS = ('sushy-tools==2.2.0', 'virtualbmc==3.3.0',
             'libvirt-python==9.0.0')
#: Debian packages of the VM lab (tools/install-deps.sh --vms).
PACKAGES = ('libvirt-daemon-system', 'libvirt-clients', 'libvirt-dev',
            'python3-dev', 'pkg-config', 'gcc', 'dnsmasq-base', 'ipxe',
            'ipmitool')
REDFISH_PORT = 8000
#: virtualbmc's first IPMI port (UDP); one port per IPMI node.
IPMI_PORT = 6230
#: virtualbmc's control socket: a port on 127.0.0.1.
VBMC_CONTROL_PORT = 50891
#: ironic-python-agent ignores disks below 4 GiB.
DISK_BYTES = 5 * 1024 ** 3
#: The ramdisk unpacks into memory: 1.1 GB unpacked.
MEMORY_MIB = 3072
IPXE_DIR = '/usr/lib/ipxe'
#: [conductor]deploy_callback_timeout of a cloud with VMs: from power on,
#: the ramdisk takes 2 to 5 minutes to boot under software emulation.
CALLBACK_TIMEOUT = 600
#: Kernel parameters of the deploy ramdisk: the serial console, with the
#: journal (the agent's log) on it too, and no wait for a network that
#: glean configures anyway.
KERNEL_APPEND = ('console=ttyS0,115200 '
                 'systemd.journald.forward_to_console=1 '
                 'systemd.mask=systemd-networkd-wait-online.service '
                 'ipa-debug=1')
#: Where libvirtd keeps its state, bind-mounted from the cloud's.
_LIBVIRT_DIRS = {'etc': '/etc/libvirt', 'run': '/run/libvirt',
                 'lib': '/var/lib/libvirt', 'log': '/var/log/libvirt',
                 'cache': '/var/cache/libvirt'}


class VmLabError(RuntimeError):
    """The VM lab cannot start (the message says why and what to do)."""


def available():
    """Why the VM lab cannot run here, or None when it can."""
    missing = [b for b in ('libvirtd', 'virsh', 'dnsmasq', 'ipmitool',
                           'unshare', vms.QEMU)
               if shutil.which(b, path=os.environ.get('PATH', '') +
                               ':/usr/sbin:/sbin') is None]
    if not os.path.exists(os.path.join(IPXE_DIR, 'undionly.kpxe')):
        missing.append(os.path.join(IPXE_DIR, 'undionly.kpxe'))
    if missing:
        return ('%s not found: install the Debian packages %s '
                '(tools/install-deps.sh --vms)'
                % (', '.join(missing), ' '.join(PACKAGES)))
    return None


def libvirt_uri(cloud):
    socket = cloud.path('libvirt', 'run', 'libvirt-sock')
    return 'qemu:///system?socket=%s' % socket


def _bmc_venv(log):
    """A virtualenv with the pinned BMC emulators, cached by their pins."""
    venv = os.path.join(lab_ramdisk.cache_root(), 'bmc-%s' % hashlib.sha256(
        ' '.join(BMC_TOOLS).encode()).hexdigest()[:12])
    if not os.path.exists(os.path.join(venv, 'bin', 'vbmcd')):
        shutil.rmtree(venv, ignore_errors=True)
        try:
            lab_ramdisk.run([sys.executable, '-m', 'venv', venv], log)
            lab_ramdisk.run([os.path.join(venv, 'bin', 'pip'), 'install',
                             '-q'] + list(BMC_TOOLS), log)
        except lab_ramdisk.RamdiskError as e:
            shutil.rmtree(venv, ignore_errors=True)
            raise VmLabError('cannot install the BMC emulators: %s' % e)
    return venv


def plan(cloud, count, ipmi):
    """Name the VMs and their BMCs; the last ``ipmi`` of them use IPMI."""
    if count < 1:
        raise VmLabError('--vms needs at least one VM')
    if not 0 <= ipmi <= count:
        raise VmLabError('--ipmi-vms must be between 0 and --vms (%d)'
                         % count)
    cloud.state['vms'] = {
        'count': count,
        'libvirt_uri': libvirt_uri(cloud),
        'bmc_user': 'admin',
        # Both emulators take it; the lab's secret, never logged.
        'bmc_password': secrets.token_urlsafe(12),
        'redfish_url': 'http://%s:%d' % (cloud.state['gateway_ip'],
                                         REDFISH_PORT),
        'ipmi': ipmi,
        'ssh_key': _ssh_key(cloud),
    }


def _ssh_key(cloud):
    """The cloud's SSH key pair, for ``tools/cloud ssh`` into a ramdisk.

    Only its public half leaves the state directory, on the ramdisk's
    kernel command line (see lab_ramdisk.DIB_ELEMENTS).
    """
    path = cloud.path('vms-ssh-key')
    if not os.path.exists(path):
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '',
                        '-C', 'ironic-bt-lab', '-f', path], check=True)
    return path


def kernel_append(cloud):
    """The ramdisk's kernel parameters: KERNEL_APPEND and the lab key."""
    with open(cloud.state['vms']['ssh_key'] + '.pub') as f:
        public = f.read().strip()
    return '%s sshkey="%s"' % (KERNEL_APPEND, public)


def ssh_command(cloud, name, command=()):
    """ssh into the ramdisk (or instance) of VM ``name``, as root."""
    vm = cloud.state.get('vm_nodes', {}).get(name)
    if vm is None:
        raise VmLabError('%s is not a VM of this cloud (VMs: %s)'
                         % (name, ', '.join(cloud.state.get('vm_nodes', {}))
                            or 'none'))
    return ['ssh', '-i', cloud.state['vms']['ssh_key'],
            '-o', 'StrictHostKeyChecking=no',
            '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
            '-o', 'ConnectTimeout=10', 'root@%s' % vm['ip']] + list(command)


def start(cloud, lab):
    """Build (or find) the ramdisk; start libvirtd, dnsmasq, the BMCs."""
    logs = cloud.path('logs')
    ramdisk = lab_ramdisk.get(os.path.join(logs, 'ramdisk-build.log'))
    cloud.state['vms'].update(
        kernel=ramdisk.kernel, initramfs=ramdisk.initramfs,
        ramdisk_key=ramdisk.key,
        accel=vms.accelerator(ramdisk.kernel, ramdisk.initramfs))
    with open(os.path.join(logs, 'bmc-install.log'), 'ab') as log:
        cloud.state['vms']['bmc_venv'] = _bmc_venv(log)
    cloud.save()
    _start_libvirtd(cloud, lab)
    _start_dnsmasq(cloud, lab)


def _start_libvirtd(cloud, lab):
    root = cloud.path('libvirt')
    mounts = []
    for sub, target in _LIBVIRT_DIRS.items():
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        mounts.append('mkdir -p %s && mount --bind %s %s'
                      % (target, os.path.join(root, sub), target))
    os.makedirs(os.path.join(root, 'etc', 'qemu'), exist_ok=True)
    with open(os.path.join(root, 'etc', 'libvirtd.conf'), 'w') as f:
        f.write(textwrap.dedent('''\
            # The lab's libvirtd: its unix socket only, for root only.
            unix_sock_group = "root"
            unix_sock_ro_perms = "0700"
            unix_sock_rw_perms = "0700"
            auth_unix_ro = "none"
            auth_unix_rw = "none"
            log_outputs = "3:stderr"
            '''))
    with open(os.path.join(root, 'etc', 'qemu.conf'), 'w') as f:
        f.write(textwrap.dedent('''\
            # Guests of the lab run as root, with no confinement driver
            # (none is set up on a lab machine) and no cgroup or device
            # namespace: the host may have neither systemd nor cgroup v2
            # delegation.
            security_driver = "none"
            user = "root"
            group = "root"
            namespaces = [ ]
            cgroup_controllers = [ ]
            remember_owner = 0
            # No virtlogd: the guests' stdio goes to files.
            stdio_handler = "file"
            '''))
    log = cloud.path('logs', 'libvirtd.log')
    script = ' && '.join(mounts + ['exec libvirtd'])
    proc = cloud.start_service(
        lab, 'libvirtd',
        ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
         script], log)
    uri = cloud.state['vms']['libvirt_uri']

    def answers():
        return subprocess.run(['virsh', '-c', uri, 'uri'],
                              capture_output=True).returncode == 0
    procs.wait_for(answers, 60, 0.5, 'libvirtd to answer on %s' % uri,
                   proc=proc, log_path=log)


def _start_dnsmasq(cloud, lab):
    """DHCP (and TFTP of iPXE) on the bridge: no DNS, no router."""
    gw = cloud.state['gateway_ip']
    tftp = cloud.path('libvirt', 'tftp')
    os.makedirs(tftp, exist_ok=True)
    shutil.copy(os.path.join(IPXE_DIR, 'undionly.kpxe'), tftp)
    hosts = cloud.path('libvirt', 'dhcp-hosts')
    with open(hosts, 'w') as f:
        for vm in cloud.state['vm_nodes'].values():
            f.write('%s,%s,%s\n' % (vm['mac'], vm['ip'], vm['name']))
    log = cloud.path('logs', 'dnsmasq.log')
    boot_script = '%s/boot.ipxe' % cloud.state['http_url']
    cmd = ['dnsmasq', '--keep-in-foreground', '--no-daemon',
           '--conf-file=/dev/null', '--port=0', '--no-resolv', '--no-hosts',
           '--interface=%s' % lab.bridge, '--bind-interfaces',
           '--except-interface=lo', '--listen-address=%s' % gw,
           # Only the VMs' ports get an address.
           '--dhcp-range=%s,static,%s' % (gw, lab.subnet.netmask),
           '--dhcp-hostsfile=%s' % hosts,
           '--dhcp-leasefile=%s' % cloud.path('libvirt', 'dnsmasq.leases'),
           # No default route and no DNS server for the guests.
           '--dhcp-option=option:router', '--dhcp-option=option:dns-server',
           '--dhcp-match=set:ipxe,175',
           '--dhcp-boot=tag:ipxe,%s' % boot_script,
           '--dhcp-boot=tag:!ipxe,undionly.kpxe,,%s' % gw,
           '--enable-tftp', '--tftp-root=%s' % tftp,
           '--log-dhcp', '--log-facility=-',
           '--pid-file=%s' % cloud.path('libvirt', 'dnsmasq.pid'),
           '--user=root']
    proc = cloud.start_service(lab, 'dnsmasq', cmd, log)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise VmLabError('dnsmasq exited with code %d; see %s'
                         % (proc.returncode, log))


def add_vms(cloud, lab):
    """Create the VMs (powered off): disk, tap, libvirt domain."""
    count = cloud.state['vms']['count']
    ipmi = cloud.state['vms']['ipmi']
    cloud.state['vm_nodes'] = {}
    for i in range(count):
        name = 'vm%d' % i
        tap = lab.add_tap(name)
        disk = cloud.path('disks', '%s.img' % name)
        with open(disk, 'wb') as f:
            f.truncate(DISK_BYTES)
        vm = {'name': name, 'index': i, 'ip': tap.ip, 'mac': tap.mac,
              'tap': tap.dev, 'disk': disk, 'uuid': None,
              'domain_uuid': str(uuid.uuid4()),
              'console': cloud.path('logs', 'console-%s.log' % name),
              'bmc': 'ipmi' if i >= count - ipmi else 'redfish'}
        if vm['bmc'] == 'ipmi':
            vm['ipmi_port'] = IPMI_PORT + i
        cloud.state['vm_nodes'][name] = vm
    cloud.save()


def define_domains(cloud, lab):
    uri = cloud.state['vms']['libvirt_uri']
    for vm in cloud.state['vm_nodes'].values():
        # libvirtd writes the PID of the guest's QEMU here.
        lab.register_pidfile(
            cloud.path('libvirt', 'run', 'qemu', '%s.pid' % vm['name']),
            'guest=%s' % vm['name'])
        xml = cloud.path('libvirt', '%s.xml' % vm['name'])
        with open(xml, 'w') as f:
            f.write(domain_xml(vm, cloud.state['vms']['accel']))
        _virsh(uri, 'define', xml)


def domain_xml(vm, accel):
    """A BIOS machine that boots from its NIC, then from its disk."""
    return textwrap.dedent('''\
        <domain type='%(type)s'>
          <name>%(name)s</name>
          <uuid>%(uuid)s</uuid>
          <memory unit='MiB'>%(memory)d</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <boot dev='network'/>
            <boot dev='hd'/>
            <bios useserial='yes'/>
          </os>
          <features><acpi/><apic/></features>
          <on_poweroff>destroy</on_poweroff>
          <on_reboot>restart</on_reboot>
          <on_crash>destroy</on_crash>
          <devices>
            <disk type='file' device='disk'>
              <driver name='qemu' type='raw' cache='none' io='native'/>
              <source file='%(disk)s'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <interface type='ethernet'>
              <mac address='%(mac)s'/>
              <target dev='%(tap)s' managed='no'/>
              <model type='virtio'/>
            </interface>
            <serial type='file'>
              <source path='%(console)s' append='on'/>
              <target port='0'/>
            </serial>
            <console type='file'>
              <source path='%(console)s' append='on'/>
              <target type='serial' port='0'/>
            </console>
          </devices>
        </domain>
        ''') % {'type': 'kvm' if accel == 'kvm' else 'qemu',
                'name': vm['name'], 'uuid': vm['domain_uuid'],
                'memory': MEMORY_MIB, 'disk': vm['disk'], 'mac': vm['mac'],
                'tap': vm['tap'], 'console': vm['console']}


def _virsh(uri, *args):
    result = subprocess.run(['virsh', '-c', uri] + list(args),
                            capture_output=True, text=True)
    if result.returncode:
        raise VmLabError('virsh %s failed: %s'
                         % (' '.join(args), result.stderr.strip()))
    return result.stdout


def domain_state(cloud, name):
    """libvirt's state of a VM: 'running', 'shut off', ..."""
    return _virsh(cloud.state['vms']['libvirt_uri'], 'domstate',
                  name).strip()


def power_off(cloud, name):
    """Pull a VM's plug, as a power cut would (not through ironic)."""
    _virsh(cloud.state['vms']['libvirt_uri'], 'destroy', name)


def start_bmcs(cloud, lab):
    """sushy-tools for the Redfish VMs, virtualbmc for the IPMI ones."""
    v = cloud.state['vms']
    venv = v['bmc_venv']
    gw = cloud.state['gateway_ip']
    bmc_dir = cloud.path('libvirt', 'bmc')
    os.makedirs(bmc_dir, exist_ok=True)
    redfish = [vm for vm in cloud.state['vm_nodes'].values()
               if vm['bmc'] == 'redfish']
    ipmi = [vm for vm in cloud.state['vm_nodes'].values()
            if vm['bmc'] == 'ipmi']
    if redfish:
        htpasswd = os.path.join(bmc_dir, 'htpasswd')
        subprocess.run(
            [os.path.join(venv, 'bin', 'python'), '-c',
             'import bcrypt, sys; sys.stdout.write("%s:%s\\n" % (sys.argv[1],'
             ' bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt())'
             '.decode()))', v['bmc_user'], v['bmc_password']],
            check=True, stdout=open(htpasswd, 'w'))
        conf = os.path.join(bmc_dir, 'sushy.conf')
        with open(conf, 'w') as f:
            f.write(textwrap.dedent('''\
                SUSHY_EMULATOR_LISTEN_IP = %r
                SUSHY_EMULATOR_LISTEN_PORT = %d
                SUSHY_EMULATOR_LIBVIRT_URI = %r
                SUSHY_EMULATOR_AUTH_FILE = %r
                SUSHY_EMULATOR_ALLOWED_INSTANCES = %r
                SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False
                ''') % (gw, REDFISH_PORT, v['libvirt_uri'], htpasswd,
                        [vm['domain_uuid'] for vm in redfish]))
        log = cloud.path('logs', 'sushy-emulator.log')
        proc = cloud.start_service(
            lab, 'sushy-emulator',
            [os.path.join(venv, 'bin', 'sushy-emulator'), '--config', conf],
            log)
        procs.wait_port(gw, REDFISH_PORT, timeout=60, proc=proc,
                        log_path=log)
    if ipmi:
        os.makedirs(os.path.join(bmc_dir, 'vbmc'), exist_ok=True)
        conf = os.path.join(bmc_dir, 'virtualbmc.conf')
        with open(conf, 'w') as f:
            f.write(textwrap.dedent('''\
                [default]
                config_dir = %s
                pid_file = %s
                server_port = %d
                [log]
                logfile = %s
                debug = true
                ''') % (os.path.join(bmc_dir, 'vbmc'),
                        os.path.join(bmc_dir, 'vbmcd.pid'),
                        VBMC_CONTROL_PORT,
                        cloud.path('logs', 'vbmc.log')))
        env = {'VIRTUALBMC_CONFIG': conf}
        log = cloud.path('logs', 'vbmcd.log')
        proc = cloud.start_service(
            lab, 'vbmcd', [os.path.join(venv, 'bin', 'vbmcd'),
                           '--foreground'], log, env=env)
        procs.wait_port('127.0.0.1', VBMC_CONTROL_PORT, timeout=60,
                        proc=proc, log_path=log)
        vbmc = os.path.join(venv, 'bin', 'vbmc')
        for vm in ipmi:
            for args in (['add', '--username', v['bmc_user'], '--password',
                          v['bmc_password'], '--port', str(vm['ipmi_port']),
                          '--address', gw, '--libvirt-uri', v['libvirt_uri'],
                          vm['name']],
                         ['start', vm['name']]):
                result = subprocess.run(
                    [vbmc] + args, capture_output=True, text=True,
                    env=dict(os.environ, **env))
                if result.returncode:
                    raise VmLabError('vbmc %s %s failed: %s (see %s)'
                                     % (args[0], vm['name'],
                                        result.stderr.strip(), log))


def ironic_sections(cloud):
    """What ironic needs to boot the VMs' ramdisk and drive their BMCs."""
    return {
        'DEFAULT': {
            'enabled_hardware_types':
                'fake-hardware,bittorrent-redfish,bittorrent-ipmi',
            'enabled_boot_interfaces': 'fake,ipxe',
            'enabled_power_interfaces': 'fake,redfish,ipmitool',
            'enabled_management_interfaces': 'fake,noop,redfish,ipmitool',
        },
        # Ironic boots the ramdisk of the VMs (fake boot does nothing for
        # the namespace nodes, whose agents the lab starts), and keeps the
        # agents' logs (journal included) in logs/deploy.
        'agent': {'manage_agent_boot': True, 'deploy_logs_collect': 'always'},
        'deploy': {'default_boot_mode': 'bios'},
        'pxe': {'kernel_append_params': kernel_append(cloud),
                'ipxe_timeout': 120},
        'conductor': {
            'file_url_allowed_paths': '%s,%s' % (
                cloud.path('http'),
                os.path.dirname(cloud.state['vms']['kernel'])),
            # Power states are polled from the BMCs: often, so that a VM
            # that lost power is seen soon.
            'sync_power_state_interval': 10,
        },
        # The API address ironic writes into the ramdisk's kernel command
        # line (ipa-api-url): no Keystone catalog in the lab.
        'service_catalog': {'endpoint_override': cloud.state['api_url']},
        'redfish': {'connection_attempts': 5, 'connection_retry_interval': 2},
        'ipmi': {'command_retry_timeout': 30, 'min_command_interval': 1},
    }


def enrol(cloud, deploy_interface):
    """Enrol the VMs; manage and provide them (no cleaning in the lab)."""
    bm = cloud.conn.baremetal
    v = cloud.state['vms']
    gw = cloud.state['gateway_ip']
    uuids = []
    for name in sorted(cloud.state['vm_nodes'],
                       key=lambda n: cloud.state['vm_nodes'][n]['index']):
        vm = cloud.state['vm_nodes'][name]
        driver_info = {'deploy_kernel': 'file://%s' % v['kernel'],
                       'deploy_ramdisk': 'file://%s' % v['initramfs']}
        if vm['bmc'] == 'redfish':
            driver = 'bittorrent-redfish'
            driver_info.update(
                redfish_address=v['redfish_url'],
                redfish_system_id='/redfish/v1/Systems/%s'
                % vm['domain_uuid'],
                redfish_username=v['bmc_user'],
                redfish_password=v['bmc_password'])
            interfaces = {'power_interface': 'redfish',
                          'management_interface': 'redfish'}
        else:
            driver = 'bittorrent-ipmi'
            driver_info.update(
                ipmi_address=gw, ipmi_port=vm['ipmi_port'],
                ipmi_username=v['bmc_user'], ipmi_password=v['bmc_password'])
            interfaces = {'power_interface': 'ipmitool',
                          'management_interface': 'ipmitool'}
        node = bm.create_node(
            name=name, driver=driver, boot_interface='ipxe',
            deploy_interface=deploy_interface, network_interface='noop',
            driver_info=driver_info,
            properties={'capabilities': 'boot_mode:bios',
                        'cpu_arch': 'x86_64'},
            **interfaces)
        vm['uuid'] = node.id
        bm.create_port(node_id=node.id, address=vm['mac'], pxe_enabled=True)
        uuids.append(node.id)
    cloud.save()
    for uuid_ in uuids:
        bm.set_node_provision_state(uuid_, 'manage')
    bm.wait_for_nodes_provision_state(uuids, 'manageable', timeout=300)
    for uuid_ in uuids:
        bm.set_node_provision_state(uuid_, 'provide')
    bm.wait_for_nodes_provision_state(uuids, 'available', timeout=300)
    return uuids


# -- deploying ---------------------------------------------------------------

#: The disk check's verdict when the disk holds what it should.
DISK_OK = 'image (root file system aside) and config drive'
#: Where a deploy ends.
_TERMINAL = ('active', 'deploy failed')


def prepare_image(cloud, path):
    """Serve an image from the lab's HTTP server: (Image, its URL)."""
    os.makedirs(cloud.path('http', 'images'), exist_ok=True)
    dest = cloud.path('http', 'images', os.path.basename(path))
    if not os.path.exists(dest):
        try:
            os.link(path, dest)
        except OSError:
            subprocess.run(['cp', '--sparse=always', path, dest], check=True)
    size = os.path.getsize(dest)
    if size > DISK_BYTES:
        raise VmLabError('the image (%d bytes) does not fit the VMs\' disks '
                         '(%d bytes)' % (size, DISK_BYTES))
    img = images.Image(dest, size, disks.sha256_region(dest, size))
    return img, '%s/images/%s' % (cloud.state['http_url'],
                                  os.path.basename(dest))


def _console_offset(vm):
    try:
        return os.path.getsize(vm['console'])
    except FileNotFoundError:
        return 0


def _console_since(vm, offset):
    try:
        with open(vm['console'], 'rb') as f:
            f.seek(offset)
            return f.read().decode(errors='replace')
    except FileNotFoundError:
        return ''


def deploy(cloud, osc_env, names, interface, image, hostnames,
           timeout=1800, power_cut=None, log=print):
    """Deploy VMs with ``openstack baremetal node deploy``; watch them boot.

    :param osc_env: the openstack CLI's environment for this cloud.
    :param image: ``(Image, url)`` from :func:`prepare_image`.

    Each node gets a config drive whose ``meta_data`` names its host
    ``hostnames[name]``; a node is done when it is ``active`` and its
    serial console shows ``<hostname> login:`` (the instance booted from
    the disk and read the config drive).

    :param power_cut: ``(name, percent)``: pull that VM's plug once the
        conductor has seen it download that much of the image.
    :returns: {name: {'state', 'last_error', 'active_s', 'booted_s',
        'failed_s'}}, times in seconds from the deploy command.
    """
    bm = cloud.conn.baremetal
    img, url = image
    vm_nodes = cloud.state['vm_nodes']
    for name in names:
        bm.update_node(vm_nodes[name]['uuid'], deploy_interface=interface,
                       instance_info={'image_source': url,
                                      'image_os_hash_algo': 'sha256',
                                      'image_os_hash_value': img.sha256,
                                      'image_disk_format': 'raw'})
    offsets = {n: _console_offset(vm_nodes[n]) for n in names}
    started = time.monotonic()
    for name in names:
        drive = json.dumps({'meta_data': {'hostname': hostnames[name],
                                          'uuid': vm_nodes[name]['uuid']}})
        cmd = [os.path.join(cloud_conf.BINDIR, 'openstack'), 'baremetal',
               'node', 'deploy', '--config-drive', drive]
        cmd.append(vm_nodes[name]['uuid'])
        proc = subprocess.run(cmd, env=osc_env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise VmLabError('openstack baremetal node deploy %s failed: %s'
                             % (name, proc.stderr.strip()
                                or proc.stdout.strip()))
    log('deploying %s with %s: %s (%d bytes)' % (
        ', '.join(names), interface, url, img.size))
    result = {n: {'state': None, 'last_error': None, 'active_s': None,
                  'booted_s': None, 'failed_s': None} for n in names}
    cut = False
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        for name in names:
            r = result[name]
            if r['booted_s'] is not None or (
                    r['state'] == 'deploy failed' and r['last_error']):
                continue
            node = bm.get_node(vm_nodes[name]['uuid'])
            if node.provision_state != r['state']:
                log('%6.1f s  %s: %s' % (now - started, name,
                                         node.provision_state))
            r['state'], r['last_error'] = (node.provision_state,
                                           node.last_error)
            if node.provision_state == 'deploy failed' and \
                    r['failed_s'] is None:
                r['failed_s'] = now - started
            progress = (node.driver_internal_info or {}).get(
                'bittorrent_progress') or {}
            if power_cut and power_cut[0] == name and not cut and \
                    progress.get('percent', 0) >= power_cut[1]:
                power_off(cloud, name)
                cut = True
                log('%6.1f s  %s: power cut at %.1f%% (virsh destroy)'
                    % (now - started, name, progress['percent']))
            if node.provision_state == 'active':
                if r['active_s'] is None:
                    r['active_s'] = now - started
                if '%s login:' % hostnames[name] in _console_since(
                        vm_nodes[name], offsets[name]):
                    r['booted_s'] = now - started
                    log('%6.1f s  %s: instance booted as %s'
                        % (now - started, name, hostnames[name]))
        if all(r['booted_s'] is not None
               or (r['state'] == 'deploy failed' and r['last_error'])
               for r in result.values()):
            return result
        if now > deadline:
            raise VmLabError('timed out after %d s: %s' % (timeout, {
                n: r['state'] for n, r in result.items()}))
        time.sleep(2)


def power_off_all(cloud, names, timeout=300):
    """Power the nodes off through ironic and wait for their guests."""
    bm = cloud.conn.baremetal
    for name in names:
        bm.set_node_power_state(cloud.state['vm_nodes'][name]['uuid'],
                                'power off')
    procs.wait_for(lambda: all(domain_state(cloud, n) == 'shut off'
                               for n in names),
                   timeout, 2, 'the VMs %s to be off' % ', '.join(names))


def undeploy(cloud, names, timeout=900):
    bm = cloud.conn.baremetal
    uuids = [cloud.state['vm_nodes'][n]['uuid'] for n in names]
    for uuid_ in uuids:
        bm.set_node_provision_state(uuid_, 'deleted')
    bm.wait_for_nodes_provision_state(uuids, 'available', timeout=timeout)


def reset(cloud, names, timeout=900):
    """Bring deployed (or failed) VMs back to ``available``."""
    bm = cloud.conn.baremetal
    busy = []
    for name in names:
        uuid_ = cloud.state['vm_nodes'][name]['uuid']
        state = bm.get_node(uuid_).provision_state
        if state in _TERMINAL:
            bm.set_node_provision_state(uuid_, 'deleted')
            busy.append(uuid_)
        elif state != 'available':
            raise VmLabError('%s is %s; cannot deploy it' % (name, state))
    if busy:
        bm.wait_for_nodes_provision_state(busy, 'available', timeout=timeout)


def check_disk(cloud, name, image_path, hostname, work_dir):
    """A VM's disk holds the image and a config drive naming its host.

    Read from the host, with the guest off, leaving out the contents of the
    root file system, which the booted instance has changed.

    :raises configdrive.DiskMismatch: naming the disk and what differs.
    """
    vm = cloud.state['vm_nodes'][name]
    if domain_state(cloud, name) != 'shut off':
        raise VmLabError('%s is running: its disk is checked with the guest '
                         'off' % name)
    # The instance's root file system: the image's first partition.
    root = configdrive.gpt_entries(image_path)[:1]
    drive = configdrive.check_disk(vm['disk'], image_path, skip=root)
    iso = configdrive.config_drive_file(
        vm['disk'], drive, os.path.join(work_dir, '%s-config.iso' % name))
    meta = configdrive.read_json(iso, '/openstack/latest/meta_data.json')
    if meta.get('hostname') != hostname or meta.get('uuid') != vm['uuid']:
        raise configdrive.DiskMismatch(
            '%s: the config drive names %s (%s), not %s (%s)'
            % (vm['disk'], meta.get('hostname'), meta.get('uuid'), hostname,
               vm['uuid']))


def run(cloud, osc_env, names, interface, image_path, timeout=1800,
        power_cut=None, log=print):
    """Deploy VMs, watch the instances boot, check the disks with them off.

    The instance mounts its root file system and so changes it: that
    partition's bytes are left out of the comparison (the agent read them
    back and checked the image's sha256 before the instance booted; a hold
    between the write and the boot would let the host read them too, but
    ironic's deploy steps do not take its reserved "hold" step).

    :returns: a report: per node its state, error, times and disk check,
        the last times, and ``ok`` (every node booted its instance and
        holds the image, except a ``power_cut`` node, which must fail).
    """
    reset(cloud, names)
    image = prepare_image(cloud, image_path)
    hostnames = {n: '%s-%s' % (n, interface) for n in names}
    nodes = deploy(cloud, osc_env, names, interface, image, hostnames,
                   timeout=timeout, power_cut=power_cut, log=log)
    booted = [n for n in names if nodes[n]['booted_s'] is not None]
    power_off_all(cloud, booted)
    for name in names:
        nodes[name]['disk'] = None
    for name in booted:
        try:
            check_disk(cloud, name, image[0].path, hostnames[name],
                       cloud.path('libvirt'))
            nodes[name]['disk'] = DISK_OK
        except configdrive.DiskMismatch as e:
            nodes[name]['disk'] = str(e)
    booted = [n for n in names if nodes[n]['booted_s'] is not None]
    victim = power_cut[0] if power_cut else None
    ok = all((nodes[n]['state'] == 'deploy failed' and nodes[n]['last_error'])
             if n == victim else
             (nodes[n]['disk'] == DISK_OK
              and nodes[n]['booted_s'] is not None)
             for n in names)
    report = {'interface': interface, 'ok': ok, 'image_bytes': image[0].size,
              'accelerator': cloud.state['vms']['accel'], 'nodes': nodes}
    if booted:
        report['last_active_s'] = round(max(nodes[n]['active_s']
                                            for n in booted), 1)
        report['last_booted_s'] = round(max(nodes[n]['booted_s']
                                            for n in booted), 1)
    return report
