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

"""Shared set-up for the conductor tests: ironic's own test base."""

import os
import shutil
import tempfile
from unittest import mock

from ironic.tests.unit.db import base as db_base

from ironic_bt import conf  # noqa: F401 (registers [bittorrent])
from ironic_bt import publisher

MiB = 1024 * 1024


def make_image(directory, name='image.raw', seed=1):
    """A 3 MiB raw image: data, an all-zero MiB, data (12 pieces, 4 zero)."""
    data = bytes((seed * 131 + i * 7) % 251 for i in range(MiB))
    path = os.path.join(directory, name)
    with open(path, 'wb') as f:
        f.write(data + bytes(MiB) + data[::-1])
    return path


class TestCase(db_base.DbTestCase):
    """A DB test case with a private data_dir and a fresh publisher.

    The seeder and the tracker listen on loopback, on ports the kernel
    picks, so tests run side by side.
    """

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix='ironic-bt-test-')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.data_dir = os.path.join(self.tmp, 'data')
        self.config(group='bittorrent',
                    data_dir=self.data_dir,
                    advertise_host='127.0.0.1',
                    seeder_listen_host='127.0.0.1', seeder_port=0,
                    tracker_listen_host='127.0.0.1', tracker_port=0,
                    ssl_authority_dir=os.path.join(self.tmp, 'authority'))
        self.publisher = publisher.Publisher()
        self.addCleanup(self.publisher.shutdown)
        patcher = mock.patch.object(publisher, '_publisher', self.publisher)
        patcher.start()
        self.addCleanup(patcher.stop)

    def _clear_attrs(self):
        # pytest runs a TestCase through an instance attribute named after
        # the test, and deletes it itself once the test has finished.
        for key in [k for k in self.__dict__
                    if k[0] != '_' and k != self._testMethodName]:
            del self.__dict__[key]
