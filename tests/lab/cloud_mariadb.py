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
an address), with a database and a user for each service. Every service
of ``up --nova`` keeps its data here
(:data:`tests.lab.cloud_nova.DATABASES`), and ironic alone with ``up
--database mariadb``. On sqlite files, Nova's conductor and compute
service and Placement met "database is locked" (a build hung, a server
could not be deleted), and ironic's lock errors logged whole rows, with
the agent's token.
"""

import os
import secrets
import subprocess

from tests.lab import procs

MARIADBD = '/usr/sbin/mariadbd'
#: Unix sockets have a path limit of 108 bytes (sun_path).
_SOCKET_PATH_MAX = 100


def available():
    """Why MariaDB cannot start here, or None if it can."""
    if not os.path.exists(MARIADBD):
        return 'MariaDB is not installed: run tools/install-deps.sh'
    return None


class DatabaseError(RuntimeError):
    """MariaDB did not start or refused SQL (the message says where)."""


def plan(cloud, databases):
    """Users, passwords and directory; kept in the cloud's state.

    :param databases: {database name: user}.
    """
    cloud.state['mariadb'] = {
        'dir': cloud.path('mariadb'),
        'databases': dict(databases),
        'passwords': {user: secrets.token_urlsafe(18)
                      for user in set(databases.values())},
    }
    cloud.save()


def _path(cloud, *parts):
    return os.path.join(cloud.state['mariadb']['dir'], *parts)


def socket_path(cloud):
    """The unix socket of the lab's MariaDB (the only way in)."""
    return _path(cloud, 'mysqld.sock')


def database_url(cloud, name):
    """The SQLAlchemy URL of a database on the lab's MariaDB."""
    state = cloud.state['mariadb']
    user = state['databases'][name]
    return 'mysql+pymysql://%s:%s@localhost/%s?unix_socket=%s' % (
        user, state['passwords'][user], name, socket_path(cloud))


def start(cloud, lab):
    """MariaDB, with the planned users and databases."""
    _start_mariadb(cloud, lab)
    databases = cloud.state['mariadb']['databases']
    for user in sorted(set(databases.values())):
        _create_user(cloud, user)
    for name, user in sorted(databases.items()):
        _create_database(cloud, name, user)


def _start_mariadb(cloud, lab):
    base = _path(cloud)
    data = os.path.join(base, 'data')
    sock = socket_path(cloud)
    if len(sock) > _SOCKET_PATH_MAX:
        raise DatabaseError(
            'MariaDB\'s socket path %s is longer than %d bytes (the unix '
            'socket limit): use a shorter state directory'
            % (sock, _SOCKET_PATH_MAX))
    os.makedirs(data, mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    install_log = cloud.path('logs', 'mariadb-install-db.log')
    with open(install_log, 'ab') as out:
        rc = subprocess.run(
            ['mariadb-install-db', '--no-defaults', '--datadir=%s' % data,
             '--user=root', '--auth-root-authentication-method=socket',
             '--skip-test-db'], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL).returncode
    if rc:
        raise DatabaseError('mariadb-install-db failed (exit %d): see %s'
                            % (rc, install_log))
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
             '--socket=%s' % socket_path(cloud),
             '--user=root', '--batch'],
            input=statements.encode(), stdout=log,
            stderr=subprocess.STDOUT).returncode
    if rc and check:
        raise DatabaseError(
            'SQL as MariaDB\'s root failed (exit %d): see %s'
            % (rc, cloud.path('logs', 'mariadb-client.log')))
    return rc


def _create_user(cloud, user):
    _sql(cloud, "CREATE USER '%s'@'localhost' IDENTIFIED BY '%s';\n"
         % (user, cloud.state['mariadb']['passwords'][user]))


def _create_database(cloud, name, user):
    _sql(cloud, "CREATE DATABASE %s CHARACTER SET utf8mb4;\n"
                "GRANT ALL PRIVILEGES ON %s.* TO '%s'@'localhost';\n"
         % (name, name, user))
