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

"""Errors of the conductor side.

They subclass ironic's exceptions so that the conductor handles them like
its own: an :class:`~ironic.common.exception.InvalidParameterValue` refuses
a request at the API, an
:class:`~ironic.common.exception.InstanceDeployFailure` fails the deploy and
lands in ``node.last_error``. Each message names the node, what was
attempted, what went wrong and what to check.
"""

from ironic.common import exception

from ironic_bt.common.i18n import _


class InvalidBitTorrentConfig(exception.InvalidParameterValue):
    _msg_fmt = _('Node %(node)s cannot be deployed with the bittorrent '
                 'deploy interface: option [bittorrent]%(option)s is '
                 '"%(value)s": %(reason)s. Fix it in the configuration of '
                 'this conductor and restart it.')


class InvalidBitTorrentOption(exception.InvalidParameterValue):
    _msg_fmt = _('Node %(node)s cannot be deployed with the bittorrent '
                 'deploy interface: option [bittorrent]%(option)s is not '
                 'valid: %(reason)s; %(hint)s. Fix it in the configuration '
                 'of this conductor and restart it.')


class ImagePublishFailed(exception.InstanceDeployFailure):
    _msg_fmt = _('Cannot publish image %(image)s of node %(node)s over '
                 'BitTorrent: %(reason)s')


class DataDirCrossDevice(ImagePublishFailed):
    _msg_fmt = _('Cannot publish image %(image)s of node %(node)s over '
                 'BitTorrent: the seeder keeps a hard link to the image in '
                 '[bittorrent]data_dir (%(data_dir)s), so that the image '
                 'cache does not evict it while it is seeded, but that '
                 'directory is on a different file system. Set '
                 '[bittorrent]data_dir to a directory on the same file '
                 'system as the image cache ([pxe]instance_master_path and '
                 '[pxe]images_path).')


class PublisherStartFailed(ImagePublishFailed):
    _msg_fmt = _('Cannot publish image %(image)s of node %(node)s over '
                 'BitTorrent: the %(service)s of this conductor cannot '
                 'start: %(reason)s. Check %(check)s.')


class AgentResultInvalid(exception.InstanceDeployFailure):
    _msg_fmt = _('The agent on node %(node)s finished deploy step '
                 'write_image_bittorrent, but %(reason)s. Check that the '
                 'deploy ramdisk carries the same ironic-bt version as the '
                 'conductor.')


class ImageVerificationFailed(exception.InstanceDeployFailure):
    _msg_fmt = _('The image written to node %(node)s does not match the '
                 'requested image: the agent read sha256 %(actual)s back '
                 'from the disk, but instance_info image_os_hash_value is '
                 '%(expected)s. The disk does not hold the requested image. '
                 'Check the checksum in instance_info (or in the image '
                 'service) and that the image did not change while it was '
                 'deployed, then deploy again.')


class SwarmKeyFailed(exception.InstanceDeployFailure):
    _msg_fmt = _('Node %(node)s cannot get a key for the secrets of its '
                 'deploy (its SSL swarm certificate, its config drive): '
                 '%(reason)s. %(check)s')
