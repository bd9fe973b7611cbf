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

"""Tests for the hardware types and the installed entry points."""

import os
import subprocess
import sys
import unittest

from ironic.common import driver_factory
from ironic.common import exception
from ironic.conductor import task_manager
from ironic.tests.unit.objects import utils as obj_utils

from ironic_bt import deploy
from tests.unit.conductor import base

OSLO_CONFIG_GENERATOR = os.path.join(os.path.dirname(sys.executable),
                                     'oslo-config-generator')


class HardwareTypeTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.config(enabled_hardware_types=['bittorrent-ipmi',
                                            'bittorrent-redfish', 'ipmi'],
                    enabled_deploy_interfaces=['direct', 'bittorrent'],
                    enabled_power_interfaces=['ipmitool', 'redfish'],
                    enabled_management_interfaces=['ipmitool', 'redfish'],
                    enabled_boot_interfaces=['pxe'],
                    enabled_inspect_interfaces=['no-inspect'],
                    enabled_bios_interfaces=['no-bios'],
                    enabled_firmware_interfaces=['no-firmware'],
                    enabled_raid_interfaces=['no-raid'],
                    enabled_vendor_interfaces=['no-vendor'],
                    enabled_console_interfaces=['no-console'])

    def test_bittorrent_is_the_default(self):
        for driver in ('bittorrent-ipmi', 'bittorrent-redfish'):
            node = obj_utils.get_test_node(self.context, driver=driver)
            driver_factory.check_and_update_node_interfaces(node)
            self.assertEqual('bittorrent', node.deploy_interface)

    def test_task_loads_the_interface(self):
        node = obj_utils.create_test_node(self.context,
                                          driver='bittorrent-redfish',
                                          deploy_interface='bittorrent')
        with task_manager.acquire(self.context, node.uuid,
                                  shared=True) as task:
            self.assertIsInstance(task.driver.deploy,
                                  deploy.BitTorrentDeploy)

    def test_direct_still_accepted(self):
        node = obj_utils.get_test_node(self.context, driver='bittorrent-ipmi',
                                       deploy_interface='direct')
        driver_factory.check_and_update_node_interfaces(node)
        self.assertEqual('direct', node.deploy_interface)

    def test_stock_type_refuses_bittorrent(self):
        node = obj_utils.get_test_node(self.context, driver='ipmi',
                                       deploy_interface='bittorrent')
        self.assertRaises(exception.IncompatibleInterface,
                          driver_factory.check_and_update_node_interfaces,
                          node)


class ConfigGeneratorTestCase(unittest.TestCase):
    # Not on ironic's test base, which forbids subprocesses.

    def test_sample_config_documents_the_group(self):
        out = subprocess.run(
            [OSLO_CONFIG_GENERATOR, '--namespace', 'ironic_bt'],
            check=True, capture_output=True, text=True, timeout=120).stdout
        self.assertIn('[bittorrent]', out)
        for option in ('data_dir', 'advertise_host', 'tracker_url',
                       'publication_check_interval', 'stall_timeout'):
            self.assertIn('#%s = ' % option, out)
