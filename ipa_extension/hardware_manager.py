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

"""The in-band half of the ``bittorrent`` deploy interface.

The conductor's ``write_image_bittorrent`` deploy step publishes the image
and proxies to the agent step of the same name, which this hardware manager
provides: it downloads the torrent straight onto the install device (see
:mod:`ipa_extension.writer`), then finishes the disk the way IPA's standby
extension finishes a whole-disk image, so that the conductor's later steps
(``prepare_instance_boot``, ``get_partition_uuids``) cannot tell the
difference from a ``direct`` deploy.

This is the only module of ``ipa_extension`` that imports IPA.
"""

import base64
import binascii
import hashlib
import ipaddress
import json
import socket
from urllib import parse
from urllib import request

# IPA modules read their options at import time (qemu_img, imported by
# disk_utils, reads [disk_utils]); the agent imports config before loading
# hardware managers, and so must anything importing this module alone.
from ironic_python_agent import config  # noqa: F401
from ironic_python_agent import disk_utils
from ironic_python_agent import errors
from ironic_python_agent.extensions import base as ext_base
from ironic_python_agent import hardware
from ironic_python_agent import partition_utils
from oslo_log import log
from oslo_utils import netutils

from ipa_extension import device as bt_device
from ipa_extension import keys
from ipa_extension import secrets_filter
from ipa_extension import writer
from ironic_bt.common import certs
from ironic_bt.common.i18n import _
from ironic_bt.common import publication
from ironic_bt.common import torrent

LOG = log.getLogger(__name__)

# IPA loads this module at start: from then on, its request log masks the
# agent token.
secrets_filter.install()

STEP_NAME = 'write_image_bittorrent'

ARGSINFO = {
    'torrent': {
        'description': 'The .torrent of the raw whole-disk image, bencoded, '
                       'then base64 encoded (standard alphabet). Required '
                       'unless torrent_url is given.',
        'required': False,
    },
    'torrent_url': {
        'description': 'HTTP(S) URL of the .torrent, fetched by the agent '
                       'instead of torrent (which IPA would log whole); '
                       'requires torrent_sha256.',
        'required': False,
    },
    'torrent_sha256': {
        'description': 'Hex SHA-256 the file fetched from torrent_url must '
                       'have.',
        'required': False,
    },
    'trackers': {
        'description': 'Announce URLs of the trackers of the swarm.',
        'required': False,
    },
    'peers': {
        'description': 'HOST:PORT of peers to connect to directly, such as '
                       'the conductor\'s seeder.',
        'required': False,
    },
    'image_sha256': {
        'description': 'Hex SHA-256 of the raw image. When given, the disk '
                       'is checked against it after the download.',
        'required': False,
    },
    'configdrive': {
        'description': 'The config drive, as the write_image step takes it '
                       '(a URL, or gzipped and base64 encoded contents). '
                       'It holds secrets (admin password, user data) and '
                       'IPA logs step arguments: the conductor sends '
                       'sealed_configdrive instead.',
        'required': False,
    },
    'sealed_configdrive': {
        'description': 'The config drive, sealed for the key named by '
                       'sealed_for (made by bittorrent.swarm_key).',
        'required': False,
    },
    'sealed_for': {
        'description': 'The public key (PEM) sealed_configdrive was sealed '
                       'for.',
        'required': False,
    },
    'listen_port': {
        'description': 'TCP port to accept peer connections on. Defaults '
                       'to 6881.',
        'required': False,
    },
    'linger_timeout': {
        'description': 'Most seconds to keep seeding to incomplete peers '
                       'after the disk is verified. Defaults to 300.',
        'required': False,
    },
    'progress_interval': {
        'description': 'Seconds between progress log lines. Defaults to '
                       '10.',
        'required': False,
    },
    'stall_timeout': {
        'description': 'Seconds without download progress after which the '
                       'step fails. Defaults to 300.',
        'required': False,
    },
    'web_seeds': {
        'description': 'HTTP(S) URLs of the raw image (BEP 19 web seeds), '
                       'used only for the pieces no peer has once the '
                       'seeder has been out of reach for web_seed_delay '
                       'seconds. None or empty: no HTTP fallback.',
        'required': False,
    },
    'web_seed_delay': {
        'description': 'Seconds the seeder must be out of reach before the '
                       'web seeds are used. Defaults to 5.',
        'required': False,
    },
    'unreachable_timeout': {
        'description': 'Seconds with no source connected and no progress '
                       'after which the step fails, naming every source. '
                       'Defaults to 60.',
        'required': False,
    },
    'ssl_ca': {
        'description': 'PEM of the root certificate of the deployment\'s '
                       'SSL swarms. With it, the agent exchanges image '
                       'bytes only with peers holding a certificate it '
                       'issued. Unset: a plain torrent.',
        'required': False,
    },
    'ssl_certificate': {
        'description': 'PEM of the certificate the conductor issued for the '
                       'public key the agent returned from '
                       'bittorrent.swarm_key; the private key never leaves '
                       'the agent.',
        'required': False,
    },
    'sealed_web_seeds': {
        'description': 'More web seed URLs (a JSON list), encrypted like '
                       'sealed_announce_key: the conductor\'s copy of the '
                       'image, at an unguessable URL in SSL swarms.',
        'required': False,
    },
    'sealed_announce_key': {
        'description': 'The node\'s tracker announce key, encrypted for the '
                       'key the agent returned from bittorrent.swarm_key; '
                       'the agent adds it to its tracker URLs.',
        'required': False,
    },
}


class BitTorrentWriteError(errors.ImageWriteError):
    """An ImageWriteError whose details read as one sentence.

    IPA's constructor reports the exit code and output of a command; the
    writer runs none, and "exit code None" in ``last_error`` would send
    operators looking for one.
    """

    def __init__(self, device, details):
        super().__init__(device, None, None, None)
        self.details = details


class BitTorrentHardwareManager(hardware.HardwareManager):
    """Provides the ``write_image_bittorrent`` deploy step."""

    HARDWARE_MANAGER_NAME = 'BitTorrentHardwareManager'
    HARDWARE_MANAGER_VERSION = '1.0'

    def evaluate_hardware_support(self):
        """Support every machine, above the generic manager.

        This manager adds a step and nothing else, so it must load whatever
        the hardware (NONE would unload it). SERVICE_PROVIDER is what IPA's
        own example of a step-only manager returns: it puts this manager
        deterministically ahead of GenericHardwareManager (at GENERIC the
        order between equals is the entry points' order), which changes
        nothing else, because every other method is the base class's and
        raises IncompatibleHardwareMethodError, so dispatch_to_managers goes
        on to the managers that really implement it. The step name is ours
        alone, so deduplicate_steps never has to choose between managers.

        :returns: hardware.HardwareSupport.SERVICE_PROVIDER
        """
        return hardware.HardwareSupport.SERVICE_PROVIDER

    def get_deploy_steps(self, node, ports):
        """The deploy step this manager provides.

        Its priority is 0 because it never runs on its own: the conductor
        proxies to it from its out-of-band step of the same name and
        interface, and accepts the result only then.

        :param node: the node, as a dict.
        :param ports: the node's ports, as dicts.
        :returns: a list with the one step dict.
        """
        return [{
            'step': STEP_NAME,
            'priority': 0,
            'interface': 'deploy',
            'reboot_requested': False,
            'argsinfo': ARGSINFO,
        }]

    def write_image_bittorrent(self, node, ports, torrent=None, trackers=None,
                               peers=None, image_sha256=None,
                               configdrive=None, listen_port=6881,
                               linger_timeout=300, progress_interval=10,
                               stall_timeout=300, web_seeds=None,
                               web_seed_delay=5, unreachable_timeout=60,
                               ssl_ca=None, ssl_certificate=None,
                               sealed_announce_key=None,
                               sealed_web_seeds=None, torrent_url=None,
                               torrent_sha256=None, sealed_configdrive=None,
                               sealed_for=None):
        """Download a whole-disk image from a swarm onto the install device.

        The image is verified on the disk and seeding has stopped before the
        config drive is written, so no peer is ever served changed bytes.

        :param node: the node, as a dict.
        :param ports: the node's ports, as dicts (unused).
        :param torrent: base64 of the bencoded .torrent.
        :param trackers: announce URLs.
        :param peers: ``HOST:PORT`` strings to connect to directly.
        :param image_sha256: hex SHA-256 of the raw image, or None.
        :param configdrive: the config drive (URL or gzipped base64), or
            None.
        :param listen_port: TCP port to accept peer connections on.
        :param linger_timeout: most seconds to seed after verifying.
        :param progress_interval: seconds between progress log lines.
        :param stall_timeout: seconds without progress before failing.
        :param web_seeds: HTTP(S) URLs of the raw image for the fallback.
        :param web_seed_delay: seconds without the seeder before using them.
        :param unreachable_timeout: seconds with no source connected before
            failing.
        :param ssl_ca: PEM of the swarm's root certificate: join the swarm
            over SSL only (with ``ssl_certificate``).
        :param ssl_certificate: PEM of the certificate the conductor issued
            for a key this agent made (``bittorrent.swarm_key``).
        :param sealed_announce_key: the node's tracker announce key, sealed
            for that key (:func:`ironic_bt.common.certs.seal`); added to the
            tracker URLs.
        :param sealed_web_seeds: more web seed URLs (a JSON list), sealed
            the same way: the conductor's, an unguessable URL.
        :param torrent_url: where to fetch the .torrent instead of
            ``torrent``.
        :param torrent_sha256: the hex SHA-256 the fetched file must have.
        :param sealed_configdrive: the config drive, sealed for the key
            whose public key is ``sealed_for`` (it holds the server's
            secrets, and IPA logs step arguments).
        :param sealed_for: PEM of that key's public key.
        :raises: ImageDownloadError if the torrent is unusable or the swarm
            does not deliver it.
        :raises: ImageWriteError if the device cannot take the image, writing
            fails or the disk does not read back as the image.
        :raises: DeploymentError if the config drive cannot be written.
        :returns: a dict with ``device``, ``size``, ``info_hash``,
            ``sha256``, ``downloaded_bytes``, ``uploaded_bytes``,
            ``zero_bytes``, ``zero_pieces`` and timings in seconds.
        """
        node_uuid = node['uuid']
        image = (node.get('instance_info') or {}).get('image_source')
        if sealed_configdrive:
            # Opened before a byte is written: a deploy that could not
            # finish the disk fails while the disk is untouched.
            try:
                configdrive = keys.unseal_for(node_uuid, sealed_for,
                                              sealed_configdrive,
                                              certs.CONFIGDRIVE)
            except certs.CertificateError as e:
                raise errors.DeploymentError(str(e))
        if torrent is None:
            torrent = _fetch_torrent(node_uuid, image, torrent_url,
                                     torrent_sha256)
        meta = _load_torrent(node_uuid, image, torrent)
        image = image or meta.info_hash
        device = hardware.dispatch_to_managers('get_os_install_device',
                                               permit_refresh=True)
        _check_device(node_uuid, image, meta, device)
        credentials = None
        if ssl_ca or ssl_certificate:
            try:
                if not (ssl_ca and ssl_certificate):
                    raise certs.CertificateError(
                        _('node %s was given only one of ssl_ca and '
                          'ssl_certificate. Check the ironic-bt version of '
                          'the conductor.') % node_uuid)
                credentials = keys.credentials(node_uuid, ssl_ca,
                                               ssl_certificate)
                if sealed_announce_key:
                    key = keys.unseal(node_uuid, credentials,
                                      sealed_announce_key,
                                      certs.ANNOUNCE_KEY)
                    trackers = [publication.with_query(
                        url, {publication.ANNOUNCE_PARAM: key})
                        for url in trackers or ()]
                if sealed_web_seeds:
                    web_seeds = list(web_seeds or ()) + _url_list(
                        node_uuid, keys.unseal(node_uuid, credentials,
                                               sealed_web_seeds,
                                               certs.WEB_SEEDS))
            except certs.CertificateError as e:
                raise errors.ImageDownloadError(image, str(e))

        LOG.info('Writing image %(image)s (torrent %(ih)s, %(size)d bytes) '
                 'to %(dev)s of node %(node)s from %(t)d trackers and '
                 '%(p)d peers (%(w)d web seeds as the fallback); it fails '
                 'after %(stall)d s without progress and seeds at most '
                 '%(linger)d s after',
                 {'image': image, 'ih': meta.info_hash, 'size': meta.size,
                  'dev': device, 'node': node_uuid,
                  't': len(trackers or ()), 'p': len(peers or ()),
                  'w': len(web_seeds or ()), 'stall': stall_timeout,
                  'linger': linger_timeout})
        try:
            result = writer.write(
                meta, device, trackers=trackers or (), peers=peers or (),
                listen_host=_provisioning_address(peers, trackers),
                listen_port=listen_port,
                linger_timeout=linger_timeout,
                progress_interval=progress_interval,
                stall_timeout=stall_timeout, expected_sha256=image_sha256,
                web_seeds=web_seeds or (), web_seed_delay=web_seed_delay,
                unreachable_timeout=unreachable_timeout,
                credentials=credentials)
        except writer.DownloadError as e:
            raise errors.ImageDownloadError(
                image, _('node %(node)s could not download it to %(dev)s: '
                         '%(err)s') % {'node': node_uuid, 'dev': device,
                                       'err': e})
        except (writer.WriterError, OSError) as e:
            # OSError: a device failing outside the writer's own checks
            # (reading it back, syncing it) is a write failure all the same.
            raise _write_error(node_uuid, image, device, e)

        # Seeding is over: from here on the disk may diverge from the image.
        _finish_disk(node_uuid, device, configdrive)
        LOG.info('Wrote image %(image)s to %(dev)s of node %(node)s in '
                 '%(s).1f s: %(down)d bytes downloaded, %(up)d uploaded, '
                 '%(zero)d zeroed locally, sha256 %(sha)s',
                 {'image': image, 'dev': device, 'node': node_uuid,
                  's': result.seconds, 'down': result.downloaded_bytes,
                  'up': result.uploaded_bytes, 'zero': result.zero_bytes,
                  'sha': result.sha256})

        deploy_result = result.to_dict()
        deploy_result['device'] = deploy_result.pop('target')
        deploy_result['zero_pieces'] = len(meta.zero_pieces)
        return deploy_result


def _provisioning_address(peers, trackers):
    """The address this node reaches the conductor from.

    Peers are accepted on that address only: the provisioning network's.
    It is the source address of the route to the seeder (or the tracker),
    found with a UDP socket's connect, which sends nothing. A conductor
    known by name only (no address literal) would need a DNS lookup: then
    every address is used.
    """
    hosts = []
    for peer in peers or ():
        try:
            hosts.append(netutils.parse_host_port(peer)[0])
        except ValueError:
            continue     # the writer refuses it, naming it
    hosts += [parse.urlsplit(url).hostname or '' for url in trackers or ()]
    for host in hosts:
        try:
            family = (socket.AF_INET6 if ipaddress.ip_address(host).version
                      == 6 else socket.AF_INET)
        except ValueError:
            continue
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((host, 9))
                return s.getsockname()[0]
        except OSError as e:
            LOG.warning('No route to %(host)s to find the provisioning '
                        'address: %(err)s', {'host': host, 'err': e})
    LOG.warning('No seeder or tracker address to find the provisioning '
                'address from: accepting peers on every address')
    return '0.0.0.0'


def _url_list(node_uuid, text):
    try:
        urls = json.loads(text)
    except ValueError:
        urls = None
    if not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        raise certs.CertificateError(
            _('The sealed web seeds of node %s are not a list of URLs.')
            % node_uuid)
    return urls


#: Largest .torrent an agent fetches (about 4,096 pieces make ~300 KB).
MAX_TORRENT_BYTES = 64 * 1024 * 1024
#: Seconds to fetch the .torrent.
TORRENT_FETCH_TIMEOUT = 60


def _fetch_torrent(node_uuid, image, url, sha256):
    """The .torrent from the conductor's web server, base64 as if inline.

    The whole file must have the SHA-256 the conductor sent over IPA's
    TLS API: what a web server or the network altered is refused. No
    proxy: the conductor is on the provisioning network.
    """
    image = image or _('(unknown)')
    if not url or not sha256:
        raise errors.ImageDownloadError(
            image, _('node %s was given neither a torrent nor a torrent URL '
                     'with its SHA-256. Check the ironic-bt version of the '
                     'conductor.') % node_uuid)
    if parse.urlsplit(url).scheme not in ('http', 'https'):
        raise errors.ImageDownloadError(
            image, _('the torrent URL %(url)s of node %(node)s is not '
                     'HTTP(S)') % {'url': url, 'node': node_uuid})
    opener = request.build_opener(request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TORRENT_FETCH_TIMEOUT) as response:
            data = response.read(MAX_TORRENT_BYTES + 1)
    except (OSError, ValueError) as e:
        raise errors.ImageDownloadError(
            image, _('node %(node)s cannot fetch its torrent from %(url)s: '
                     '%(err)s. Check that the conductor\'s web server '
                     '([deploy]http_url) is reachable from the node.')
            % {'node': node_uuid, 'url': url, 'err': e})
    if len(data) > MAX_TORRENT_BYTES:
        raise errors.ImageDownloadError(
            image, _('the torrent at %(url)s for node %(node)s is larger '
                     'than %(max)d bytes') % {'url': url, 'node': node_uuid,
                                              'max': MAX_TORRENT_BYTES})
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise errors.ImageDownloadError(
            image, _('the torrent for node %(node)s from %(url)s has SHA-256 '
                     '%(got)s, not %(want)s: check what the conductor\'s web '
                     'server serves at that URL')
            % {'node': node_uuid, 'url': url, 'got': actual,
               'want': sha256})
    return base64.standard_b64encode(data).decode('ascii')


def _load_torrent(node_uuid, image, data):
    image = image or _('(unknown)')
    source = _('the torrent sent to node %s') % node_uuid
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise errors.ImageDownloadError(
            image, _('%(src)s is not base64: %(err)s. Check the ironic-bt '
                     'version of the conductor.') % {'src': source, 'err': e})
    try:
        return torrent.load(raw, source=source)
    except torrent.InvalidTorrent as e:
        raise errors.ImageDownloadError(image, str(e))


def _check_device(node_uuid, image, meta, device):
    """Refuse a device that is not a block device or is too small.

    The writer checks the size too, but refusing here names the node, and
    refuses a path that is not a block device: the writer would create a
    regular file there, in the ramdisk's memory.
    """
    try:
        size = bt_device.target_size(device)
    except (writer.TargetError, OSError) as e:
        raise _write_error(node_uuid, image, device, e)
    if size is None:
        raise BitTorrentWriteError(device, _(
            'Install device %(dev)s of node %(node)s is not a block device; '
            'refusing to write image %(image)s to it. Check the root device '
            'hints of the node.')
            % {'dev': device, 'node': node_uuid, 'image': image})
    if size < meta.size:
        raise BitTorrentWriteError(device, _(
            'Image %(image)s is %(img)d bytes, but install device %(dev)s of '
            'node %(node)s holds only %(size)d bytes; nothing was written. '
            'Choose a larger disk with root device hints or a smaller image.')
            % {'image': image, 'img': meta.size, 'dev': device,
               'node': node_uuid, 'size': size})


def _write_error(node_uuid, image, device, error):
    return BitTorrentWriteError(device, _(
        'Writing image %(image)s to device %(dev)s of node %(node)s failed: '
        '%(err)s') % {'image': image, 'dev': device, 'node': node_uuid,
                      'err': error})


def _finish_disk(node_uuid, device, configdrive):
    """Do what IPA's standby extension does after a whole-disk image.

    See ``StandbyExtension.prepare_image``: write the config drive, then
    record the partition UUIDs that the conductor asks
    for through ``standby.get_partition_uuids``.
    """
    # Unlike standby, no fix_gpt_partition here: moving the backup GPT
    # header to the end of a larger disk rewrites the primary header, and
    # the disk would no longer hold the image byte for byte. The config
    # drive code fixes the GPT itself when it has to add a partition.
    # The kernel still knows the partitions of what was on the disk before;
    # later steps look partitions up by device name. It only logs failures.
    disk_utils.partprobe(device)

    if configdrive:
        partition_utils.create_config_drive_partition(node_uuid, device,
                                                      configdrive)

    # An empty dict, not None, marks "written" for get_partition_uuids.
    partition_uuids = {}
    try:
        partition_uuids['root uuid'] = disk_utils.get_disk_identifier(device)
    except OSError as e:
        LOG.warning('Cannot read the disk identifier of %(dev)s of node '
                    '%(node)s, the hexdump tool may be missing: %(err)s',
                    {'dev': device, 'node': node_uuid, 'err': e})
    ext_base.get_extension('standby').partition_uuids = partition_uuids
