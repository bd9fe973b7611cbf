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

"""Configuration files of the local cloud: ironic, the agents, the site.

Pure functions: they return file contents (or write files under the
directories they are given) and start nothing. :mod:`tests.lab.cloud`
decides where things live and runs the processes.
"""

import configparser
import io
import os
import sys

#: The repository, which the lab's Python processes import the tests from.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
#: The virtualenv's scripts: ironic, nova-manage, openstack, ...
BINDIR = os.path.dirname(sys.executable)

#: Entry point group IPA loads hardware managers from.
HWM_GROUP = 'ironic_python_agent.hardware_managers'
#: The test-only manager, registered for the agents only.
LAB_HWM = 'tests.lab.ipa_test_hw:LabHardwareManager'
_DIST = 'ironic_bt_lab_agent-0.0.0.dist-info'


def render(sections):
    """An oslo.config file from {section: {option: value}}."""
    parser = configparser.ConfigParser(interpolation=None)
    for name, values in sections.items():
        if name != 'DEFAULT':
            parser.add_section(name)
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = 'true' if value else 'false'
            elif isinstance(value, (list, tuple)):
                value = ','.join(value)
            parser.set(name, key, str(value))
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


def ironic_conf(dirs, gateway_ip, *, api_port, http_port,
                deploy_interfaces, default_deploy_interface,
                hardware_types=('fake-hardware',), callback_timeout=90,
                heartbeat_timeout=30, tracker_port=6969, seeder_port=6881,
                debug=True, rpc_transport='none', database_path=None,
                tracker_url=None, tracker_secret=None, log_file='ironic.log',
                json_rpc_port=8089, ssl_authority_dir=None, extra=None):
    """The configuration file of an ironic process.

    The all-in-one ``ironic`` (API and conductor) by default; with
    ``rpc_transport='json-rpc'``, one of several conductors on one
    database, each known by its address (``[DEFAULT]host``, which the API's
    JSON-RPC client connects to).

    :param dirs: a dict of absolute directories: ``ironic`` (state, the
        sqlite database, caches), ``http_root``, ``logs``, ``bittorrent``.
    :param gateway_ip: the lab bridge address; every service binds to it.
    :param deploy_interfaces: enabled deploy interfaces.
    :param callback_timeout: ``[conductor]deploy_callback_timeout``: how
        long a silent agent is given before its deploy fails.
    :param heartbeat_timeout: ``[api]ramdisk_heartbeat_timeout``; agents
        heartbeat every 30-60 % of it.
    :param database_path: the sqlite file (shared by the conductors);
        ``ironic.sqlite`` in the state directory by default.
    :param tracker_url: ``[bittorrent]tracker_url``: a shared tracker.
    :param tracker_secret: ``[bittorrent]tracker_secret``.
    :param ssl_authority_dir: ``[bittorrent]ssl_authority_dir``, which
        conductors sharing swarms share; under the state directory by
        default.
    :param extra: more {section: {option: value}}, merged over these
        (Keystone auth when Nova fronts the cloud: see
        :func:`tests.lab.cloud_nova.ironic_sections`).
    :returns: the file's text.
    """
    state = dirs['ironic']
    several = rpc_transport == 'json-rpc'
    sections = {
        'DEFAULT': {
            # Several conductors are told apart, and reached, by address.
            'host': gateway_ip if several else 'ironic-bt-lab',
            'my_ip': gateway_ip,
            'auth_strategy': 'noauth',
            'rpc_transport': rpc_transport,
            'state_path': state,
            'tempdir': os.path.join(state, 'tmp'),
            'debug': debug,
            'log_dir': dirs['logs'],
            'log_file': log_file,
            'use_stderr': False,
            'enabled_hardware_types': list(hardware_types),
            'enabled_deploy_interfaces': list(deploy_interfaces),
            'default_deploy_interface': default_deploy_interface,
            'enabled_boot_interfaces': 'fake',
            'enabled_power_interfaces': 'fake',
            # fake-hardware needs "fake" enabled to compute its default
            # management interface, but the nodes use noop: fake refuses
            # boot device "disk", which the end of every deploy sets.
            'enabled_management_interfaces': 'fake,noop',
            'enabled_network_interfaces': 'noop',
            'enabled_storage_interfaces': 'noop',
            'enabled_console_interfaces': 'no-console',
            'enabled_inspect_interfaces': 'no-inspect',
            'enabled_raid_interfaces': 'no-raid',
            'enabled_rescue_interfaces': 'no-rescue',
            'enabled_vendor_interfaces': 'no-vendor',
            'enabled_bios_interfaces': 'no-bios',
            'enabled_firmware_interfaces': 'no-firmware',
        },
        'api': {
            'host_ip': gateway_ip,
            'port': api_port,
            'api_workers': 1,
            'ramdisk_heartbeat_timeout': heartbeat_timeout,
        },
        'database': {
            'connection': 'sqlite:///%s' % (
                database_path or os.path.join(state, 'ironic.sqlite')),
        },
        'dhcp': {'dhcp_provider': 'none'},
        'conductor': {
            'automated_clean': False,
            # A killed agent shows up as a callback timeout: keep it short
            # and checked often so the failure is visible in a minute.
            'deploy_callback_timeout': callback_timeout,
            'check_provision_state_interval': 5,
            'file_url_allowed_paths': dirs['http_root'],
        },
        'deploy': {
            'http_url': 'http://%s:%d' % (gateway_ip, http_port),
            'http_root': dirs['http_root'],
            # The agents are up before the deploy starts (the harness
            # boots them at "up"), as with a ramdisk started by
            # inspection: fast track lets the deploy use them at once
            # instead of "rebooting" a fake-powered node and waiting up to
            # a minute for the next lookup retry.
            'fast_track': True,
            'fast_track_timeout': heartbeat_timeout,
            'erase_devices_priority': 0,
            'erase_devices_metadata_priority': 0,
        },
        'agent': {
            'manage_agent_boot': False,
            'image_download_source': 'http',
            'certificates_path': os.path.join(state, 'certificates'),
            # Log collection would ask the agent for the host's journal,
            # dmesg and more; the agents' logs are files of the lab.
            'deploy_logs_collect': 'never',
            'deploy_logs_local_path': os.path.join(dirs['logs'], 'deploy'),
        },
        'pxe': {
            'images_path': os.path.join(state, 'images'),
            'instance_master_path': os.path.join(state, 'master_images'),
            'tftp_root': os.path.join(state, 'tftpboot'),
            'tftp_master_path': os.path.join(state, 'tftpboot', 'master'),
        },
        'oslo_concurrency': {'lock_path': os.path.join(state, 'locks')},
        'bittorrent': {
            'data_dir': dirs['bittorrent'],
            'advertise_host': gateway_ip,
            'tracker_listen_host': gateway_ip,
            'tracker_port': tracker_port,
            'seeder_listen_host': gateway_ip,
            'seeder_port': seeder_port,
            'announce_interval': 2,
            'progress_interval': 2,
            'linger_timeout': 30,
            'tracker_url': tracker_url,
            'tracker_secret': tracker_secret,
            'ssl_authority_dir': ssl_authority_dir,
        },
    }
    if several:
        # The API's view of which conductor owns which node is rebuilt this
        # often: short, so that a conductor that joins is used at once.
        sections['DEFAULT']['hash_ring_reset_interval'] = 2
        sections['json_rpc'] = {'host_ip': gateway_ip,
                                'port': json_rpc_port,
                                'auth_strategy': 'noauth'}
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    return render(sections)


def ipa_conf(node, api_url, log_file, heartbeat_port=9999, debug=True,
             agent_token=None, tls_files=None):
    """One agent's configuration file.

    :param node: a dict with at least ``ip``.
    :param api_url: the ironic API as the agents reach it.
    :param agent_token: the node's agent token, as a ramdisk booted from
        virtual media gets it on its kernel command line
        (``ipa-agent-token``); without it a restarted agent cannot
        authenticate again, and IPA locks itself down.
    :param tls_files: (certificate, key) for a static TLS identity, as a
        ramdisk built with its own certificate has; the default is IPA's
        automatic TLS, whose new certificate after a restart ironic
        refuses ("Detected change in ramdisk provided agent_verify_ca").
    """
    extra = {'agent_token': agent_token} if agent_token else {}
    if tls_files:
        extra.update({'listen_tls': True, 'tls_cert_file': tls_files[0],
                      'tls_key_file': tls_files[1],
                      'advertise_protocol': 'https'})
    return render({'DEFAULT': dict(extra, **{
        'api_url': api_url,
        'listen_host': node['ip'],
        'listen_port': heartbeat_port,
        'advertise_host': node['ip'],
        'advertise_port': heartbeat_port,
        'enable_auto_tls': not tls_files,
        # The agent keeps looking up until a deploy (or fast track) lets
        # it in; never give up and exit.
        'lookup_timeout': 86400,
        'lookup_interval': 1,
        'hardware_initialization_delay': 0,
        'disk_wait_attempts': 0,
        'inspection_callback_url': None,
        'inspection_collectors': '',
        'collect_lldp': False,
        'debug': debug,
        'log_file': log_file,
        'use_stderr': False,
    })})


def write_agent_site(site_dir):
    """Register the test-only hardware manager for the agents only.

    Writes a minimal ``*.dist-info`` into ``site_dir``; putting that
    directory on the agents' ``PYTHONPATH`` (and the repository root, for
    the module itself) makes stevedore load
    :class:`tests.lab.ipa_test_hw.LabHardwareManager` next to IPA's own
    managers and ironic-bt's. Nothing is installed into the virtualenv and
    ironic-bt's ``setup.cfg`` never mentions it.

    :returns: ``site_dir``.
    """
    dist = os.path.join(site_dir, _DIST)
    os.makedirs(dist, exist_ok=True)
    with open(os.path.join(dist, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: ironic-bt-lab-agent\n'
                'Version: 0.0.0\n')
    with open(os.path.join(dist, 'entry_points.txt'), 'w') as f:
        f.write('[%s]\nironic_bt_lab = %s\n' % (HWM_GROUP, LAB_HWM))
    return site_dir
