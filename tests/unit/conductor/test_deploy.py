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

"""Tests for the bittorrent deploy interface, on ironic's own test base."""

import base64
import hashlib
import json
import os
from unittest import mock

from cryptography.hazmat.primitives import serialization
from cryptography import x509
from ironic.common import exception
from ironic.common import states
from ironic.conductor import deployments
from ironic.conductor import steps as conductor_steps
from ironic.conductor import task_manager
from ironic.drivers.modules import agent
from ironic.drivers.modules import agent_base
from ironic.drivers.modules import agent_client
from ironic.drivers.modules import boot_mode_utils
from ironic.drivers.modules import deploy_utils
from ironic.drivers.modules import fake
from ironic.drivers.modules.storage import noop as noop_storage
from ironic.drivers import utils as driver_utils
from ironic.tests.unit.objects import utils as obj_utils
from oslo_config import cfg

from ironic_bt.common import certs
from ironic_bt.common import torrent
from ironic_bt import deploy
from ironic_bt import exception as bt_exception
from ironic_bt import publisher
from tests.unit.conductor import base
from tests.unit.conductor import test_publisher

CONF = cfg.CONF
SHA256 = 'ab' * 32
WEB_SEED = 'http://198.18.0.1:8080/bittorrent/%s.img' % ('12' * 20)
IMAGE_SOURCE = 'http://images.example.com/img/image.raw?sig=secret'
INSTANCE_INFO = {
    'image_source': IMAGE_SOURCE,
    'image_disk_format': 'raw',
    'image_os_hash_algo': 'sha256',
    'image_os_hash_value': SHA256,
}
DRIVER_INFO = {
    'deploy_kernel': 'http://images.example.com/ipa.kernel',
    'deploy_ramdisk': 'http://images.example.com/ipa.initramfs',
    'deploy_forces_oob_reboot': True,
}
STEP = {'interface': 'deploy', 'step': 'write_image_bittorrent',
        'priority': 80, 'args': {}}


def step(name, priority, argsinfo=None):
    return {'interface': 'deploy', 'step': name, 'priority': priority,
            'abortable': True, 'argsinfo': argsinfo}


class DeployTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.config(enabled_deploy_interfaces=['direct', 'bittorrent'])
        self.image = base.make_image(self.tmp)
        self.meta = torrent.build(self.image)
        self.node = obj_utils.create_test_node(
            self.context,
            deploy_interface='bittorrent',
            boot_interface='fake',
            network_interface='noop',
            storage_interface='noop',
            instance_info=dict(INSTANCE_INFO),
            driver_info=dict(DRIVER_INFO),
            driver_internal_info={'agent_url': 'http://198.18.0.2:9999',
                                  'is_whole_disk_image': True})
        self.ports = [obj_utils.create_test_port(self.context,
                                                 node_id=self.node.id)]
        self.publication = publisher.Publication(
            meta=self.meta,
            trackers=['http://198.18.0.1:6969/announce?node=%s'
                      % self.node.uuid],
            peers=['198.18.0.1:6881'],
            web_seeds=[WEB_SEED])

    def update_node(self, **fields):
        for name, value in fields.items():
            setattr(self.node, name, value)
        self.node.save()

    def wait_on_write_step(self):
        """Put the node where the agent runs write_image_bittorrent."""
        self.update_node(provision_state=states.DEPLOYWAIT,
                         target_provision_state=states.ACTIVE,
                         deploy_step=STEP)
        self.set_info('driver_internal_info',
                      bittorrent_info_hash=self.meta.info_hash)

    def agent_writes(self):
        """Put the node where its agent writes, as in a real deploy.

        Ironic cached the agent's steps before the write step started.
        """
        self.wait_on_write_step()
        self.set_info('driver_internal_info',
                      agent_url='https://198.18.0.2:9999',
                      agent_cached_deploy_steps={'deploy': [STEP]})

    def set_info(self, field, **values):
        info = dict(getattr(self.node, field))
        info.update(values)
        self.update_node(**{field: info})

    def expected_args(self, **overrides):
        args = {
            'torrent': base64.standard_b64encode(self.meta.data).decode(),
            'trackers': self.publication.trackers,
            'peers': self.publication.peers,
            'image_sha256': SHA256,
            'listen_port': 6881,
            'linger_timeout': 300,
            'progress_interval': 10,
            'stall_timeout': 300,
            'web_seeds': [WEB_SEED],
            'web_seed_delay': 5.0,
            'unreachable_timeout': 60,
        }
        args.update(overrides)
        return {'interface': 'deploy', 'step': 'write_image_bittorrent',
                'args': args}


class StepsTestCase(DeployTestCase):

    def test_get_properties(self):
        self.assertEqual(
            {'deploy_kernel', 'deploy_ramdisk', 'deploy_forces_oob_reboot',
             'agent_verify_ca'},
            set(deploy.BitTorrentDeploy().get_properties()))

    def test_out_of_band_steps(self):
        with task_manager.acquire(self.context, self.node.uuid) as task:
            steps = task.driver.deploy.get_deploy_steps(task)
        self.assertEqual(
            [step('deploy', 100),
             step('write_image_bittorrent', 80, deploy.STEP_ARGSINFO),
             step('prepare_instance_boot', 60), step('tear_down_agent', 40),
             step('switch_to_tenant_network', 30), step('boot_instance', 20)],
            sorted(steps, key=lambda s: -s['priority']))

    def test_agent_step_is_shadowed(self):
        # What the agent reports: our in-band step and IPA's write_image,
        # both with priority 0.
        agent_steps = [
            {'interface': 'deploy', 'step': 'write_image_bittorrent',
             'priority': 0, 'reboot_requested': False, 'argsinfo': {}},
            {'interface': 'deploy', 'step': 'write_image', 'priority': 0,
             'reboot_requested': False},
        ]
        self.set_info('driver_internal_info',
                      agent_cached_deploy_steps={'deploy': agent_steps})
        with task_manager.acquire(self.context, self.node.uuid) as task:
            steps = task.driver.deploy.get_deploy_steps(task)
            self.assertEqual(
                [80], [s['priority'] for s in steps
                       if s['step'] == 'write_image_bittorrent'])
            conductor_steps.set_node_deployment_steps(task)
            self.assertEqual(
                [('deploy', 100), ('write_image_bittorrent', 80),
                 ('prepare_instance_boot', 60), ('tear_down_agent', 40),
                 ('switch_to_tenant_network', 30), ('boot_instance', 20)],
                [(s['step'], s['priority']) for s in
                 task.node.driver_internal_info['deploy_steps']])

    def test_deploy_template_sets_the_step_arguments(self):
        # A flavor requires the trait; Nova puts it in instance_info, and
        # ironic applies the template of the same name.
        obj_utils.create_test_deploy_template(
            self.context, name='CUSTOM_BITTORRENT_BATCH',
            steps=[{'interface': 'deploy', 'step': STEP['step'],
                    'args': {'linger_timeout': 900, 'stall_timeout': 600},
                    'priority': 80}])
        self.set_info('instance_info', traits=['CUSTOM_BITTORRENT_BATCH'])
        with task_manager.acquire(self.context, self.node.uuid) as task:
            conductor_steps.set_node_deployment_steps(task)
            steps = task.node.driver_internal_info['deploy_steps']
        self.assertEqual(
            [{'linger_timeout': 900, 'stall_timeout': 600}],
            [s['args'] for s in steps if s['step'] == STEP['step']])

    def test_deploy_template_with_an_unknown_argument_is_refused(self):
        obj_utils.create_test_deploy_template(
            self.context, name='CUSTOM_BITTORRENT_BATCH',
            steps=[{'interface': 'deploy', 'step': STEP['step'],
                    'args': {'linger': 900}, 'priority': 80}])
        self.set_info('instance_info', traits=['CUSTOM_BITTORRENT_BATCH'])
        with task_manager.acquire(self.context, self.node.uuid) as task:
            error = self.assertRaises(
                exception.InvalidParameterValue,
                conductor_steps.set_node_deployment_steps, task)
        self.assertIn('linger', str(error))

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(publisher.Publisher, 'publication', autospec=True)
    def test_execute_passes_the_template_arguments(self, publication_mock,
                                                   execute_mock):
        publication_mock.return_value = self.publication
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.execute_deploy_step(
                task, dict(STEP, args={'linger_timeout': 0,
                                       'stall_timeout': '45'}))
            execute_mock.assert_called_once_with(
                mock.ANY, self.expected_args(linger_timeout=0,
                                             stall_timeout=45),
                task.node, mock.ANY)

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(publisher.Publisher, 'publish', autospec=True)
    @mock.patch.object(publisher.Publisher, 'publication', autospec=True)
    def test_bad_template_argument_fails_before_publishing(
            self, publication_mock, publish_mock, execute_mock):
        self.set_info('instance_info', traits=['CUSTOM_BITTORRENT_BATCH'])
        for value in (5, -1, 'soon', True, 30.5, None):
            with task_manager.acquire(self.context, self.node.uuid) as task:
                error = self.assertRaises(
                    exception.InvalidParameterValue,
                    task.driver.deploy.write_image_bittorrent, task,
                    stall_timeout=value)
            self.assertIn(self.node.uuid, str(error))
            self.assertIn('stall_timeout=%r' % (value,), str(error))
            self.assertIn('at least 10', str(error))
            self.assertIn('CUSTOM_BITTORRENT_BATCH', str(error))
        publication_mock.assert_not_called()
        publish_mock.assert_not_called()
        execute_mock.assert_not_called()

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(publisher.Publisher, 'publication', autospec=True)
    def test_execute_runs_the_out_of_band_step(self, publication_mock,
                                               execute_mock):
        # With the agent's step cached, the conductor still runs ours, which
        # sends the arguments; the agent's is never started on its own.
        self.set_info('driver_internal_info', agent_cached_deploy_steps={
            'deploy': [{'interface': 'deploy',
                        'step': 'write_image_bittorrent', 'priority': 0}]})
        publication_mock.return_value = self.publication
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            self.assertEqual(
                states.DEPLOYWAIT,
                task.driver.deploy.execute_deploy_step(task, STEP))
            execute_mock.assert_called_once_with(
                mock.ANY, self.expected_args(), task.node, mock.ANY)


@mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                   autospec=True)
@mock.patch.object(publisher.Publisher, 'publish', autospec=True)
@mock.patch.object(publisher.Publisher, 'publication', autospec=True)
@mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
class WriteImageTestCase(DeployTestCase):

    def setUp(self):
        super().setUp()
        self.cached = os.path.join(self.tmp, 'cache', 'disk')

    def test_write_image(self, cache_mock, publication_mock, publish_mock,
                         execute_mock):
        cache_mock.return_value = (IMAGE_SOURCE, self.cached, 'raw')
        publication_mock.return_value = None
        publish_mock.return_value = self.publication
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            self.assertEqual(
                states.DEPLOYWAIT,
                task.driver.deploy.write_image_bittorrent(task))
            execute_mock.assert_called_once_with(
                mock.ANY, self.expected_args(), task.node, mock.ANY)
            self.assertEqual(
                [port.uuid for port in self.ports],
                [port.uuid for port in execute_mock.call_args.args[3]])
            cache_mock.assert_called_once_with(
                task.context, task.node, force_raw=True,
                expected_format='raw', expected_checksum=SHA256,
                expected_checksum_algo='sha256')
            publish_mock.assert_called_once_with(
                self.publisher, self.node.uuid, self.cached,
                name='image.raw')
        self.node.refresh()
        self.assertEqual(self.meta.info_hash,
                         self.node.driver_internal_info[deploy.INFO_HASH])

    def test_write_image_reuses_publication(self, cache_mock,
                                            publication_mock, publish_mock,
                                            execute_mock):
        publication_mock.return_value = self.publication
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.write_image_bittorrent(task)
            execute_mock.assert_called_once_with(
                mock.ANY, self.expected_args(), task.node, mock.ANY)
        publication_mock.assert_called_once_with(self.publisher,
                                                 self.node.uuid)
        cache_mock.assert_not_called()
        publish_mock.assert_not_called()

    def test_write_image_converted_image_and_options(
            self, cache_mock, publication_mock, publish_mock, execute_mock):
        # A qcow2 checksum says nothing about the raw image written.
        # (A config drive goes sealed: RealPublisherTestCase.)
        self.set_info('instance_info', image_disk_format='qcow2')
        self.config(group='bittorrent', agent_listen_port=7000,
                    linger_timeout=30, progress_interval=2, stall_timeout=60)
        publication_mock.return_value = self.publication
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.write_image_bittorrent(task)
            execute_mock.assert_called_once_with(
                mock.ANY,
                self.expected_args(image_sha256=None, listen_port=7000,
                                   linger_timeout=30,
                                   progress_interval=2, stall_timeout=60),
                task.node, mock.ANY)

    def test_write_image_md5_checksum(self, cache_mock, publication_mock,
                                      publish_mock, execute_mock):
        self.set_info('instance_info', image_os_hash_algo='md5',
                      image_os_hash_value='0' * 32)
        publication_mock.return_value = self.publication
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.write_image_bittorrent(task)
            execute_mock.assert_called_once_with(
                mock.ANY, self.expected_args(image_sha256=None), task.node,
                mock.ANY)

    def test_write_image_publish_fails(self, cache_mock, publication_mock,
                                       publish_mock, execute_mock):
        cache_mock.return_value = (IMAGE_SOURCE, self.cached, 'raw')
        publication_mock.return_value = None
        publish_mock.side_effect = bt_exception.ImagePublishFailed(
            image=self.cached, node=self.node.uuid, reason='boom')
        with task_manager.acquire(self.context, self.node.uuid) as task:
            self.assertRaises(bt_exception.ImagePublishFailed,
                              task.driver.deploy.write_image_bittorrent,
                              task)
        execute_mock.assert_not_called()

    @mock.patch.object(noop_storage.NoopStorage, 'should_write_image',
                       autospec=True, return_value=False)
    def test_write_image_boot_from_volume(self, should_write_mock,
                                          cache_mock, publication_mock,
                                          publish_mock, execute_mock):
        with task_manager.acquire(self.context, self.node.uuid) as task:
            self.assertIsNone(
                task.driver.deploy.write_image_bittorrent(task))
        publication_mock.assert_not_called()
        execute_mock.assert_not_called()

    @mock.patch.object(agent.CustomAgentDeploy, 'prepare', autospec=True)
    def test_prepare_publishes(self, prepare_mock, cache_mock,
                               publication_mock, publish_mock, execute_mock):
        cache_mock.return_value = (IMAGE_SOURCE, self.cached, 'raw')
        publish_mock.return_value = self.publication
        self.update_node(provision_state=states.DEPLOYING)
        self.set_info('driver_internal_info',
                      bittorrent_result={'size': 1})
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.prepare(task)
            prepare_mock.assert_called_once_with(task.driver.deploy, task)
        # A new deploy caches and publishes again, even if the node holds
        # a publication: the image may have changed.
        publication_mock.assert_not_called()
        publish_mock.assert_called_once_with(
            self.publisher, self.node.uuid, self.cached, name='image.raw')
        self.node.refresh()
        self.assertEqual(self.meta.info_hash,
                         self.node.driver_internal_info[deploy.INFO_HASH])
        self.assertNotIn(deploy.RESULT, self.node.driver_internal_info)
        execute_mock.assert_not_called()

    @mock.patch.object(agent.CustomAgentDeploy, 'prepare', autospec=True)
    def test_prepare_takeover(self, prepare_mock, cache_mock,
                              publication_mock, publish_mock, execute_mock):
        for state in (states.ACTIVE, states.ADOPTING):
            self.update_node(provision_state=state)
            with task_manager.acquire(self.context, self.node.uuid) as task:
                task.driver.deploy.prepare(task)
        self.assertEqual(2, prepare_mock.call_count)
        cache_mock.assert_not_called()
        publish_mock.assert_not_called()


class GlanceInstanceInfoTestCase(DeployTestCase):
    """Nova hands ironic a Glance image ID; its checksums come from Glance."""

    GLANCE_ID = '0d8d4b4b-3b4e-4f2c-9c1a-2f5f4f0e8a11'

    @mock.patch('ironic.common.image_service.GlanceImageService.show',
                autospec=True)
    def test_glance_metadata_recorded(self, show_mock):
        show_mock.return_value = {
            'checksum': None, 'os_hash_algo': 'sha256',
            'os_hash_value': 'ab' * 32, 'disk_format': 'raw',
            'container_format': 'bare', 'properties': {}}
        self.update_node(instance_info={'image_source': self.GLANCE_ID})
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy._update_instance_info(task)
        show_mock.assert_called_once_with(mock.ANY, self.GLANCE_ID)
        self.node.refresh()
        i_info = self.node.instance_info
        self.assertEqual('sha256', i_info['image_os_hash_algo'])
        self.assertEqual('ab' * 32, i_info['image_os_hash_value'])
        self.assertEqual('raw', i_info['image_disk_format'])
        # The agent is told the sha256 the disk must have.
        self.assertEqual('ab' * 32, deploy.image_sha256(self.node))

    @mock.patch('ironic.common.image_service.GlanceImageService.show',
                autospec=True)
    def test_glance_hash_in_the_properties(self, show_mock):
        # What ironic's Glance service returns with openstacksdk: the
        # SDK's Image calls them hash_algo and hash_value.
        show_mock.return_value = {
            'checksum': 'cd' * 16, 'os_hash_algo': None,
            'os_hash_value': None, 'disk_format': 'raw',
            'container_format': 'bare',
            'properties': {'hash_algo': 'sha256', 'hash_value': 'ef' * 32}}
        self.update_node(instance_info={'image_source': self.GLANCE_ID})
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy._update_instance_info(task)
        self.node.refresh()
        self.assertEqual('ef' * 32, deploy.image_sha256(self.node))

    @mock.patch('ironic.common.image_service.GlanceImageService.show',
                autospec=True)
    def test_http_image_left_alone(self, show_mock):
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy._update_instance_info(task)
        show_mock.assert_not_called()
        self.node.refresh()
        self.assertEqual(INSTANCE_INFO, self.node.instance_info)


def _public_key(certificate_pem):
    return x509.load_pem_x509_certificate(
        certificate_pem.encode()).public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo)


@mock.patch.object(agent_client.AgentClient, '_command', autospec=True)
class RealPublisherTestCase(DeployTestCase):
    """The step and clean-up with the real seeder and tracker."""

    def setUp(self):
        super().setUp()
        # What the agent's bittorrent.swarm_key answers; it keeps the key.
        self.agent_key = certs.new_private_key()
        self.swarm_key_reply = {
            'command_status': 'SUCCEEDED', 'command_error': None,
            'command_result': {
                'public_key': certs.public_key_pem(self.agent_key)}}

    def write_step_args(self, cache_mock, execute_mock, command_mock,
                        argsinfo=None, web_server=False):
        """Run the write step; return the arguments the agent gets.

        :param argsinfo: the arguments the agent's step reported taking
            (its cached deploy steps), if any.
        :param web_server: the conductor has [deploy]http_root/http_url.
        """
        if web_server:
            self.config(group='deploy',
                        http_root=os.path.join(self.tmp, 'www'),
                        http_url='http://127.0.0.1:8080/')
        if argsinfo is not None:
            self.set_info('driver_internal_info', agent_cached_deploy_steps={
                'deploy': [{'step': deploy.STEP, 'priority': 0,
                            'argsinfo': dict.fromkeys(argsinfo, {})}]})
        cache_mock.return_value = (IMAGE_SOURCE, self.image, 'raw')
        execute_mock.return_value = {'command_status': 'RUNNING'}
        command_mock.return_value = self.swarm_key_reply
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.write_image_bittorrent(task)
        return execute_mock.call_args.args[1]['args']

    def swarm_key_fails(self, cache_mock, execute_mock):
        """Run the write step whose key command fails; the error raised.

        The agent's step is never started.
        """
        cache_mock.return_value = (IMAGE_SOURCE, self.image, 'raw')
        with task_manager.acquire(self.context, self.node.uuid) as task:
            exc = self.assertRaises(
                bt_exception.SwarmKeyFailed,
                task.driver.deploy.write_image_bittorrent, task)
        execute_mock.assert_not_called()
        return exc

    @mock.patch.object(agent.CustomAgentDeploy, 'clean_up', autospec=True)
    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_publish_deploy_clean_up(self, cache_mock, execute_mock,
                                     clean_up_mock, command_mock):
        args = self.write_step_args(cache_mock, execute_mock, command_mock)
        command_mock.assert_called_once_with(
            mock.ANY, node=mock.ANY, method='bittorrent.swarm_key',
            params={}, wait=True)
        # The node gets a certificate for the key it made, from the
        # authority the seeder trusts, and nothing secret.
        certs.Credentials(args['ssl_ca'], args['ssl_certificate'],
                          certs.private_key_pem(self.agent_key)).check()
        # The root is the image's, derived from the deployment's
        # authority: any conductor holding it derives the same key.
        directory = os.path.join(self.tmp, 'authority')
        root = certs.Authority.load(
            os.path.join(directory, 'ca.pem'),
            os.path.join(directory, 'ca.key')).for_image(
                torrent.load(base64.b64decode(args['torrent'])).info_hash)
        self.assertEqual(_public_key(root.certificate),
                         _public_key(args['ssl_ca']))
        with open(os.path.join(directory, 'ca.pem')) as f:
            self.assertNotEqual(_public_key(f.read()),
                                _public_key(args['ssl_ca']))
        self.assertNotIn('PRIVATE KEY', repr(args))
        meta = torrent.load(base64.b64decode(args['torrent'], validate=True))
        self.assertEqual(self.meta, meta)
        tracker, = args['trackers']
        self.assertTrue(tracker.endswith('?node=%s' % self.node.uuid))
        # The tracker serves the node with the key sealed for its agent's
        # key, and nobody without it.
        key = certs.unseal(self.agent_key, args['sealed_announce_key'],
                           certs.ANNOUNCE_KEY).decode()
        self.assertNotIn(key, repr(args))
        self.assertNotIn(b'failure reason', test_publisher.announce(
            tracker + '&auth=' + key, meta))
        self.assertIn(b'announce key missing or wrong',
                      test_publisher.announce(tracker, meta)[
                          b'failure reason'])
        status = self.publisher.status()
        self.assertEqual(['127.0.0.1:%d' % status['seeder_port']],
                         args['peers'])
        self.assertEqual(2, os.stat(self.image).st_nlink)

        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.clean_up(task)
            clean_up_mock.assert_called_once_with(task.driver.deploy, task)
        self.assertEqual([], self.publisher.status()['images'])
        self.assertEqual(1, os.stat(self.image).st_nlink)
        self.assertIn(b'failure reason', test_publisher.announce(
            tracker + '&auth=' + key, meta))
        self.node.refresh()
        self.assertNotIn(deploy.INFO_HASH, self.node.driver_internal_info)

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_conductor_web_seed_and_torrent_by_url(self, cache_mock,
                                                   execute_mock, command_mock):
        # The agent's step takes a torrent URL (this ramdisk is recent).
        args = self.write_step_args(
            cache_mock, execute_mock, command_mock,
            argsinfo=['torrent', 'torrent_url'], web_server=True)
        # The torrent by URL, checked against its SHA-256: IPA logs
        # every argument.
        publication = self.publisher.publication(self.node.uuid)
        self.assertNotIn('torrent', args)
        self.assertEqual(hashlib.sha256(publication.meta.data).hexdigest(),
                         args['torrent_sha256'])
        self.assertEqual('http://127.0.0.1:8080/bittorrent/%s.torrent'
                         % publication.info_hash, args['torrent_url'])
        self.assertEqual([], args['web_seeds'])
        sealed = json.loads(certs.unseal(self.agent_key,
                                         args['sealed_web_seeds'],
                                         certs.WEB_SEEDS))
        self.assertEqual(
            self.publisher.publication(self.node.uuid).web_seeds, sealed)
        self.assertNotIn(sealed[0], repr(args))

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_older_agent_gets_the_torrent_inline(self, cache_mock,
                                                 execute_mock, command_mock):
        args = self.write_step_args(cache_mock, execute_mock, command_mock,
                                    argsinfo=['torrent'], web_server=True)
        self.assertNotIn('torrent_url', args)
        meta = torrent.load(base64.b64decode(args['torrent'], validate=True))
        self.assertEqual(self.meta, meta)

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_agent_failing_the_key_command(self, cache_mock, execute_mock,
                                           command_mock):
        command_mock.return_value = {
            'command_status': 'FAILED', 'command_result': None,
            'command_error': 'No space left on device'}
        exc = self.swarm_key_fails(cache_mock, execute_mock)
        self.assertIn('the agent failed bittorrent.swarm_key: No space left '
                      'on device', str(exc))

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_agent_without_the_extension(self, cache_mock, execute_mock,
                                         command_mock):
        command_mock.side_effect = exception.AgentAPIError(
            node=self.node.uuid, status=404,
            error='Extension bittorrent not found')
        exc = self.swarm_key_fails(cache_mock, execute_mock)
        self.assertIn(self.node.uuid, str(exc))
        self.assertIn('"bittorrent" IPA extension', str(exc))
        self.assertIn('[bittorrent]ssl', str(exc))

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_plain_torrent_when_ssl_is_off(self, cache_mock, execute_mock,
                                           command_mock):
        self.config(group='bittorrent', ssl=False)
        args = self.write_step_args(cache_mock, execute_mock, command_mock)
        command_mock.assert_not_called()
        self.assertNotIn('ssl_ca', args)
        self.assertNotIn('ssl_certificate', args)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'authority')))

    def check_sealed_configdrive(self, args, configdrive):
        # Only the agent's key opens it; the step (which IPA and ironic
        # log) holds no byte of the config drive in the clear.
        self.assertNotIn('configdrive', args)
        self.assertNotIn(configdrive, json.dumps(args))
        self.assertEqual(certs.public_key_pem(self.agent_key),
                         args['sealed_for'])
        self.assertEqual(configdrive.encode(), certs.unseal(
            self.agent_key, args['sealed_configdrive'], certs.CONFIGDRIVE))
        self.assertRaises(certs.CertificateError, certs.unseal,
                          certs.new_private_key(),
                          args['sealed_configdrive'], certs.CONFIGDRIVE)

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_configdrive_sealed_for_the_agent(self, cache_mock, execute_mock,
                                              command_mock):
        # Nova's config drive: gzipped, base64; it holds the admin password.
        configdrive = base64.b64encode(b'admin_pass: s3cret' * 64).decode()
        self.set_info('instance_info', configdrive=configdrive)
        args = self.write_step_args(cache_mock, execute_mock, command_mock)
        self.check_sealed_configdrive(args, configdrive)
        self.assertIn('ssl_certificate', args)

    @mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                       autospec=True)
    @mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
    def test_configdrive_sealed_with_ssl_off(self, cache_mock, execute_mock,
                                             command_mock):
        self.config(group='bittorrent', ssl=False)
        configdrive = 'https://swift.example.com/v1/configdrive?sig=abc'
        self.set_info('instance_info', configdrive=configdrive)
        args = self.write_step_args(cache_mock, execute_mock, command_mock)
        self.assertEqual(1, command_mock.call_count)
        self.assertNotIn('ssl_certificate', args)
        self.check_sealed_configdrive(args, configdrive)


@mock.patch.object(deploy_utils, 'destroy_http_instance_images',
                   autospec=True)
@mock.patch.object(deploy_utils, 'try_set_boot_device', autospec=True)
@mock.patch.object(fake.FakeBoot, 'prepare_instance', autospec=True)
@mock.patch.object(agent_client.AgentClient, 'install_bootloader',
                   autospec=True)
@mock.patch.object(agent_client.AgentClient, 'get_partition_uuids',
                   autospec=True)
@mock.patch.object(boot_mode_utils, 'get_boot_mode', autospec=True)
class PrepareInstanceBootTestCase(DeployTestCase):
    """The direct interface's boot preparation, after our write step."""

    def test_uefi(self, boot_mode_mock, uuids_mock, bootloader_mock,
                  prepare_mock, boot_device_mock, destroy_mock):
        boot_mode_mock.return_value = 'uefi'
        uuids_mock.return_value = {'command_result': {
            'root uuid': '0x5d0f7a21'}}
        bootloader_mock.return_value = {'command_status': 'SUCCEEDED'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.prepare_instance_boot(task)
            bootloader_mock.assert_called_once_with(
                mock.ANY, task.node, root_uuid='0x5d0f7a21',
                efi_system_part_uuid=None, prep_boot_part_uuid=None,
                target_boot_mode='uefi', software_raid=False)
            boot_device_mock.assert_called_once_with(task, 'disk',
                                                     persistent=True)
            prepare_mock.assert_called_once_with(task.driver.boot, task)
        self.node.refresh()
        self.assertEqual('0x5d0f7a21', self.node.driver_internal_info[
            'root_uuid_or_disk_id'])
        # The node's cached copy goes; the publication keeps the image.
        destroy_mock.assert_called_once_with(mock.ANY)

    def test_bios(self, boot_mode_mock, uuids_mock, bootloader_mock,
                  prepare_mock, boot_device_mock, destroy_mock):
        boot_mode_mock.return_value = 'bios'
        uuids_mock.return_value = {'command_result': {}}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.prepare_instance_boot(task)
            boot_device_mock.assert_called_once_with(task, 'disk',
                                                     persistent=True)
            prepare_mock.assert_called_once_with(task.driver.boot, task)
        bootloader_mock.assert_not_called()


@mock.patch.object(deployments, 'continue_node_deploy', autospec=True)
@mock.patch.object(agent_client.AgentClient, 'get_commands_status',
                   autospec=True)
@mock.patch.object(publisher.Publisher, 'release', autospec=True)
class PostStepHookTestCase(DeployTestCase):
    """The agent's result, through ironic's own step processing."""

    def setUp(self):
        super().setUp()
        self.wait_on_write_step()
        self.result = {
            'device': '/dev/sda', 'size': 3 * base.MiB,
            'info_hash': self.meta.info_hash, 'sha256': SHA256,
            'downloaded_bytes': 2 * base.MiB,
            'downloaded_from_seeder_bytes': base.MiB // 2,
            'uploaded_bytes': base.MiB, 'zero_bytes': base.MiB,
            'zero_pieces': 4, 'seconds': 4.5,
            'download_seconds': 3.0, 'verify_seconds': 1.0,
            'linger_seconds': 0.5, 'hash_failures': 0,
            'downloaded_from_web_seed_bytes': base.MiB // 4,
            'resumed_bytes': base.MiB // 8,
        }

    def finish(self, result):
        command_result = {'deploy_step': STEP}
        if result is not None:
            command_result['deploy_result'] = result
        commands = [{'command_name': 'execute_deploy_step',
                     'command_status': 'SUCCEEDED',
                     'command_result': command_result}]
        with task_manager.acquire(self.context, self.node.uuid) as task:
            with mock.patch.object(type(task.driver.deploy), 'clean_up',
                                   autospec=True) as clean_up_mock:
                self.get_commands_mock.return_value = commands
                task.driver.deploy.process_next_step(task, 'deploy')
                self.clean_up_called = clean_up_mock.called
        self.node.refresh()

    def test_success(self, release_mock, commands_mock, continue_mock):
        self.get_commands_mock = commands_mock
        self.finish(self.result)
        continue_mock.assert_called_once_with(mock.ANY)
        self.assertEqual(states.DEPLOYING, self.node.provision_state)
        self.assertEqual(
            {'downloaded_bytes': 2 * base.MiB,
             'downloaded_from_seeder_bytes': base.MiB // 2,
             'uploaded_bytes': base.MiB, 'seconds': 4.5, 'sha256': SHA256,
             'size': 3 * base.MiB, 'hash_failures': 0,
             'downloaded_from_web_seed_bytes': base.MiB // 4,
             'resumed_bytes': base.MiB // 8},
            self.node.driver_internal_info[deploy.RESULT])
        # The node no longer needs the image; others may still.
        release_mock.assert_called_once_with(self.publisher, self.node.uuid)

    @mock.patch.object(driver_utils, 'collect_ramdisk_logs', autospec=True)
    def test_checksum_mismatch(self, logs_mock, release_mock, commands_mock,
                               continue_mock):
        self.get_commands_mock = commands_mock
        self.finish(dict(self.result, sha256='cd' * 32))
        continue_mock.assert_not_called()
        self.assertEqual(states.DEPLOYFAIL, self.node.provision_state)
        self.assertIn(
            'The image written to node %s does not match the requested '
            'image: the agent read sha256 %s back from the disk, but '
            'instance_info image_os_hash_value is %s.'
            % (self.node.uuid, 'cd' * 32, SHA256), self.node.last_error)
        self.assertTrue(self.clean_up_called)
        self.assertEqual('cd' * 32, self.node.driver_internal_info[
            deploy.RESULT]['sha256'])
        release_mock.assert_called_with(self.publisher, self.node.uuid)

    @mock.patch.object(driver_utils, 'collect_ramdisk_logs', autospec=True)
    def test_no_result_with_known_checksum(self, logs_mock, release_mock,
                                           commands_mock, continue_mock):
        self.get_commands_mock = commands_mock
        self.finish(None)
        self.assertEqual(states.DEPLOYFAIL, self.node.provision_state)
        self.assertIn('The agent on node %s finished deploy step '
                      'write_image_bittorrent, but reported no '
                      'deploy_result' % self.node.uuid, self.node.last_error)
        continue_mock.assert_not_called()
        release_mock.assert_called_with(self.publisher, self.node.uuid)

    def test_no_result_without_checksum(self, release_mock, commands_mock,
                                        continue_mock):
        self.set_info('instance_info', image_disk_format='qcow2')
        self.get_commands_mock = commands_mock
        self.finish(None)
        continue_mock.assert_called_once_with(mock.ANY)
        self.assertNotIn(deploy.RESULT, self.node.driver_internal_info)
        release_mock.assert_called_once_with(self.publisher, self.node.uuid)

    def test_unknown_checksum_accepts_any(self, release_mock, commands_mock,
                                          continue_mock):
        self.set_info('instance_info', image_disk_format='qcow2')
        self.get_commands_mock = commands_mock
        self.finish(dict(self.result, sha256='cd' * 32))
        continue_mock.assert_called_once_with(mock.ANY)
        self.assertEqual('cd' * 32, self.node.driver_internal_info[
            deploy.RESULT]['sha256'])


@mock.patch.object(agent_base.HeartbeatMixin, 'heartbeat', autospec=True)
@mock.patch.object(publisher.Publisher, 'release', autospec=True)
@mock.patch.object(publisher.Publisher, 'publish', autospec=True)
@mock.patch.object(publisher.Publisher, 'publication', autospec=True)
@mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
class HeartbeatTestCase(DeployTestCase):

    def setUp(self):
        super().setUp()
        self.wait_on_write_step()
        self.cached = os.path.join(self.tmp, 'cache', 'disk')

    def heartbeat(self):
        with task_manager.acquire(self.context, self.node.uuid,
                                  shared=True) as task:
            interface = task.driver.deploy
            interface.heartbeat(task, 'https://198.18.0.2:9999', '13.0.0')
            return interface, task

    def test_publishes_again_after_restart(self, cache_mock,
                                           publication_mock, publish_mock,
                                           release_mock, heartbeat_mock):
        cache_mock.return_value = (IMAGE_SOURCE, self.cached, 'raw')
        publication_mock.return_value = None
        publish_mock.return_value = self.publication
        interface, task = self.heartbeat()
        publish_mock.assert_called_once_with(
            self.publisher, self.node.uuid, self.cached, name='image.raw')
        release_mock.assert_not_called()
        heartbeat_mock.assert_called_once_with(
            interface, task, 'https://198.18.0.2:9999', '13.0.0',
            agent_verify_ca=None, agent_status=None,
            agent_status_message=None)

    def test_still_published(self, cache_mock, publication_mock,
                             publish_mock, release_mock, heartbeat_mock):
        publication_mock.return_value = self.publication
        self.heartbeat()
        cache_mock.assert_not_called()
        publish_mock.assert_not_called()
        heartbeat_mock.assert_called_once_with(
            mock.ANY, mock.ANY, 'https://198.18.0.2:9999', '13.0.0',
            agent_verify_ca=None, agent_status=None,
            agent_status_message=None)

    def test_image_changed(self, cache_mock, publication_mock, publish_mock,
                           release_mock, heartbeat_mock):
        other = torrent.build(base.make_image(self.tmp, 'other', seed=2))
        cache_mock.return_value = (IMAGE_SOURCE, self.cached, 'raw')
        publication_mock.return_value = None
        publish_mock.return_value = publisher.Publication(
            meta=other, trackers=[], peers=[])
        self.heartbeat()
        release_mock.assert_called_once_with(self.publisher, self.node.uuid)
        self.assertEqual(1, heartbeat_mock.call_count)

    def test_publish_failure_does_not_break_heartbeat(
            self, cache_mock, publication_mock, publish_mock, release_mock,
            heartbeat_mock):
        publication_mock.return_value = None
        cache_mock.side_effect = exception.ImageDownloadFailed(
            image_href=IMAGE_SOURCE, reason='gone')
        self.heartbeat()
        publish_mock.assert_not_called()
        self.assertEqual(1, heartbeat_mock.call_count)

    def test_other_step(self, cache_mock, publication_mock, publish_mock,
                        release_mock, heartbeat_mock):
        self.update_node(deploy_step={'interface': 'deploy',
                                      'step': 'prepare_instance_boot',
                                      'priority': 60, 'args': {}})
        self.heartbeat()
        publication_mock.assert_not_called()
        publish_mock.assert_not_called()
        self.assertEqual(1, heartbeat_mock.call_count)


@mock.patch.object(publisher.Publisher, 'release', autospec=True)
class ReleaseTestCase(DeployTestCase):

    def setUp(self):
        super().setUp()
        self.set_info('driver_internal_info',
                      bittorrent_info_hash=self.meta.info_hash,
                      bittorrent_result={'size': 1})

    @mock.patch.object(agent.CustomAgentDeploy, 'clean_up', autospec=True)
    def test_clean_up(self, clean_up_mock, release_mock):
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.clean_up(task)
            clean_up_mock.assert_called_once_with(task.driver.deploy, task)
        release_mock.assert_called_once_with(self.publisher, self.node.uuid)
        self.node.refresh()
        self.assertNotIn(deploy.INFO_HASH, self.node.driver_internal_info)

    @mock.patch.object(agent.CustomAgentDeploy, 'tear_down', autospec=True,
                       return_value=states.DELETED)
    def test_tear_down(self, tear_down_mock, release_mock):
        with task_manager.acquire(self.context, self.node.uuid) as task:
            self.assertEqual(states.DELETED,
                             task.driver.deploy.tear_down(task))
            tear_down_mock.assert_called_once_with(task.driver.deploy, task)
        release_mock.assert_called_once_with(self.publisher, self.node.uuid)
        self.node.refresh()
        self.assertNotIn(deploy.INFO_HASH, self.node.driver_internal_info)
        self.assertNotIn(deploy.RESULT, self.node.driver_internal_info)

    @mock.patch.object(publisher.Publisher, 'nodes', autospec=True)
    def test_periodic_check(self, nodes_mock, release_mock):
        waiting = obj_utils.create_test_node(
            self.context, uuid='00000000-0000-0000-0000-00000000000a',
            provision_state=states.DEPLOYWAIT)
        locked = obj_utils.create_test_node(
            self.context, uuid='00000000-0000-0000-0000-00000000000b',
            provision_state=states.DEPLOYFAIL, reservation='other-conductor')
        deleted = '00000000-0000-0000-0000-00000000000c'
        self.update_node(provision_state=states.DEPLOYFAIL)
        nodes_mock.return_value = [waiting.uuid, locked.uuid, deleted,
                                   self.node.uuid]
        deploy.BitTorrentDeploy()._check_publications(mock.Mock(),
                                                      self.context)
        self.assertEqual(
            [mock.call(self.publisher, deleted),
             mock.call(self.publisher, self.node.uuid)],
            release_mock.call_args_list)
        self.node.refresh()
        self.assertNotIn(deploy.INFO_HASH, self.node.driver_internal_info)


@mock.patch.object(publisher.Publisher, 'serve_shared_tracker',
                   autospec=True)
class SharedTrackerTestCase(DeployTestCase):
    """A tracker other conductors share runs from the conductor's start."""

    def test_started(self, serve_mock):
        deploy.BitTorrentDeploy()._serve_shared_tracker(mock.Mock(),
                                                        self.context)
        serve_mock.assert_called_once_with(self.publisher)

    @mock.patch.object(deploy.LOG, 'error', autospec=True)
    def test_cannot_listen(self, error_mock, serve_mock):
        serve_mock.side_effect = OSError(98, 'Address already in use')
        deploy.BitTorrentDeploy()._serve_shared_tracker(mock.Mock(),
                                                        self.context)
        message = error_mock.call_args[0][0] % error_mock.call_args[0][1]
        self.assertIn('Address already in use', message)
        self.assertIn('[bittorrent]tracker_port', message)

    def test_enabled_only_for_a_shared_builtin_tracker(self, serve_mock):
        enabled = (deploy.BitTorrentDeploy._serve_shared_tracker
                   ._periodic_enabled_resolver)
        self.assertFalse(enabled())
        self.config(group='bittorrent', tracker_secret='s3cret')
        self.assertTrue(enabled())
        self.config(group='bittorrent',
                    tracker_url='http://198.51.100.1:6969/announce')
        self.assertFalse(enabled())
        # A tracker_url that is not valid does not stop the conductor: the
        # check says no, and check_config names it for each node.
        self.cfg_fixture.conf.clear_override('tracker_url',
                                             group='bittorrent')
        self.cfg_fixture.load_raw_values(group='bittorrent',
                                         tracker_url='ftp://tracker/x')
        self.assertFalse(enabled())


@mock.patch.object(deployments, 'continue_node_deploy', autospec=True)
@mock.patch.object(agent_client.AgentClient, 'get_commands_status',
                   autospec=True)
@mock.patch.object(publisher.Publisher, 'forget_stopped', autospec=True)
@mock.patch.object(publisher.Publisher, 'stopped_nodes', autospec=True)
class FinishCheckTestCase(DeployTestCase):
    """The deploy moves on when the agent stops announcing."""

    def setUp(self):
        super().setUp()
        self.agent_writes()

    def check(self):
        started = deploy.BitTorrentDeploy()._check_finished(mock.Mock(),
                                                            self.context)
        for future in started:
            future.result(timeout=30)
        self.node.refresh()

    def command(self, status, **result):
        return [{'command_name': 'execute_deploy_step',
                 'command_status': status,
                 'command_error': result.pop('error', None),
                 'command_result': dict(result, deploy_step=STEP)}]

    def test_finished_step_moves_on(self, stopped_mock, forget_mock,
                                    commands_mock, continue_mock):
        stopped_mock.return_value = [self.node.uuid]
        commands_mock.return_value = self.command(
            'SUCCEEDED', deploy_result={'sha256': SHA256,
                                        'size': 3 * base.MiB})
        self.check()
        stopped_mock.assert_called_once_with(
            self.publisher, CONF.bittorrent.finish_check_window)
        continue_mock.assert_called_once_with(mock.ANY)
        self.assertEqual(states.DEPLOYING, self.node.provision_state)
        self.assertEqual(SHA256, self.node.driver_internal_info[
            deploy.RESULT]['sha256'])
        forget_mock.assert_called_once_with(self.publisher, self.node.uuid)

    def test_running_step_is_asked_again(self, stopped_mock, forget_mock,
                                         commands_mock, continue_mock):
        stopped_mock.return_value = [self.node.uuid]
        commands_mock.return_value = self.command('RUNNING')
        self.check()
        continue_mock.assert_not_called()
        forget_mock.assert_not_called()
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)

    @mock.patch.object(driver_utils, 'collect_ramdisk_logs', autospec=True)
    def test_failed_step_fails_the_deploy(self, logs_mock, stopped_mock,
                                          forget_mock, commands_mock,
                                          continue_mock):
        stopped_mock.return_value = [self.node.uuid]
        commands_mock.return_value = self.command(
            'FAILED', error={'type': 'DeploymentError',
                             'message': 'write to /dev/sda failed: EIO'})
        self.check()
        continue_mock.assert_not_called()
        self.assertEqual(states.DEPLOYFAIL, self.node.provision_state)
        self.assertIn('write to /dev/sda failed: EIO', self.node.last_error)
        forget_mock.assert_called_once_with(self.publisher, self.node.uuid)

    def test_agent_unreachable_fails_like_a_heartbeat(
            self, stopped_mock, forget_mock, commands_mock, continue_mock):
        stopped_mock.return_value = [self.node.uuid]
        commands_mock.side_effect = exception.AgentConnectionFailed(
            reason='connection refused')
        with mock.patch.object(driver_utils, 'collect_ramdisk_logs',
                               autospec=True):
            self.check()
        self.assertEqual(states.DEPLOYFAIL, self.node.provision_state)
        self.assertIn('Failed to process the next deploy step',
                      self.node.last_error)
        self.assertIn('connection refused', self.node.last_error)

    def test_node_elsewhere_is_forgotten(self, stopped_mock, forget_mock,
                                         commands_mock, continue_mock):
        stopped_mock.return_value = [self.node.uuid]
        self.update_node(deploy_step={'interface': 'deploy',
                                      'step': 'deploy', 'priority': 100,
                                      'args': {}})
        self.check()
        commands_mock.assert_not_called()
        forget_mock.assert_called_once_with(self.publisher, self.node.uuid)

    def test_locked_or_deleted_node(self, stopped_mock, forget_mock,
                                    commands_mock, continue_mock):
        deleted = '00000000-0000-0000-0000-00000000000c'
        stopped_mock.return_value = [deleted, self.node.uuid]
        self.update_node(reservation='other-conductor')
        self.check()
        commands_mock.assert_not_called()
        # The locked node is asked again next time; the deleted one not.
        forget_mock.assert_called_once_with(self.publisher, deleted)
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)


@mock.patch.object(deployments, 'continue_node_deploy', autospec=True)
@mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                   autospec=True)
@mock.patch.object(agent_client.AgentClient, 'get_commands_status',
                   autospec=True)
@mock.patch.object(publisher.Publisher, 'publish', autospec=True)
@mock.patch.object(publisher.Publisher, 'publication', autospec=True)
class AgentRestartTestCase(DeployTestCase):
    """An agent that restarts while the write step runs gets it again."""

    def setUp(self):
        super().setUp()
        self.agent_writes()

    def heartbeat(self):
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy._heartbeat_deploy_wait(task)
        self.node.refresh()

    def test_step_started_again(self, publication_mock, publish_mock,
                                commands_mock, execute_mock, continue_mock):
        publication_mock.return_value = self.publication
        # What a freshly started agent reports: no command at all.
        commands_mock.return_value = []
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with mock.patch.object(deploy.LOG, 'warning',
                               autospec=True) as warning_mock:
            self.heartbeat()

        execute_mock.assert_called_once_with(
            mock.ANY, self.expected_args(), mock.ANY, mock.ANY)
        # Not taken for the end of a step that rebooted the agent.
        continue_mock.assert_not_called()
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)
        self.assertIsNone(self.node.last_error)
        self.assertEqual(1, self.node.driver_internal_info[
            deploy.AGENT_RESTARTS])
        message = warning_mock.call_args.args[0] % (
            warning_mock.call_args.args[1])
        self.assertIn(self.node.uuid, message)
        self.assertIn('retry 1 of 3', message)

    def test_step_started_again_with_its_template_arguments(
            self, publication_mock, publish_mock, commands_mock,
            execute_mock, continue_mock):
        self.update_node(deploy_step=dict(STEP,
                                          args={'linger_timeout': 900}))
        publication_mock.return_value = self.publication
        commands_mock.return_value = []
        execute_mock.return_value = {'command_status': 'RUNNING'}
        self.heartbeat()
        execute_mock.assert_called_once_with(
            mock.ANY, self.expected_args(linger_timeout=900), mock.ANY,
            mock.ANY)

    def test_running_step_is_left_alone(self, publication_mock, publish_mock,
                                        commands_mock, execute_mock,
                                        continue_mock):
        commands_mock.return_value = [
            {'command_name': 'execute_deploy_step',
             'command_status': 'RUNNING',
             'command_result': None, 'command_error': None}]
        self.heartbeat()
        execute_mock.assert_not_called()
        self.assertNotIn(deploy.AGENT_RESTARTS,
                         self.node.driver_internal_info)
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)

    @mock.patch.object(driver_utils, 'collect_ramdisk_logs', autospec=True)
    def test_bounded(self, logs_mock, publication_mock, publish_mock,
                     commands_mock, execute_mock, continue_mock):
        self.config(group='bittorrent', agent_restart_retries=2)
        self.set_info('driver_internal_info', bittorrent_agent_restarts=2)
        commands_mock.return_value = []
        self.heartbeat()
        execute_mock.assert_not_called()
        continue_mock.assert_not_called()
        self.assertEqual(states.DEPLOYFAIL, self.node.provision_state)
        self.assertIn('restarted while writing the image 3 times',
                      self.node.last_error)
        self.assertIn('agent_restart_retries allows 2',
                      self.node.last_error)


@mock.patch.object(agent_client.AgentClient, 'execute_deploy_step',
                   autospec=True)
@mock.patch.object(publisher.Publisher, 'publication', autospec=True)
class WebSeedSourcesTestCase(DeployTestCase):

    def run_step(self, publication_mock, execute_mock):
        publication_mock.return_value = self.publication
        execute_mock.return_value = {'command_status': 'RUNNING'}
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.write_image_bittorrent(task)
        return execute_mock.call_args.args[1]['args']['web_seeds']

    def test_off(self, publication_mock, execute_mock):
        self.config(group='bittorrent', web_seed_sources=[])
        self.assertEqual([], self.run_step(publication_mock, execute_mock))

    def test_raw_http_image_source(self, publication_mock, execute_mock):
        url = 'https://images.example/disk.raw?temp_url_sig=abc'
        self.set_info('instance_info', image_source=url,
                      image_disk_format='raw')
        self.config(group='bittorrent',
                    web_seed_sources=['conductor', 'image_source'])
        self.assertEqual([WEB_SEED, url],
                         self.run_step(publication_mock, execute_mock))

    def test_converted_image_source_is_not_a_web_seed(self, publication_mock,
                                                      execute_mock):
        # The bytes behind a qcow2 URL are not the raw image's.
        self.set_info('instance_info',
                      image_source='http://images.example/disk.qcow2',
                      image_disk_format='qcow2')
        self.config(group='bittorrent', web_seed_sources=['image_source'])
        self.assertEqual([], self.run_step(publication_mock, execute_mock))


@mock.patch.object(publisher.Publisher, 'publish', autospec=True)
@mock.patch.object(publisher.Publisher, 'nodes', autospec=True)
@mock.patch.object(deploy_utils, 'cache_instance_image', autospec=True)
class ResumePublicationsTestCase(DeployTestCase):
    """After a restart the conductor seeds again without a heartbeat."""

    def setUp(self):
        super().setUp()
        self.wait_on_write_step()
        self.manager = mock.Mock(spec=['iter_nodes'])
        self.manager.iter_nodes.return_value = [
            (self.node.uuid, self.node.driver, self.node.conductor_group,
             self.node.deploy_step)]

    def run_periodic(self):
        deploy.BitTorrentDeploy()._resume_publications(self.manager,
                                                       self.context)

    def test_seeds_again(self, cache_mock, nodes_mock, publish_mock):
        cached = os.path.join(self.tmp, 'cache', 'disk')
        cache_mock.return_value = (IMAGE_SOURCE, cached, 'raw')
        nodes_mock.return_value = []
        publish_mock.return_value = self.publication
        self.run_periodic()
        self.manager.iter_nodes.assert_called_once_with(
            filters={'provision_state': states.DEPLOYWAIT},
            fields=('deploy_step',))
        publish_mock.assert_called_once_with(
            self.publisher, self.node.uuid, cached, name='image.raw')

    def test_already_seeded_or_other_step(self, cache_mock, nodes_mock,
                                          publish_mock):
        nodes_mock.return_value = [self.node.uuid]
        self.run_periodic()
        nodes_mock.return_value = []
        self.manager.iter_nodes.return_value = [
            (self.node.uuid, self.node.driver, self.node.conductor_group,
             {'interface': 'deploy', 'step': 'deploy'})]
        self.run_periodic()
        publish_mock.assert_not_called()


@mock.patch.object(publisher.Publisher, 'progress', autospec=True)
@mock.patch.object(publisher.Publisher, 'nodes', autospec=True)
class ProgressTestCase(DeployTestCase):
    """The periodic task that shows download progress per node."""

    PROGRESS = {'percent': 66.7, 'left': base.MiB,
                'downloaded': 2 * base.MiB, 'uploaded': 0,
                'seconds_since_seen': 1.5}

    def setUp(self):
        super().setUp()
        self.update_node(provision_state=states.DEPLOYWAIT,
                         deploy_step={'interface': 'deploy',
                                      'step': deploy.STEP, 'priority': 80,
                                      'args': {}})
        self.manager = mock.Mock(spec=['iter_nodes'])
        self.manager.iter_nodes.return_value = [
            (self.node.uuid, self.node.driver, self.node.conductor_group)]

    def run_periodic(self):
        deploy.BitTorrentDeploy()._record_progress(self.manager,
                                                   self.context)
        self.node.refresh()

    def test_recorded(self, nodes_mock, progress_mock):
        nodes_mock.return_value = [self.node.uuid]
        progress_mock.return_value = dict(self.PROGRESS)
        self.run_periodic()
        self.manager.iter_nodes.assert_called_once_with(
            filters={'provision_state': states.DEPLOYWAIT}, fields=())
        self.assertEqual(self.PROGRESS,
                         self.node.driver_internal_info[deploy.PROGRESS])

    def test_never_goes_back(self, nodes_mock, progress_mock):
        nodes_mock.return_value = [self.node.uuid]
        progress_mock.return_value = dict(self.PROGRESS)
        self.run_periodic()
        progress_mock.return_value = dict(self.PROGRESS, percent=33.3,
                                          left=2 * base.MiB)
        self.run_periodic()
        self.assertEqual(self.PROGRESS,
                         self.node.driver_internal_info[deploy.PROGRESS])
        ahead = dict(self.PROGRESS, percent=83.3, left=base.MiB // 2)
        progress_mock.return_value = dict(ahead)
        self.run_periodic()
        self.assertEqual(ahead,
                         self.node.driver_internal_info[deploy.PROGRESS])

    def test_not_published_here(self, nodes_mock, progress_mock):
        nodes_mock.return_value = []
        self.run_periodic()
        progress_mock.assert_not_called()
        self.assertNotIn(deploy.PROGRESS, self.node.driver_internal_info)

    def test_not_announced_yet(self, nodes_mock, progress_mock):
        nodes_mock.return_value = [self.node.uuid]
        progress_mock.return_value = None
        self.run_periodic()
        self.assertNotIn(deploy.PROGRESS, self.node.driver_internal_info)

    def test_other_step(self, nodes_mock, progress_mock):
        nodes_mock.return_value = [self.node.uuid]
        progress_mock.return_value = dict(self.PROGRESS)
        self.update_node(deploy_step={'interface': 'deploy',
                                      'step': 'deploy', 'priority': 100,
                                      'args': {}})
        self.run_periodic()
        self.assertNotIn(deploy.PROGRESS, self.node.driver_internal_info)

    def test_locked_node_is_skipped(self, nodes_mock, progress_mock):
        nodes_mock.return_value = [self.node.uuid]
        progress_mock.return_value = dict(self.PROGRESS)
        self.update_node(reservation='other-conductor')
        self.run_periodic()
        self.assertNotIn(deploy.PROGRESS, self.node.driver_internal_info)


@mock.patch.object(publisher.Publisher, 'progress', autospec=True)
@mock.patch.object(publisher.Publisher, 'nodes', autospec=True)
class PowerLostTestCase(DeployTestCase):
    """A node that loses power mid-write fails at once, naming the power."""

    def setUp(self):
        super().setUp()
        self.config(announce_interval=10, group='bittorrent')
        self.wait_on_write_step()
        self.update_node(power_state=states.POWER_OFF)
        self.manager = mock.Mock(spec=['iter_nodes'])
        self.manager.iter_nodes.return_value = [
            (self.node.uuid, self.node.driver, self.node.conductor_group,
             self.node.deploy_step)]

    def run_periodic(self):
        deploy.BitTorrentDeploy()._check_power_lost(self.manager,
                                                    self.context)
        self.node.refresh()

    def silent_for(self, nodes_mock, progress_mock, seconds):
        nodes_mock.return_value = [self.node.uuid]
        progress_mock.return_value = dict(ProgressTestCase.PROGRESS,
                                          seconds_since_seen=seconds)

    def test_silent_and_off_fails_the_deploy(self, nodes_mock,
                                             progress_mock):
        self.silent_for(nodes_mock, progress_mock, 25)
        self.run_periodic()
        self.assertEqual(states.DEPLOYFAIL, self.node.provision_state)
        self.assertIn('Node %s lost power while writing the image over '
                      'BitTorrent: its BMC reports the power off'
                      % self.node.uuid, self.node.last_error)
        self.assertIn('66.7% of the image downloaded', self.node.last_error)

    def test_silent_but_powered_on(self, nodes_mock, progress_mock):
        self.update_node(power_state=states.POWER_ON)
        self.silent_for(nodes_mock, progress_mock, 25)
        self.run_periodic()
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)
        self.assertIsNone(self.node.last_error)

    def test_announcing_nodes_are_not_asked(self, nodes_mock, progress_mock):
        self.silent_for(nodes_mock, progress_mock, 15)
        with mock.patch.object(fake.FakePower, 'get_power_state',
                               autospec=True) as power_mock:
            self.run_periodic()
        power_mock.assert_not_called()
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)

    def test_unreadable_power_leaves_it_to_the_callback_timeout(
            self, nodes_mock, progress_mock):
        self.silent_for(nodes_mock, progress_mock, 25)
        with mock.patch.object(fake.FakePower, 'get_power_state',
                               autospec=True) as power_mock:
            power_mock.side_effect = exception.IPMIFailure(cmd='power status')
            self.run_periodic()
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)

    def test_never_announced(self, nodes_mock, progress_mock):
        nodes_mock.return_value = [self.node.uuid]
        progress_mock.return_value = None
        self.run_periodic()
        self.assertEqual(states.DEPLOYWAIT, self.node.provision_state)


class ValidateTestCase(DeployTestCase):

    def validate(self):
        with task_manager.acquire(self.context, self.node.uuid) as task:
            task.driver.deploy.validate(task)

    def assertRefused(self, exc_class, message):
        exc = self.assertRaises(exc_class, self.validate)
        self.assertEqual(message % {'node': self.node.uuid}, str(exc))

    def test_valid(self):
        self.validate()

    def test_valid_glance_and_file_images_without_checksum(self):
        for source in ('0448fa34-4db1-407b-a051-6357d5f86c59',
                       'file:///var/lib/images/image.raw'):
            self.update_node(instance_info={'image_source': source})
            self.validate()

    def test_missing_image_source(self):
        self.update_node(instance_info={})
        self.assertRefused(
            exception.MissingParameterValue,
            "Node %(node)s cannot be deployed with the bittorrent deploy "
            "interface: the image to deploy is not set. Missing are: "
            "['instance_info.image_source']")

    def test_partition_image(self):
        self.set_info('instance_info', image_type='partition')
        self.assertRefused(
            exception.InvalidParameterValue,
            'Node %(node)s cannot be deployed with the bittorrent deploy '
            'interface: image ' + IMAGE_SOURCE + ' is a partition image '
            '(image_type is partition, or kernel and ramdisk are set); this '
            'interface writes whole-disk images only. Use a whole-disk '
            'image, or the direct deploy interface.')

    def test_partition_image_detected(self):
        self.set_info('driver_internal_info', is_whole_disk_image=False)
        exc = self.assertRaises(exception.InvalidParameterValue,
                                self.validate)
        self.assertIn('is a partition image', str(exc))
        self.assertIn(self.node.uuid, str(exc))

    def test_invalid_image_type(self):
        self.set_info('instance_info', image_type='floppy')
        self.assertRefused(
            exception.InvalidParameterValue,
            'Node %(node)s cannot be deployed with the bittorrent deploy '
            'interface: instance_info image_type "floppy" is not one of '
            'partition, whole-disk.')

    def test_container_image(self):
        self.set_info('instance_info',
                      image_source='oci://registry.example/os:latest')
        exc = self.assertRaises(exception.InvalidParameterValue,
                                self.validate)
        self.assertIn('container registry image', str(exc))
        self.assertIn(self.node.uuid, str(exc))

    def test_boot_iso(self):
        self.set_info('instance_info', boot_iso='http://example/boot.iso')
        exc = self.assertRaises(exception.InvalidParameterValue,
                                self.validate)
        self.assertIn('boot_iso is set', str(exc))
        self.assertIn(self.node.uuid, str(exc))

    def test_source_is_a_path(self):
        self.set_info('driver_internal_info', is_source_a_path=True)
        exc = self.assertRaises(exception.InvalidParameterValue,
                                self.validate)
        self.assertIn('is a path, not an image file', str(exc))

    def test_http_image_without_checksum(self):
        self.update_node(instance_info={'image_source': IMAGE_SOURCE})
        self.assertRefused(
            exception.MissingParameterValue,
            'Node %(node)s cannot be deployed with the bittorrent deploy '
            'interface: instance_info must hold image_checksum, or '
            'image_os_hash_algo and image_os_hash_value, for an image that '
            'is not in Glance.')

    def test_http_image_with_legacy_checksum(self):
        self.update_node(instance_info={'image_source': IMAGE_SOURCE,
                                        'image_checksum': 'f' * 32})
        self.validate()

    def test_hash_algo_without_value(self):
        self.update_node(instance_info={'image_source': IMAGE_SOURCE,
                                        'image_checksum': 'f' * 32,
                                        'image_os_hash_algo': 'sha256'})
        self.assertRefused(
            exception.MissingParameterValue,
            'Node %(node)s cannot be deployed with the bittorrent deploy '
            'interface: instance_info image_os_hash_algo and '
            'image_os_hash_value must be set together.')

    def test_bad_sha256(self):
        self.set_info('instance_info', image_os_hash_value='xyz')
        self.assertRefused(
            exception.InvalidParameterValue,
            'Node %(node)s cannot be deployed with the bittorrent deploy '
            'interface: instance_info image_os_hash_value "xyz" is not a '
            'sha256 hex digest.')

    def test_unsupported_scheme(self):
        self.set_info('instance_info',
                      image_source='gopher://images.example/image.raw')
        exc = self.assertRaises(exception.InvalidParameterValue,
                                self.validate)
        self.assertIn('Node %s cannot be deployed with the bittorrent '
                      'deploy interface: ' % self.node.uuid, str(exc))
        self.assertIn('gopher', str(exc))

    def test_unspecified_advertise_host(self):
        self.config(group='bittorrent', advertise_host='0.0.0.0')
        exc = self.assertRaises(bt_exception.InvalidBitTorrentConfig,
                                self.validate)
        self.assertIsInstance(exc, exception.InvalidParameterValue)
        self.assertIn('Node %s cannot be deployed with the bittorrent deploy '
                      'interface: option [bittorrent]advertise_host is '
                      '"0.0.0.0"' % self.node.uuid, str(exc))

    @mock.patch.object(noop_storage.NoopStorage, 'should_write_image',
                       autospec=True, return_value=False)
    def test_boot_from_volume_needs_no_image(self, should_write_mock):
        self.update_node(instance_info={})
        self.validate()
        should_write_mock.assert_called_once_with(mock.ANY, mock.ANY)
