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

"""One local cloud with Nova in front, shared by the tests of tox -e nova.

Starting it takes about a minute: RabbitMQ, MariaDB, Keystone, Glance,
Placement, Neutron and Nova beside the all-in-one ironic, three nodes on
25 Mbit/s links (so that the three servers' deploys overlap in one swarm).
"""

import os

import pytest

from tests.lab import cloud as lab_cloud
from tests.lab import cloud_mariadb
from tests.lab import cloud_neutron
from tests.lab import cloud_nova

NODES = 3
DISK_MIB = 128
RATE_MBIT = 25


@pytest.fixture(scope='session')
def cloud(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip('the local cloud needs root (network namespaces, a '
                    'bridge, loop devices)')
    missing = (cloud_nova.available() or cloud_mariadb.available()
               or cloud_neutron.available())
    if missing:
        pytest.fail('the Nova control plane cannot start: %s' % missing)
    with lab_cloud.running(str(tmp_path_factory.mktemp('nova') / 'cloud'),
                           nodes=NODES, disk_mib=DISK_MIB,
                           rate_mbit=RATE_MBIT, nova=True) as cloud:
        yield cloud
