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

import fixtures
from ironic.common import driver_factory
from ironic.common import exception
from ironic.conductor import task_manager
from ironic.drivers.modules.redfish import utils as redfish_utils
from ironic.tests.unit.objects import utils as obj_utils

from ironic_bt import deploy
from ironic_bt import hardware
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

    def _redfish_node(self, create=False, **driver_info):
        info = {'redfish_address': 'https://bmc.example.org',
                'redfish_system_id': '/redfish/v1/Systems/1',
                'redfish_username': 'admin', 'redfish_password': 'secret'}
        info.update(driver_info)
        make = (obj_utils.create_test_node if create
                else obj_utils.get_test_node)
        return make(
            self.context, driver='bittorrent-redfish',
            power_interface='redfish', management_interface='redfish',
            boot_interface='pxe', driver_info=info)

    def test_redfish_power_credentials_validate(self):
        # ironic looks up [bittorrent-redfish]verify_ca: with no such
        # group, validation raised NoSuchOptError.
        node = self._redfish_node(create=True)
        with task_manager.acquire(self.context, node.uuid,
                                  shared=True) as task:
            task.driver.power.validate(task)
            task.driver.management.validate(task)
            self.assertIs(True, redfish_utils.parse_driver_info(
                task.node)['verify_ca'])

    def test_redfish_ca_bundle_follows_the_redfish_group(self):
        bundle = self.useFixture(fixtures.TempDir()).path
        self.config(verify_ca=bundle, group='redfish')
        hardware.BitTorrentRedfishHardware()
        node = self._redfish_node()
        self.assertEqual(bundle,
                         redfish_utils.parse_driver_info(node)['verify_ca'])
        # driver_info still wins.
        node = self._redfish_node(redfish_verify_ca=False)
        self.assertIs(False,
                      redfish_utils.parse_driver_info(node)['verify_ca'])


class ConfigGeneratorTestCase(unittest.TestCase):
    # Not on ironic's test base, which forbids subprocesses.

    def test_sample_config_documents_the_group(self):
        out = subprocess.run(
            [OSLO_CONFIG_GENERATOR, '--namespace', 'ironic_bt'],
            check=True, capture_output=True, text=True, timeout=120).stdout
        self.assertIn('[bittorrent]', out)
        self.assertIn('[bittorrent-redfish]', out)
        for option in ('data_dir', 'advertise_host', 'tracker_url',
                       'publication_check_interval', 'stall_timeout'):
            self.assertIn('#%s = ' % option, out)
