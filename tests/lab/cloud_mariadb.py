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

"""MariaDB for the local cloud's control plane.

Our own ``mariadbd`` from Debian, with its data under the cloud's state
directory, on a unix socket only (``skip-networking``: nothing listens on
an address), with a database and a user for each service
(:data:`tests.lab.cloud_nova.DATABASES`). Every service of ``up --nova``
keeps its data here: on sqlite files, Nova's conductor and compute service
and Placement met "database is locked" (a build hung, a server could not
be deleted), and ironic's lock errors logged whole rows, with the agent's
token.
"""

import os
import subprocess

from tests.lab import cloud_nova
from tests.lab import procs

MARIADBD = '/usr/sbin/mariadbd'
#: Unix sockets have a path limit of 108 bytes (sun_path).
_SOCKET_PATH_MAX = 100


def available():
    """Why MariaDB cannot start here, or None if it can."""
    if not os.path.exists(MARIADBD):
        return 'MariaDB is not installed: run tools/install-deps.sh'
    return None


def start(cloud, lab):
    """MariaDB, with the services' users and databases."""
    _start_mariadb(cloud, lab)
    for user in sorted(set(cloud_nova.DATABASES.values())):
        _create_user(cloud, user)
    for name, user in sorted(cloud_nova.DATABASES.items()):
        _create_database(cloud, name, user)


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
