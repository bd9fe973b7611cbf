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

"""MariaDB and Neutron for the local cloud's Nova.

Nova 34 needs Neutron to boot a server: its API asks Neutron for the
server's security groups, and the ironic driver builds the config drive's
network data from the server's ports. Neutron's schema migrations do not
run on sqlite, so this module starts:

* MariaDB from Debian: our own ``mariadbd`` with its data under the cloud's
  state directory, on a unix socket only (``skip-networking``: nothing
  listens on an address), with the databases of Neutron, Nova and ironic;
* Neutron's API (ML2, flat provider networks) under cheroot, like the
  other WSGI services.

The lab's nodes keep ironic's ``noop`` network interface: their
provisioning network is the lab bridge, with addresses the lab assigns.
Neutron gives each server a port on a shared flat network over the lab's
subnet (no DHCP agent: the addresses reach the instance through the config
drive's ``network_data.json``); nothing binds those ports to a switch.
"""

import os
import subprocess

from tests.lab import cloud_conf
from tests.lab import cloud_nova
from tests.lab import procs

NEUTRON_PORT = cloud_nova.NEUTRON_PORT
#: The physical network of the lab bridge, and the servers' network.
PHYSNET = 'provisioning'
NETWORK = 'lab-provisioning'
#: Unix sockets have a path limit of 108 bytes (sun_path).
_SOCKET_PATH_MAX = 100
MARIADBD = '/usr/sbin/mariadbd'


def available():
    """Why Neutron cannot start here, or None if it can."""
    if not os.path.exists(MARIADBD):
        return 'MariaDB is not installed: run tools/install-deps.sh'
    if not os.path.exists(os.path.join(cloud_conf.BINDIR,
                                       'neutron-db-manage')):
        return ('neutron is not installed in the "nova" tox environment '
                '(tox -e nova --notest)')
    return None


def start(cloud, lab):
    """MariaDB with the databases of Neutron, Nova and ironic; Neutron.

    Nova and ironic have their databases here too: on sqlite, Nova's
    conductor and compute service met "database is locked" and a server's
    build hung, and ironic's lock errors logged whole rows (with the
    agent's token).
    """
    _start_mariadb(cloud, lab)
    for user in sorted(set(cloud_nova.DATABASES.values())):
        _create_user(cloud, user)
    for name, user in sorted(cloud_nova.DATABASES.items()):
        _create_database(cloud, name, user)
    _start_neutron(cloud, lab)


def _start_mariadb(cloud, lab):
    base = cloud_nova.control_path(cloud, 'mariadb')
    data = os.path.join(base, 'data')
    sock = cloud_nova.mariadb_socket(cloud)
    if len(sock) > _SOCKET_PATH_MAX:
        raise cloud_nova.ControlPlaneError(
            'MariaDB\'s socket path %s is longer than %d bytes (the unix '
            'socket limit): use a shorter state directory'
            % (sock, _SOCKET_PATH_MAX))
    os.makedirs(data, mode=0o700, exist_ok=True)
    cloud_nova.run_tool(cloud, 'mariadb-install-db', [
        'mariadb-install-db', '--no-defaults', '--datadir=%s' % data,
        '--user=root', '--auth-root-authentication-method=socket',
        '--skip-test-db'])
    log = cloud.path('logs', 'mariadb.log')
    proc = cloud.start_service(lab, 'mariadb', [
        MARIADBD, '--no-defaults', '--datadir=%s' % data,
        '--socket=%s' % sock, '--skip-networking',
        '--pid-file=%s' % os.path.join(base, 'mariadbd.pid'),
        '--log-error=%s' % log, '--user=root',
        '--character-set-server=utf8mb4',
        # The lab's databases are small.
        '--innodb-buffer-pool-size=64M', '--max-connections=500'],
        cloud.path('logs', 'mariadb.out'))
    procs.wait_for(lambda: _sql(cloud, 'SELECT 1', check=False) == 0, 60,
                   0.5, 'MariaDB to accept connections on %s' % sock,
                   proc=proc, log_path=log)


def _sql(cloud, statements, check=True):
    """Run SQL as MariaDB's root (unix socket authentication).

    The statements go through stdin, so that no password is on a command
    line.
    """
    with open(cloud.path('logs', 'mariadb-client.log'), 'ab') as log:
        rc = subprocess.run(
            ['mariadb', '--no-defaults',
             '--socket=%s' % cloud_nova.mariadb_socket(cloud),
             '--user=root', '--batch'],
            input=statements.encode(), stdout=log,
            stderr=subprocess.STDOUT).returncode
    if rc and check:
        raise cloud_nova.ControlPlaneError(
            'SQL as MariaDB\'s root failed (exit %d): see %s'
            % (rc, cloud.path('logs', 'mariadb-client.log')))
    return rc


def _create_user(cloud, user):
    _sql(cloud, "CREATE USER '%s'@'localhost' IDENTIFIED BY '%s';\n"
         % (user, cloud.state['nova']['passwords'][user]))


def _create_database(cloud, name, user):
    _sql(cloud, "CREATE DATABASE %s CHARACTER SET utf8mb4;\n"
                "GRANT ALL PRIVILEGES ON %s.* TO '%s'@'localhost';\n"
         % (name, name, user))


def _start_neutron(cloud, lab):
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
