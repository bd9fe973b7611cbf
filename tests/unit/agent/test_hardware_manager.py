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

"""Tests for the agent's deploy step, against IPA's own test base."""

import base64
import contextlib
import datetime
import hashlib
import http.server
import os
import threading
from unittest import mock

import fixtures
# IPA modules read their options at import time: register them first.
from ironic_python_agent import config  # noqa: F401
from ironic_python_agent import disk_utils
from ironic_python_agent import errors
from ironic_python_agent.extensions import base as ext_base
from ironic_python_agent.extensions import deploy
from ironic_python_agent.extensions import standby
from ironic_python_agent import hardware
from ironic_python_agent import partition_utils
from ironic_python_agent.tests.unit import base

from ipa_extension import device
from ipa_extension import extension
from ipa_extension import hardware_manager
from ipa_extension import keys
from ipa_extension import writer
from ironic_bt.common import certs
from ironic_bt.common import torrent

NODE_UUID = '1be26c0b-03f2-4d2e-ae87-c02d7f33c123'
IMAGE = 'a0f2a9a4-0e6c-4b8e-a2b1-0c0ffee00001'
DEVICE = '/dev/sda'
DEVICE_SIZE = 10 * 1024 ** 3
TRACKERS = ['http://198.18.0.1:6969/announce?node=%s' % NODE_UUID]
PEERS = ['198.18.0.1:6881']
WEB_SEED = 'http://198.18.0.1:8080/bittorrent/image'
CONFIGDRIVE = 'H4sICDw7fWkAA2NvbmZpZ2RyaXZlAAMAAAAAAAAAAAA='


def _node():
    return {'uuid': NODE_UUID, 'instance_info': {'image_source': IMAGE}}


class HardwareManagerTestCase(base.IronicAgentTest):

    #: Whether to stub IPA's dispatch; the deploy extension test needs it.
    mock_dispatch = True

    def setUp(self):
        super().setUp()
        self.hwm = hardware_manager.BitTorrentHardwareManager()
        tmp = self.useFixture(fixtures.TempDir()).path
        image = os.path.join(tmp, 'image.raw')
        # A real, tiny image: two pieces of data and two of zeros.
        piece = torrent.MIN_PIECE_SIZE
        with open(image, 'wb') as f:
            f.write(os.urandom(piece))
            f.write(bytes(2 * piece))
            f.write(os.urandom(piece // 2))
        self.meta = torrent.build(image)
        self.torrent = base64.b64encode(self.meta.data).decode()

        self.standby = standby.StandbyExtension()
        self.get_extension = self._patch(ext_base, 'get_extension',
                                         return_value=self.standby)
        if self.mock_dispatch:
            self.dispatch = self._patch(hardware, 'dispatch_to_managers',
                                        return_value=DEVICE)
        self.target_size = self._patch(device, 'target_size',
                                       return_value=DEVICE_SIZE)
        self.address = self._patch(hardware_manager, '_provisioning_address',
                                   return_value='198.18.0.2')
        self.write = self._patch(writer, 'write',
                                 return_value=self._write_result())
        self.fix_gpt = self._patch(disk_utils, 'fix_gpt_partition')
        self.partprobe = self._patch(disk_utils, 'partprobe',
                                     return_value=True)
        self.disk_id = self._patch(disk_utils, 'get_disk_identifier',
                                   return_value='0x1234abcd')
        self.configdrive = self._patch(partition_utils,
                                       'create_config_drive_partition')

    def _patch(self, target, name, **kwargs):
        patcher = mock.patch.object(target, name, autospec=True, **kwargs)
        self.addCleanup(patcher.stop)
        return patcher.start()

    def _write_result(self):
        return writer.WriteResult(
            target=DEVICE, size=self.meta.size,
            info_hash=self.meta.info_hash, downloaded_bytes=393216,
            downloaded_from_seeder_bytes=262144,
            uploaded_bytes=131072, zero_bytes=524288, seconds=4.2,
            download_seconds=3.0, verify_seconds=0.7, linger_seconds=0.5,
            sha256='5e' * 32, hash_failures=1,
            downloaded_from_web_seed_bytes=65536, resumed_bytes=131072)

    def _run(self, **kwargs):
        args = {'torrent': self.torrent, 'trackers': TRACKERS,
                'peers': PEERS, 'image_sha256': 'ab' * 32,
                'configdrive': CONFIGDRIVE}
        args.update(kwargs)
        return self.hwm.write_image_bittorrent(_node(), [], **args)

    def _assert_nothing_after_write(self):
        self.configdrive.assert_not_called()
        self.fix_gpt.assert_not_called()
        self.assertIsNone(self.standby.partition_uuids)


class TestManager(HardwareManagerTestCase):

    def test_evaluate_hardware_support(self):
        self.assertEqual(hardware.HardwareSupport.SERVICE_PROVIDER,
                         self.hwm.evaluate_hardware_support())

    def test_get_version(self):
        self.assertEqual({'name': 'BitTorrentHardwareManager',
                          'version': '1.0'}, self.hwm.get_version())

    def test_get_deploy_steps(self):
        steps = self.hwm.get_deploy_steps(_node(), [])
        self.assertEqual([{'step': 'write_image_bittorrent',
                           'priority': 0,
                           'interface': 'deploy',
                           'reboot_requested': False,
                           'argsinfo': hardware_manager.ARGSINFO}], steps)
        self.assertEqual(
            {'torrent', 'trackers', 'peers', 'image_sha256', 'configdrive',
             'listen_port', 'linger_timeout', 'progress_interval',
             'stall_timeout', 'web_seeds', 'web_seed_delay',
             'unreachable_timeout', 'ssl_ca', 'ssl_certificate',
             'sealed_announce_key', 'sealed_web_seeds', 'torrent_url',
             'torrent_sha256', 'sealed_configdrive', 'sealed_for'},
            set(hardware_manager.ARGSINFO))
        required = [name for name, info in hardware_manager.ARGSINFO.items()
                    if info['required']]
        self.assertEqual([], required)

    def test_other_methods_fall_through(self):
        # Ranked above the generic manager, this one must not answer for it.
        self.assertRaises(errors.IncompatibleHardwareMethodError,
                          self.hwm.get_os_install_device)
        self.assertRaises(errors.IncompatibleHardwareMethodError,
                          self.hwm.list_hardware_info)


class TestWriteImage(HardwareManagerTestCase):

    def test_write(self):
        result = self._run(listen_port=6999, linger_timeout=30,
                           progress_interval=5, stall_timeout=60,
                           web_seeds=[WEB_SEED], web_seed_delay=3,
                           unreachable_timeout=20)

        self.dispatch.assert_called_once_with('get_os_install_device',
                                              permit_refresh=True)
        self.target_size.assert_called_once_with(DEVICE)
        self.write.assert_called_once_with(
            self.meta, DEVICE, trackers=TRACKERS, peers=PEERS,
            listen_host='198.18.0.2', listen_port=6999, linger_timeout=30,
            progress_interval=5, stall_timeout=60,
            expected_sha256='ab' * 32, web_seeds=[WEB_SEED],
            web_seed_delay=3, unreachable_timeout=20, credentials=None)
        meta = self.write.call_args.args[0]
        self.assertEqual(self.meta.info_hash, meta.info_hash)
        self.assertEqual(self.meta.zero_pieces, meta.zero_pieces)
        self.assertEqual(
            {'device': DEVICE, 'size': self.meta.size,
             'info_hash': self.meta.info_hash, 'downloaded_bytes': 393216,
             'downloaded_from_seeder_bytes': 262144,
             'uploaded_bytes': 131072, 'zero_bytes': 524288,
             'zero_pieces': 2, 'seconds': 4.2, 'download_seconds': 3.0,
             'verify_seconds': 0.7, 'linger_seconds': 0.5,
             'sha256': '5e' * 32, 'hash_failures': 1,
             'downloaded_from_web_seed_bytes': 65536,
             'resumed_bytes': 131072}, result)

    def test_defaults(self):
        self.hwm.write_image_bittorrent(_node(), [], torrent=self.torrent,
                                        peers=PEERS)
        self.write.assert_called_once_with(
            self.meta, DEVICE, trackers=(), peers=PEERS,
            listen_host='198.18.0.2', listen_port=6881, linger_timeout=300,
            progress_interval=10, stall_timeout=300, expected_sha256=None,
            web_seeds=(), web_seed_delay=5, unreachable_timeout=60,
            credentials=None)
        self.configdrive.assert_not_called()

    def test_ssl_swarm_uses_the_key_the_agent_made(self):
        public, authority, cert = _certified_agent_key()
        self.hwm.write_image_bittorrent(
            _node(), [], torrent=self.torrent, peers=PEERS,
            ssl_ca=authority.certificate, ssl_certificate=cert)
        creds = self.write.call_args.kwargs['credentials']
        self.assertEqual(cert, creds.certificate)
        self.assertEqual(authority.certificate, creds.ca)
        creds.check()

    def test_torrent_fetched_by_url_and_checked(self):
        with _serving({'/t.torrent': self.meta.data}) as url:
            self.hwm.write_image_bittorrent(
                _node(), [], peers=PEERS, torrent_url=url + '/t.torrent',
                torrent_sha256=hashlib.sha256(self.meta.data).hexdigest())
        self.assertEqual(self.meta.info_hash,
                         self.write.call_args.args[0].info_hash)

    def test_torrent_altered_on_the_way(self):
        # Another tracker list (outside the info dict, so the same
        # info-hash) is refused all the same.
        altered = torrent.with_trackers(self.meta.data,
                                        ['http://198.18.0.66/announce'])
        want = hashlib.sha256(self.meta.data).hexdigest()
        with _serving({'/t.torrent': altered}) as url:
            exc = self.assertRaises(
                errors.ImageDownloadError, self.hwm.write_image_bittorrent,
                _node(), [], peers=PEERS, torrent_url=url + '/t.torrent',
                torrent_sha256=want)
        self.assertIn('has SHA-256 %s, not %s' % (
            hashlib.sha256(altered).hexdigest(), want), str(exc))
        self.write.assert_not_called()

    def test_torrent_url_unreachable(self):
        with _serving({}) as url:
            exc = self.assertRaises(
                errors.ImageDownloadError, self.hwm.write_image_bittorrent,
                _node(), [], peers=PEERS, torrent_url=url + '/t.torrent',
                torrent_sha256='ab' * 32)
        self.assertIn('node %s cannot fetch its torrent from %s/t.torrent'
                      % (NODE_UUID, url), str(exc))
        self.assertIn('404', str(exc))
        self.assertIn('[deploy]http_url', str(exc))
        self.write.assert_not_called()

    def test_listens_on_the_provisioning_address_only(self):
        self._run()
        self.address.assert_called_once_with(PEERS, TRACKERS)
        self.assertEqual('198.18.0.2',
                         self.write.call_args.kwargs['listen_host'])

    def test_ssl_swarm_announces_with_the_sealed_key(self):
        public, authority, cert = _certified_agent_key()
        self.hwm.write_image_bittorrent(
            _node(), [], torrent=self.torrent, peers=PEERS,
            trackers=TRACKERS, ssl_ca=authority.certificate,
            ssl_certificate=cert,
            sealed_announce_key=certs.seal(public, b'0123abcd',
                                           certs.ANNOUNCE_KEY))
        self.assertEqual([TRACKERS[0] + '&auth=0123abcd'],
                         self.write.call_args.kwargs['trackers'])

    def test_announce_key_sealed_for_another_key(self):
        public, authority, cert = _certified_agent_key()
        other = certs.public_key_pem(certs.new_private_key())
        exc = self.assertRaises(
            errors.ImageDownloadError, self.hwm.write_image_bittorrent,
            _node(), [], torrent=self.torrent, peers=PEERS,
            trackers=TRACKERS, ssl_ca=authority.certificate,
            ssl_certificate=cert,
            sealed_announce_key=certs.seal(other, b'0123abcd',
                                           certs.ANNOUNCE_KEY))
        self.assertIn('announce key sealed for node %s' % NODE_UUID,
                      str(exc))
        self.assertNotIn('0123abcd', str(exc))
        self.write.assert_not_called()

    def test_ssl_certificate_for_a_key_the_agent_lacks(self):
        authority = certs.Authority.create()
        creds = authority.credentials(NODE_UUID, datetime.timedelta(hours=1))
        exc = self.assertRaises(
            errors.ImageDownloadError, self.hwm.write_image_bittorrent,
            _node(), [], torrent=self.torrent, peers=PEERS,
            ssl_ca=authority.certificate, ssl_certificate=creds.certificate)
        self.assertIn(NODE_UUID, str(exc))
        self.assertIn('a key this agent does not hold', str(exc))
        self.write.assert_not_called()

    def test_disk_finished_after_seeding_stopped(self):
        order = mock.Mock()
        order.attach_mock(self.write, 'write')
        order.attach_mock(self.configdrive, 'create_config_drive_partition')
        order.attach_mock(self.disk_id, 'get_disk_identifier')

        self._run()

        self.assertEqual(
            ['write', 'create_config_drive_partition',
             'get_disk_identifier'], [c[0] for c in order.mock_calls])
        # The image stays byte-exact: only the config drive code may touch
        # the GPT, and only when it adds a partition.
        self.fix_gpt.assert_not_called()
        self.partprobe.assert_called_once_with(DEVICE)
        self.configdrive.assert_called_once_with(NODE_UUID, DEVICE,
                                                 CONFIGDRIVE)

    def test_partition_uuids(self):
        self.assertIsNone(self.standby.partition_uuids)
        self._run()
        self.get_extension.assert_called_once_with('standby')
        self.disk_id.assert_called_once_with(DEVICE)
        # What the conductor gets from standby.get_partition_uuids.
        self.assertEqual({'root uuid': '0x1234abcd'},
                         self.standby.get_partition_uuids().command_result)

    def test_no_configdrive(self):
        self._run(configdrive=None)
        self.configdrive.assert_not_called()
        self.assertEqual({'root uuid': '0x1234abcd'},
                         self.standby.partition_uuids)

    def test_no_disk_identifier(self):
        self.disk_id.side_effect = OSError('hexdump: not found')
        self._run()
        # Empty, not None: the image was written, IPA must not warn that
        # prepare_image never ran.
        self.assertEqual({}, self.standby.partition_uuids)

    def test_sealed_configdrive_opened_with_the_agent_key(self):
        public = keys.new_public_key()
        self._run(configdrive=None, sealed_for=public,
                  sealed_configdrive=certs.seal(public, CONFIGDRIVE.encode(),
                                                certs.CONFIGDRIVE))
        self.configdrive.assert_called_once_with(NODE_UUID, DEVICE,
                                                 CONFIGDRIVE)

    def test_sealed_configdrive_for_another_key(self):
        keys.new_public_key()
        other = certs.public_key_pem(certs.new_private_key())
        exc = self.assertRaises(
            errors.DeploymentError, self._run, configdrive=None,
            sealed_for=other,
            sealed_configdrive=certs.seal(other, CONFIGDRIVE.encode(),
                                          certs.CONFIGDRIVE))
        self.assertIn('config drive for node %s was sealed for a key this '
                      'agent does not hold' % NODE_UUID, exc.details)
        # Failed before a byte was written.
        self.write.assert_not_called()
        self.configdrive.assert_not_called()

    def test_sealed_configdrive_altered(self):
        public = keys.new_public_key()
        sealed = certs.seal(public, CONFIGDRIVE.encode(), certs.ANNOUNCE_KEY)
        exc = self.assertRaises(
            errors.DeploymentError, self._run, configdrive=None,
            sealed_for=public, sealed_configdrive=sealed)
        self.assertIn('config drive sealed for node %s cannot be opened'
                      % NODE_UUID, exc.details)
        self.write.assert_not_called()

    def test_configdrive_failure_propagates(self):
        self.configdrive.side_effect = errors.DeploymentError(
            'Config drive size exceeds maximum limit of 64MiB')
        self.assertRaises(errors.DeploymentError, self._run)
        self.assertIsNone(self.standby.partition_uuids)


class TestWriteImageErrors(HardwareManagerTestCase):

    def _assert_names_node_and_device(self, exc):
        self.assertIn(NODE_UUID, exc.details)
        self.assertIn(DEVICE, exc.details)
        self.assertIn(IMAGE, exc.details)

    def test_download_error(self):
        self.write.side_effect = writer.DownloadError(
            'Download of X stalled at 12.0% for 300 s with 0 peers. Check '
            'that the conductor\'s tracker and seeder are reachable.')
        exc = self.assertRaises(errors.ImageDownloadError, self._run)
        self._assert_names_node_and_device(exc)
        self.assertIn('stalled at 12.0%', exc.details)
        self.assertIn('Check that', exc.details)
        self._assert_nothing_after_write()

    def test_target_error(self):
        self.write.side_effect = writer.TargetError(
            'Writing X to /dev/sda failed: Input/output error. Check the '
            'device and the kernel log.')
        exc = self.assertRaises(errors.ImageWriteError, self._run)
        self._assert_names_node_and_device(exc)
        self.assertIn('Input/output error. Check the device', exc.details)
        self.assertNotIn('exit code', exc.details)
        self._assert_nothing_after_write()

    def test_verify_error(self):
        self.write.side_effect = writer.VerifyError(
            'Piece 3 read back from /dev/sda does not match the image.')
        exc = self.assertRaises(errors.ImageWriteError, self._run)
        self._assert_names_node_and_device(exc)
        self.assertIn('Piece 3', exc.details)
        self._assert_nothing_after_write()

    def test_os_error(self):
        self.write.side_effect = OSError(5, 'Input/output error')
        exc = self.assertRaises(errors.ImageWriteError, self._run)
        self._assert_names_node_and_device(exc)
        self.assertIn('Input/output error', exc.details)
        self._assert_nothing_after_write()

    def test_error_serializes_for_the_conductor(self):
        # The conductor puts command_error['details'] into last_error.
        self.write.side_effect = writer.VerifyError('Piece 3 differs.')
        exc = self.assertRaises(errors.ImageWriteError, self._run)
        serialized = exc.serialize()
        self.assertEqual(exc.details, serialized['details'])
        self.assertTrue(serialized['details'].startswith(
            'Writing image %s to device %s of node %s failed'
            % (IMAGE, DEVICE, NODE_UUID)))

    def test_corrupt_base64(self):
        exc = self.assertRaises(errors.ImageDownloadError, self._run,
                                torrent='not base64 at all!')
        self.assertIn(NODE_UUID, exc.details)
        self.assertIn('not base64', exc.details)
        self.dispatch.assert_not_called()
        self.write.assert_not_called()
        self._assert_nothing_after_write()

    def test_corrupt_torrent(self):
        data = base64.b64encode(self.meta.data[:-40]).decode()
        exc = self.assertRaises(errors.ImageDownloadError, self._run,
                                torrent=data)
        self.assertIn(NODE_UUID, exc.details)
        self.assertIn(IMAGE, exc.details)
        self.assertIn('not a valid .torrent', exc.details)
        self.dispatch.assert_not_called()
        self.write.assert_not_called()
        self._assert_nothing_after_write()

    def test_device_too_small(self):
        self.target_size.return_value = self.meta.size - 1
        exc = self.assertRaises(errors.ImageWriteError, self._run)
        self._assert_names_node_and_device(exc)
        self.assertIn('%d bytes' % self.meta.size, exc.details)
        self.assertIn('%d bytes' % (self.meta.size - 1), exc.details)
        self.assertIn('root device hints', exc.details)
        self.write.assert_not_called()
        self._assert_nothing_after_write()

    def test_device_exactly_big_enough(self):
        self.target_size.return_value = self.meta.size
        self._run()
        self.assertEqual(1, self.write.call_count)

    def test_device_not_a_block_device(self):
        # target_size answers None for a regular file or a missing path,
        # where the writer would create a file in the ramdisk's memory.
        self.target_size.return_value = None
        exc = self.assertRaises(errors.ImageWriteError, self._run)
        self._assert_names_node_and_device(exc)
        self.assertIn('not a block device', exc.details)
        self.write.assert_not_called()
        self._assert_nothing_after_write()

    def test_device_unusable(self):
        for error in (writer.TargetError('Target /dev/sda is neither a '
                                         'block device nor a regular file.'),
                      OSError(123, 'No medium found')):
            self.target_size.side_effect = error
            exc = self.assertRaises(errors.ImageWriteError, self._run)
            self._assert_names_node_and_device(exc)
            self.assertIn(str(error), exc.details)
        self.write.assert_not_called()


class _InstallDeviceManager(hardware.HardwareManager):
    """Stands in for the generic manager below ours."""

    def evaluate_hardware_support(self):
        return hardware.HardwareSupport.GENERIC

    def get_os_install_device(self, permit_refresh=False):
        return DEVICE

    def wait_for_disks(self):
        pass


class TestThroughDeployExtension(HardwareManagerTestCase):
    """The step as IPA runs it: execute_deploy_step and real dispatch."""

    mock_dispatch = False

    def setUp(self):
        super().setUp()
        self.get_managers = self._patch(
            hardware, 'get_managers',
            return_value=[self.hwm, _InstallDeviceManager()])

    def test_execute_deploy_step(self):
        step = {'step': 'write_image_bittorrent', 'priority': 80,
                'interface': 'deploy', 'reboot_requested': False,
                'args': {'torrent': self.torrent, 'trackers': TRACKERS,
                         'peers': PEERS, 'image_sha256': None,
                         'configdrive': None, 'listen_port': 6881,
                         'linger_timeout': 300, 'progress_interval': 10,
                         'stall_timeout': 300}}
        ext = deploy.DeployExtension()
        command = ext.execute_deploy_step(
            step=step, node=_node(), ports=[]).join()

        self.assertIsNone(command.command_error)
        self.assertEqual(step, command.command_result['deploy_step'])
        self.assertEqual(DEVICE,
                         command.command_result['deploy_result']['device'])
        self.assertEqual(self.meta.info_hash,
                         self.write.call_args.args[0].info_hash)
        self.assertEqual(DEVICE, self.write.call_args.args[1])

    def test_execute_deploy_step_error(self):
        self.write.side_effect = writer.DownloadError('stalled')
        step = {'step': 'write_image_bittorrent', 'priority': 80,
                'interface': 'deploy', 'reboot_requested': False,
                'args': {'torrent': self.torrent, 'peers': PEERS}}
        command = deploy.DeployExtension().execute_deploy_step(
            step=step, node=_node(), ports=[]).join()
        self.assertIsInstance(command.command_error,
                              errors.ImageDownloadError)
        self.assertIn(NODE_UUID, command.command_error.details)


@contextlib.contextmanager
def _serving(files):
    """A real HTTP server on 127.0.0.1 serving {path: bytes}."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header('Content-Length', str(len(body or b'')))
            self.end_headers()
            self.wfile.write(body or b'')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield 'http://127.0.0.1:%d' % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _certified_agent_key():
    """The agent makes a key (bittorrent.swarm_key); a conductor certifies it.

    :returns: (public key PEM, the authority, the certificate PEM).
    """
    public = extension.BitTorrentExtension().swarm_key().command_result[
        'public_key']
    authority = certs.Authority.create()
    return public, authority, authority.issue(
        NODE_UUID, public, datetime.timedelta(hours=1))


class TestProvisioningAddress(base.IronicAgentTest):

    def test_source_address_towards_the_seeder(self):
        self.assertEqual('127.0.0.1', hardware_manager._provisioning_address(
            ['127.0.0.1:6881'], []))

    def test_from_the_tracker_when_no_peer(self):
        self.assertEqual('127.0.0.1', hardware_manager._provisioning_address(
            [], ['udp://127.0.0.1:6969/announce?node=x']))

    def test_ipv6(self):
        self.assertEqual('::1', hardware_manager._provisioning_address(
            ['[::1]:6881'], []))

    def test_names_need_dns_so_every_address(self):
        self.assertEqual('0.0.0.0', hardware_manager._provisioning_address(
            ['conductor.example:6881'],
            ['http://conductor.example/announce']))
