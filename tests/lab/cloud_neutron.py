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

"""Neutron for the local cloud's Nova.

Nova 34 needs Neutron to boot a server: its API asks Neutron for the
server's security groups, and the ironic driver builds the config drive's
network data from the server's ports. This module starts Neutron's API
(ML2, flat provider networks) under cheroot, like the other WSGI services,
with its database on the lab's MariaDB (:mod:`tests.lab.cloud_mariadb`;
Neutron's migrations do not run on sqlite).

The lab's nodes keep ironic's ``noop`` network interface: their
provisioning network is the lab bridge, with addresses the lab assigns.
Neutron gives each server a port on a shared flat network over the lab's
subnet (no DHCP agent: the addresses reach the instance through the config
drive's ``network_data.json``); nothing binds those ports to a switch.
"""

import os

from tests.lab import cloud_conf
from tests.lab import cloud_nova

NEUTRON_PORT = cloud_nova.NEUTRON_PORT
#: The physical network of the lab bridge, and the servers' network.
PHYSNET = 'provisioning'
NETWORK = 'lab-provisioning'


def available():
    """Why Neutron cannot start here, or None if it can."""
    if not os.path.exists(os.path.join(cloud_conf.BINDIR,
                                       'neutron-db-manage')):
        return ('neutron is not installed in the "nova" tox environment '
                '(tox -e nova --notest)')
    return None


def start(cloud, lab):
    """Neutron's API (its database is on the lab's MariaDB)."""
    conf_dir = cloud_nova.control_path(cloud, 'neutron')
    state = os.path.join(conf_dir, 'state')
    os.makedirs(os.path.join(state, 'locks'), exist_ok=True)
    paste = os.path.join(os.path.dirname(cloud_conf.BINDIR), 'etc',
                         'neutron', 'api-paste.ini')
    conf = os.path.join(conf_dir, 'neutron.conf')
    with open(conf, 'w') as f:
        f.write(cloud_conf.render({
            'DEFAULT': {
                'log_file': cloud.path('logs', 'neutron.log'),
                'use_stderr': False,
                'core_plugin': 'ml2',
                'service_plugins': '',
                'auth_strategy': 'keystone',
                'transport_url': cloud_nova.transport_url(cloud),
                'state_path': state,
                'api_paste_config': paste,
                # Nova learns that a server's port changed.
                'notify_nova_on_port_status_changes': True,
                'notify_nova_on_port_data_changes': True,
            },
            'database': {
                'connection': cloud_nova.database_url(cloud, 'neutron')},
            'keystone_authtoken': cloud_nova.authtoken(cloud, 'neutron'),
            'nova': cloud_nova.auth_options(cloud, 'neutron'),
            'oslo_concurrency': {'lock_path': os.path.join(state, 'locks')},
        }))
    ml2 = os.path.join(conf_dir, 'ml2_conf.ini')
    with open(ml2, 'w') as f:
        f.write(cloud_conf.render({
            'ml2': {'type_drivers': 'flat',
                    'tenant_network_types': '',
                    'mechanism_drivers': '',
                    'extension_drivers': 'port_security'},
            'ml2_type_flat': {'flat_networks': PHYSNET},
        }))
    cloud_nova.run_tool(cloud, 'neutron-db-manage', [
        os.path.join(cloud_conf.BINDIR, 'neutron-db-manage'),
        '--config-file', conf, '--config-file', ml2, 'upgrade', 'heads'])
    cloud_nova.serve(cloud, lab, 'neutron', 'neutron.wsgi.api:application',
                     NEUTRON_PORT, {
                         'OS_NEUTRON_CONFIG_DIR': conf_dir,
                         'OS_NEUTRON_CONFIG_FILES':
                             'neutron.conf;ml2_conf.ini'})


def create_network(cloud):
    """The servers' network: shared, flat, on the lab's subnet.

    Its addresses come from the top of the lab's subnet, away from the
    conductor's and the nodes' (which the lab hands out from the bottom).

    :returns: the network's ID.
    """
    import ipaddress
    conn = cloud_nova.connect(cloud)
    subnet = ipaddress.ip_network(cloud.state['subnet'])
    hosts = list(subnet.hosts())
    network = conn.network.create_network(
        name=NETWORK, shared=True, provider_network_type='flat',
        provider_physical_network=PHYSNET)
    conn.network.create_subnet(
        network_id=network.id, name=NETWORK, ip_version=4,
        cidr=str(subnet), enable_dhcp=False, gateway_ip=None,
        allocation_pools=[{'start': str(hosts[-54]),
                           'end': str(hosts[-1])}])
    return network.id
