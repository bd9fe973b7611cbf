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

"""The ``bittorrent`` deploy interface.

Deploy steps, in the order the conductor runs them:

* ``deploy`` (100): boot the agent ramdisk.
* ``write_image_bittorrent`` (80): publish the image, then start the in-band
  step of the same name, which downloads the image from the swarm straight
  onto the root disk. The agent reports that step with priority 0; the
  conductor's step shadows it (``CustomAgentDeploy.get_deploy_steps`` drops
  in-band steps named like an out-of-band one), so it runs exactly once.
* ``prepare_instance_boot`` (60): as the direct interface does it (boot
  loader for UEFI and software RAID, boot from disk).
* ``tear_down_agent`` (40), ``switch_to_tenant_network`` (30),
  ``boot_instance`` (20): as for any custom agent deploy.

The agent's own ``write_image`` keeps priority 0 and does not run.

The image: :meth:`BitTorrentDeploy.prepare` caches the raw image on the
conductor and publishes it (see :mod:`ironic_bt.publisher`). The node's
publication is released when its deploy no longer needs it:

* on success, by the post-step hook of ``write_image_bittorrent``; the agent
  has stopped seeding by then, and other nodes still deploying the image
  keep it published (``prepare_instance_boot`` then drops the node's
  cached copy, as for the direct interface);
* on failure, abort or timeout, by :meth:`BitTorrentDeploy.clean_up`, which
  ironic's ``deploying_error_handler`` calls;
* on undeploy, by :meth:`BitTorrentDeploy.tear_down` and ``clean_up``;
* otherwise by a periodic check: ironic skips ``clean_up`` when a deploy
  fails through ``set_failed_state`` (a failed heartbeat, for example) and
  when a node is deleted in maintenance.

When an agent's download ends, it announces ``stopped`` to the built-in
tracker; :meth:`BitTorrentDeploy._check_finished` then asks that agent
for its step's result and moves the deploy on, as a heartbeat would, so
that a deploy does not wait up to 5 s for the agent's next heartbeat.

A conductor restart loses what it seeded. The write step publishes again
when it is entered, and while the agent downloads, its heartbeats publish
the image again; both are cheap because the torrent is cached.
"""

import base64
from concurrent import futures
import datetime
import hashlib
import json
import threading
import urllib.parse

from ironic.common import async_steps
from ironic.common import checksum_utils
from ironic.common import exception
from ironic.common.glance_service import service_utils
from ironic.common import image_service
from ironic.common import images
from ironic.common import metrics_utils
from ironic.common import states
from ironic.conductor import configdrive_utils
from ironic.conductor import periodics
from ironic.conductor import task_manager
from ironic.drivers import base
from ironic.drivers.modules import agent
from ironic.drivers.modules import agent_base
from ironic.drivers.modules import agent_client
from ironic.drivers.modules import deploy_utils
from ironic import objects
from oslo_config import cfg
from oslo_log import log

from ironic_bt.common import certs
from ironic_bt.common.i18n import _
from ironic_bt import exception as bt_exception
from ironic_bt import publisher

CONF = cfg.CONF
LOG = log.getLogger(__name__)
METRICS = metrics_utils.get_metrics_logger(__name__)

STEP = 'write_image_bittorrent'
#: The agent command that makes a key for an SSL swarm
#: (ipa_extension.extension).
SWARM_KEY_COMMAND = 'bittorrent.swarm_key'
#: driver_internal_info: hex v1 info-hash of the torrent being deployed.
INFO_HASH = 'bittorrent_info_hash'
#: driver_internal_info: what the agent reported (see RESULT_FIELDS).
RESULT = 'bittorrent_result'
#: driver_internal_info: download progress while the agent downloads.
PROGRESS = 'bittorrent_progress'
#: driver_internal_info: times the write step was started again because the
#: agent restarted while it ran.
AGENT_RESTARTS = 'bittorrent_agent_restarts'
RESULT_FIELDS = ('downloaded_bytes', 'downloaded_from_seeder_bytes',
                 'downloaded_from_web_seed_bytes', 'resumed_bytes',
                 'uploaded_bytes', 'seconds', 'sha256', 'size',
                 'hash_failures')

#: Arguments of the write step, for deploy templates: each replaces its
#: [bittorrent] option for the deploys of the flavors that require the
#: template's trait. (name: least value)
STEP_ARGS = {'linger_timeout': 0, 'stall_timeout': 10}
STEP_ARGSINFO = {
    'linger_timeout': {
        'description': _(
            'Most seconds the node keeps seeding the image to the other '
            'nodes of its swarm after it has verified its disk, a whole '
            'number; 0 stops at once. Replaces [bittorrent]linger_timeout '
            'for this deploy.'),
        'required': False,
    },
    'stall_timeout': {
        'description': _(
            'Seconds without a byte downloaded after which the node gives '
            'up and the deploy fails, a whole number of at least 10. '
            'Replaces [bittorrent]stall_timeout for this deploy.'),
        'required': False,
    },
}

#: A node in these states may still need its publication.
_DEPLOY_STATES = frozenset((states.DEPLOYING, states.DEPLOYWAIT,
                            states.DEPLOYHOLD))

PROPERTIES = dict(agent.REQUIRED_PROPERTIES, **agent_base.VENDOR_PROPERTIES)


def image_sha256(node):
    """The sha256 the written disk must have, when instance_info has it.

    Only for a raw image: the checksum of any other format is that of the
    file before the conductor converted it to raw, not of what is written.

    :param node: a node object.
    :returns: lower-case hex, or None.
    """
    i_info = node.instance_info
    if (i_info.get('image_disk_format') == 'raw'
            and (i_info.get('image_os_hash_algo') or '').lower() == 'sha256'
            and i_info.get('image_os_hash_value')):
        return i_info['image_os_hash_value'].lower()
    return None


def _on_write_step(node):
    """Whether the node's current deploy step is our write step."""
    return (node.deploy_step or {}).get('step') == STEP


def _waiting_for_write(node):
    """Whether the node waits for its agent to finish our in-band step."""
    return (node.provision_state == states.DEPLOYWAIT
            and not node.maintenance
            and (node.deploy_step or {}).get('interface') == 'deploy'
            and (node.deploy_step or {}).get('step') == STEP
            and not node.driver_internal_info.get(
                async_steps.DEPLOYMENT_POLLING))


def _web_seeds(node, publication):
    """The HTTP URLs of the image the agent may fall back to."""
    sources = CONF.bittorrent.web_seed_sources
    urls = list(publication.web_seeds) if 'conductor' in sources else []
    image_source = node.instance_info.get('image_source') or ''
    if ('image_source' in sources
            and node.instance_info.get('image_disk_format') == 'raw'
            and urllib.parse.urlsplit(image_source).scheme in ('http',
                                                               'https')):
        # The torrent was made from these very bytes (no conversion).
        urls.append(image_source)
    return urls


def _agent_takes(node, argument):
    """Whether the agent's write step takes ``argument``.

    From the steps the agent reported: an older ramdisk does not.
    """
    steps = node.driver_internal_info.get('agent_cached_deploy_steps') or {}
    for step in steps.get('deploy') or ():
        if step.get('step') == STEP:
            return argument in (step.get('argsinfo') or {})
    return False


def _step_options(node, args):
    """The [bittorrent] options of this deploy, with the step's arguments.

    :param args: the write step's arguments (a deploy template's), or None.
    :raises: InvalidParameterValue naming the argument when one is not a
        whole number of seconds in its range.
    """
    opts = CONF.bittorrent
    options = {name: getattr(opts, name) for name in STEP_ARGS}
    for name, value in (args or {}).items():
        least = STEP_ARGS[name]
        if isinstance(value, bool):
            number = None
        elif isinstance(value, float):
            number = int(value) if value.is_integer() else None
        else:
            try:
                number = int(value)
            except (TypeError, ValueError):
                number = None
        if number is None or number < least:
            raise exception.InvalidParameterValue(
                _('Node %(node)s: the deploy step %(step)s was given '
                  '%(name)s=%(value)r, which is not a whole number of seconds '
                  'of at least %(least)d. Check the deploy templates that '
                  'match the traits of its instance (%(traits)s).')
                % {'node': node.uuid, 'step': STEP, 'name': name,
                   'value': value, 'least': least,
                   'traits': ', '.join(
                       node.instance_info.get('traits') or ()) or '-'})
        options[name] = number
    return options


def _image_label(image_source):
    # The tracker shows it to operators: no URL query (temporary URLs carry
    # signatures) and no user information, just the image's last path part.
    return image_source.split('?', 1)[0].rstrip('/').rsplit('/', 1)[-1]


def _invalid(node, reason):
    return exception.InvalidParameterValue(
        _('Node %(node)s cannot be deployed with the bittorrent deploy '
          'interface: %(reason)s') % {'node': node.uuid, 'reason': reason})


def _record_result(node, result):
    """Record the agent's result; fail if the disk is not the image."""
    expected = image_sha256(node)
    if not isinstance(result, dict):
        if expected:
            raise bt_exception.AgentResultInvalid(
                node=node.uuid,
                reason=_('reported no deploy_result, so the image written '
                         'cannot be checked against sha256 %s') % expected)
        LOG.warning('The agent on node %(node)s reported no result for '
                    '%(step)s: %(result)s',
                    {'node': node.uuid, 'step': STEP, 'result': result})
        return
    summary = {field: result.get(field) for field in RESULT_FIELDS}
    node.set_driver_internal_info(RESULT, summary)
    node.del_driver_internal_info(PROGRESS)
    node.save()
    actual = str(summary['sha256'] or '').lower()
    if expected and actual != expected:
        raise bt_exception.ImageVerificationFailed(
            node=node.uuid, actual=actual or _('nothing'), expected=expected)
    LOG.info('Node %(node)s: wrote %(size)s bytes in %(secs)s s '
             '(downloaded %(down)s bytes, %(web)s of them over HTTP from web '
             'seeds; %(resumed)s bytes were on the disk already; uploaded '
             '%(up)s bytes to other nodes), sha256 %(sha)s',
             {'node': node.uuid, 'size': summary['size'],
              'secs': summary['seconds'],
              'down': summary['downloaded_bytes'],
              'web': summary['downloaded_from_web_seed_bytes'] or 0,
              'resumed': summary['resumed_bytes'] or 0,
              'up': summary['uploaded_bytes'], 'sha': summary['sha256']})


class _Finisher:
    """Runs the finish checks of :meth:`BitTorrentDeploy._check_finished`.

    At most ``WORKERS`` at once and one per node: a check that is still
    running when the next round comes is not started twice.
    """

    WORKERS = 4

    def __init__(self):
        self._lock = threading.Lock()
        self._running = set()
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self.WORKERS,
            thread_name_prefix='bittorrent-finish')

    def check(self, func, context, node_uuid):
        """Run ``func(context, node_uuid)`` unless it runs for that node.

        :returns: a future, or None if a check of the node is running.
        """
        with self._lock:
            if node_uuid in self._running:
                return None
            self._running.add(node_uuid)
        try:
            future = self._executor.submit(func, context, node_uuid)
        except Exception:
            self._done(node_uuid)
            raise
        future.add_done_callback(lambda _f: self._done(node_uuid))
        return future

    def _done(self, node_uuid):
        with self._lock:
            self._running.discard(node_uuid)


_finisher_instance = None
_finisher_lock = threading.Lock()


def _finisher():
    global _finisher_instance
    with _finisher_lock:
        if _finisher_instance is None:
            _finisher_instance = _Finisher()
        return _finisher_instance


class BitTorrentDeploy(agent.CustomAgentDeploy):
    """Deploys whole-disk images peer-to-peer with BitTorrent."""

    def get_properties(self):
        """Return the properties of the interface.

        :returns: dictionary of <property name>:<property description>.
        """
        return PROPERTIES

    def _update_instance_info(self, task):
        """Record what Glance knows of the node's image before deploying.

        ``CustomAgentDeploy.prepare`` calls this. Nova passes a Glance image
        as its ID alone; its checksums and disk format are Glance's, and
        ironic's image cache needs them to check the download. The
        ``direct`` interface gets them from
        ``build_instance_info_for_deploy``, which also stages the image for
        the agent's HTTP download (or a Swift temporary URL); this
        interface publishes the image itself, so it takes only the
        metadata, the way that function records it.
        """
        node = task.node
        i_info = node.instance_info
        image_source = i_info.get('image_source')
        if not (image_source and service_utils.is_glance_image(image_source)):
            return
        glance = image_service.GlanceImageService(context=task.context)
        image_info = glance.show(image_source)
        # ironic reads os_hash_algo and os_hash_value as attributes of
        # openstacksdk's Image, which names them hash_algo and hash_value:
        # they come back None, and the values land in the properties.
        props = image_info.get('properties') or {}
        i_info['image_checksum'] = image_info['checksum']
        i_info['image_os_hash_algo'] = (image_info.get('os_hash_algo')
                                        or props.get('os_hash_algo')
                                        or props.get('hash_algo'))
        i_info['image_os_hash_value'] = (image_info.get('os_hash_value')
                                         or props.get('os_hash_value')
                                         or props.get('hash_value'))
        i_info['image_disk_format'] = image_info['disk_format']
        i_info['image_container_format'] = image_info['container_format']
        node.instance_info = i_info
        node.save()

    @METRICS.timer('BitTorrentDeploy.validate')
    def validate(self, task):
        """Validate the node's deploy information and our options.

        :param task: a TaskManager instance.
        :raises: MissingParameterValue if instance_info lacks image_source
            or a checksum an HTTP image needs.
        :raises: InvalidParameterValue if the image is not a whole-disk
            image, its information is inconsistent, or a ``[bittorrent]``
            option is invalid.
        """
        super().validate(task)
        node = task.node
        publisher.check_config(node.uuid)

        if not task.driver.storage.should_write_image(task):
            LOG.debug('Skipping image validation for node %s: it boots '
                      'from a remote volume.', node.uuid)
            return

        i_info = node.instance_info
        image_source = i_info.get('image_source')
        deploy_utils.check_for_missing_params(
            {'instance_info.image_source': image_source},
            _('Node %s cannot be deployed with the bittorrent deploy '
              'interface: the image to deploy is not set') % node.uuid)

        if i_info.get('boot_iso'):
            raise _invalid(node, _(
                'instance_info boot_iso is set, which asks for a ramdisk '
                'deploy; unset it or use the ramdisk deploy interface.'))
        if image_service.is_container_registry_url(image_source):
            raise _invalid(node, _(
                'image_source %s is a container registry image, which this '
                'interface cannot publish yet; use a Glance, HTTP(S) or '
                'file image, or the direct deploy interface.')
                % image_source)
        if node.driver_internal_info.get('is_source_a_path'):
            raise _invalid(node, _(
                'image_source %s is a path, not an image file.')
                % image_source)

        image_type = i_info.get('image_type')
        if image_type and image_type not in images.VALID_IMAGE_TYPES:
            raise _invalid(node, _(
                'instance_info image_type "%(value)s" is not one of '
                '%(valid)s.') % {'value': image_type,
                                 'valid': ', '.join(
                                     sorted(images.VALID_IMAGE_TYPES))})
        if (image_type == images.IMAGE_TYPE_PARTITION
                or node.driver_internal_info.get('is_whole_disk_image')
                is False):
            raise _invalid(node, _(
                'image %s is a partition image (image_type is partition, or '
                'kernel and ramdisk are set); this interface writes '
                'whole-disk images only. Use a whole-disk image, or the '
                'direct deploy interface.') % image_source)

        self._validate_checksum(node, image_source)
        try:
            deploy_utils.validate_image_properties(
                task, deploy_utils.parse_instance_info(node))
        except exception.InvalidParameterValue as e:
            raise _invalid(node, e)

    @staticmethod
    def _validate_checksum(node, image_source):
        i_info = node.instance_info
        algo = i_info.get('image_os_hash_algo')
        value = i_info.get('image_os_hash_value')
        if bool(algo) != bool(value):
            raise exception.MissingParameterValue(_(
                'Node %s cannot be deployed with the bittorrent deploy '
                'interface: instance_info image_os_hash_algo and '
                'image_os_hash_value must be set together.') % node.uuid)
        if (algo or '').lower() == 'sha256' and not (
                len(value) == 64
                and all(c in '0123456789abcdefABCDEF' for c in value)):
            raise _invalid(node, _(
                'instance_info image_os_hash_value "%s" is not a sha256 '
                'hex digest.') % value)
        # Glance verifies its transfers and ironic hashes file:// images
        # itself; anything fetched from elsewhere must come with a
        # checksum (CVE-2024-47211), exactly as for the direct interface.
        if (not service_utils.is_glance_image(image_source)
                and not image_source.startswith('file://')
                and not value and not i_info.get('image_checksum')):
            raise exception.MissingParameterValue(_(
                'Node %s cannot be deployed with the bittorrent deploy '
                'interface: instance_info must hold image_checksum, or '
                'image_os_hash_algo and image_os_hash_value, for an image '
                'that is not in Glance.') % node.uuid)

    def _cache_image(self, task):
        """Fetch the image into ironic's cache as raw; cheap when cached."""
        node = task.node
        i_info = node.instance_info
        checksum, algo = checksum_utils.get_checksum_and_algo(i_info)
        _href, path, _format = deploy_utils.cache_instance_image(
            task.context, node, force_raw=True,
            expected_format=i_info.get('image_disk_format'),
            expected_checksum=checksum, expected_checksum_algo=algo)
        return path

    def _publish(self, task, force=False):
        """Publish the node's image, reusing its publication if it has one.

        :param force: cache and publish again even if the node holds a
            publication (a new deploy may use a different image).
        """
        node = task.node
        pub = publisher.get_publisher()
        if not force:
            publication = pub.publication(node.uuid)
            if publication is not None:
                return publication
        path = self._cache_image(task)
        return pub.publish(node.uuid, path, name=_image_label(
            node.instance_info['image_source']))

    def _release(self, task):
        node = task.node
        publisher.get_publisher().release(node.uuid)
        if node.del_driver_internal_info(INFO_HASH) is not None:
            node.save()

    @METRICS.timer('BitTorrentDeploy.prepare')
    @task_manager.require_exclusive_lock
    def prepare(self, task):
        """Prepare the deployment: boot setup, then publish the image.

        :param task: a TaskManager instance.
        :raises: InvalidBitTorrentConfig, ImagePublishFailed, and what
            ``CustomAgentDeploy.prepare`` and image caching raise.
        """
        super().prepare(task)
        node = task.node
        # Takeover and adoption call prepare too: those write no image.
        if (node.provision_state != states.DEPLOYING
                or not task.driver.storage.should_write_image(task)):
            return
        node.del_driver_internal_info(RESULT)
        # A new deploy's progress starts from nothing.
        node.del_driver_internal_info(PROGRESS)
        publication = self._publish(task, force=True)
        node.set_driver_internal_info(INFO_HASH, publication.info_hash)
        node.save()

    @METRICS.timer('BitTorrentDeploy.write_image_bittorrent')
    @base.deploy_step(priority=80, argsinfo=STEP_ARGSINFO)
    @task_manager.require_exclusive_lock
    def write_image_bittorrent(self, task, **args):
        """Deploy step: have the agent download the image from the swarm.

        :param task: a TaskManager instance.
        :param args: see :data:`STEP_ARGSINFO` (from deploy templates).
        :raises: InvalidParameterValue if an argument is out of range.
        :raises: ImagePublishFailed if the image cannot be published.
        :raises: InstanceDeployFailure if the agent does not accept the step.
        :returns: states.DEPLOYWAIT; the agent finishes the step.
        """
        if not task.driver.storage.should_write_image(task):
            return
        node = task.node
        # Checked before the image is published for it.
        step_opts = _step_options(node, args)
        publication = self._publish(task)
        node.set_driver_internal_info(INFO_HASH, publication.info_hash)
        node.del_driver_internal_info(AGENT_RESTARTS)
        node.save()
        return self._start_agent_step(task, publication, step_opts)

    def _start_agent_step(self, task, publication, step_opts):
        """Send the agent its write step.

        :param step_opts: the options the step's arguments may replace
            (see :func:`_step_options`).
        """
        node = task.node
        opts = CONF.bittorrent
        web_seeds = _web_seeds(node, publication)
        step = {
            'interface': 'deploy',
            'step': STEP,
            'args': {
                'trackers': list(publication.trackers),
                'peers': list(publication.peers),
                'image_sha256': image_sha256(node),
                'listen_port': opts.agent_listen_port,
                'linger_timeout': step_opts['linger_timeout'],
                'progress_interval': opts.progress_interval,
                'stall_timeout': step_opts['stall_timeout'],
                'web_seeds': web_seeds,
                'web_seed_delay': opts.web_seed_delay,
                'unreachable_timeout': opts.unreachable_timeout,
            },
        }
        if publication.torrent_url and _agent_takes(node, 'torrent_url'):
            # IPA logs every argument: a URL and the checksum to check the
            # file against, instead of hundreds of KB of piece hashes.
            step['args']['torrent_url'] = publication.torrent_url
            step['args']['torrent_sha256'] = hashlib.sha256(
                publication.meta.data).hexdigest()
        else:
            step['args']['torrent'] = base64.standard_b64encode(
                publication.meta.data).decode('ascii')
        client = agent_client.get_client(task)
        configdrive = configdrive_utils.get_configdrive_image(node)
        public_key = None
        if publication.authority is not None or configdrive:
            # With SSL off, the key is for the config drive only.
            public_key = self._agent_key(
                task, client, ssl_only=not configdrive)
        if publication.authority is not None:
            # The conductor's web seed is an unguessable URL in SSL swarms:
            # it travels sealed, with the announce key.
            secret = [url for url in web_seeds
                      if url in publication.web_seeds]
            step['args']['web_seeds'] = [url for url in web_seeds
                                         if url not in secret]
            step['args'].update(self._swarm_credentials(
                task, publication, public_key, secret))
        if configdrive:
            # The config drive holds the server's secrets (its admin
            # password, user data), and IPA logs step arguments.
            step['args']['sealed_configdrive'] = self._seal(
                node, public_key, configdrive.encode(), certs.CONFIGDRIVE)
            step['args']['sealed_for'] = public_key
        LOG.info('Node %(node)s: downloading torrent %(ih)s (%(size)d '
                 'bytes) from trackers %(trackers)s and peers %(peers)s, '
                 'with %(web)d web seeds as the fallback',
                 {'node': node.uuid, 'ih': publication.info_hash,
                  'size': publication.meta.size,
                  'trackers': publication.trackers,
                  'peers': publication.peers, 'web': len(web_seeds)})
        return agent_base.execute_step(task, step, 'deploy', client=client)

    @staticmethod
    def _agent_key(task, client, ssl_only=False):
        """Have the agent make a key; return its public key (PEM).

        The agent keeps the private key (``bittorrent.swarm_key``); what
        the conductor sends it sealed for that key (:func:`certs.seal`),
        only the agent can read, so no step argument, log or node field
        holds a secret.

        :param ssl_only: the key is needed for the SSL swarm alone (no
            config drive), so turning SSL off is a way out.
        """
        node = task.node
        try:
            # The agent's own extension command: ironic's AgentClient has
            # no public method for commands of out-of-tree extensions.
            reply = client._command(node=node, method=SWARM_KEY_COMMAND,
                                    params={}, wait=True)
        except exception.AgentAPIError as e:
            check = (_('Check that its ramdisk has this version of '
                       'ironic-bt (the "bittorrent" IPA extension), or set '
                       '[bittorrent]ssl to False.') if ssl_only
                     else _('Check that its ramdisk has this version of '
                            'ironic-bt (the "bittorrent" IPA extension).'))
            raise bt_exception.SwarmKeyFailed(node=node.uuid, reason=e,
                                              check=check)
        except exception.IronicException as e:
            # The agent is unreachable or busy.
            raise bt_exception.SwarmKeyFailed(
                node=node.uuid, reason=e,
                check=_('Check that the agent is running and reachable.'))
        if (reply or {}).get('command_error'):
            raise bt_exception.SwarmKeyFailed(
                node=node.uuid, reason=_('the agent failed %(cmd)s: %(err)s')
                % {'cmd': SWARM_KEY_COMMAND,
                   'err': reply['command_error']},
                check=_('Check the agent\'s log.'))
        try:
            return reply['command_result']['public_key']
        except (KeyError, TypeError):
            raise bt_exception.SwarmKeyFailed(
                node=node.uuid,
                reason=_('the agent answered %s without a public key')
                % SWARM_KEY_COMMAND,
                check=_('Check the version of ironic-bt in its ramdisk.'))

    @staticmethod
    def _seal(node, public_key, secret, purpose):
        """Seal a secret for the agent's key (see :meth:`_agent_key`)."""
        try:
            return certs.seal(public_key, secret, purpose)
        except certs.CertificateError as e:
            raise bt_exception.SwarmKeyFailed(
                node=node.uuid, reason=e,
                check=_('Check the version of ironic-bt in its ramdisk.'))

    @staticmethod
    def _swarm_credentials(task, publication, public_key, web_seeds):
        """Certify the agent's key for this deploy's SSL swarm.

        Only the agent's public key and the certificate travel, and the
        node's announce key travels sealed for that key. The certificate
        expires after ``[bittorrent]ssl_certificate_lifetime``.

        :param public_key: PEM, from :meth:`_agent_key`.
        :param web_seeds: URLs to seal too (the conductor's web seed).
        :returns: the step arguments ``ssl_ca``, ``ssl_certificate``,
            ``sealed_announce_key`` and ``sealed_web_seeds``.
        """
        node = task.node
        authority = publication.authority
        lifetime = CONF.bittorrent.ssl_certificate_lifetime
        try:
            certificate = authority.issue(
                node.uuid, public_key, datetime.timedelta(seconds=lifetime))
            sealed = certs.seal(public_key,
                                publication.announce_key.encode('ascii'),
                                certs.ANNOUNCE_KEY)
            sealed_web_seeds = (certs.seal(public_key,
                                           json.dumps(web_seeds).encode(),
                                           certs.WEB_SEEDS)
                                if web_seeds else None)
        except certs.CertificateError as e:
            # The agent's key, or the authority itself (expired).
            raise bt_exception.SwarmKeyFailed(
                node=node.uuid, reason=e,
                check=_('Check [bittorrent]ssl_authority_dir and the '
                        'version of ironic-bt in its ramdisk.'))
        LOG.info('Node %(node)s: issued its certificate for the SSL swarm, '
                 'valid for %(s)d s', {'node': node.uuid, 's': lifetime})
        return {'ssl_ca': authority.certificate,
                'ssl_certificate': certificate,
                'sealed_announce_key': sealed,
                'sealed_web_seeds': sealed_web_seeds}

    # Boot preparation exactly as the direct interface does it after writing
    # a whole-disk image: read the partition UUIDs the agent recorded,
    # install a boot loader where needed (UEFI, software RAID) and make the
    # node boot from disk. CustomAgentDeploy's step only calls the boot
    # interface, which leaves UEFI nodes without a boot entry.
    prepare_instance_boot = agent.AgentDeploy.prepare_instance_boot
    prepare_instance_to_boot = agent.AgentDeploy.prepare_instance_to_boot
    configure_local_boot = agent.AgentDeploy.configure_local_boot

    @staticmethod
    @agent_base.post_deploy_step_hook(interface='deploy', step=STEP)
    def _write_image_bittorrent_done(task, command):
        """Record what the agent did, check it, release the publication.

        :param task: a TaskManager instance.
        :param command: the agent's finished command.
        :raises: AgentResultInvalid if the agent reported no result but the
            image's sha256 is known.
        :raises: ImageVerificationFailed if the disk's sha256 differs from
            the image's.
        """
        node = task.node
        try:
            _record_result(node, (command.get('command_result') or {}).get(
                'deploy_result'))
        finally:
            publisher.get_publisher().release(node.uuid)

    def process_next_step(self, task, step_type, **kwargs):
        """Go on with the steps, running ours again on a restarted agent.

        An agent that restarts forgets its commands. Ironic takes an agent
        with no command for a freshly booted one after a reboot a step
        asked for and moves on to the next step, which here would leave a
        half-written disk behind. While our write step runs, such an agent
        gets the step again instead (it resumes from the pieces already on
        the disk), at most ``[bittorrent]agent_restart_retries`` times.
        """
        node = task.node
        if step_type == 'deploy' and _waiting_for_write(node):
            commands = agent_client.get_client(task).get_commands_status(
                node)
            if not any(c.get('command_name') == 'execute_deploy_step'
                       for c in commands or ()):
                return self._restart_write(task)
        return super().process_next_step(task, step_type, **kwargs)

    def _restart_write(self, task):
        node = task.node
        restarts = node.driver_internal_info.get(AGENT_RESTARTS, 0) + 1
        limit = CONF.bittorrent.agent_restart_retries
        if restarts > limit:
            raise exception.InstanceDeployFailure(
                _('The agent of node %(node)s restarted while writing the '
                  'image %(n)d times; [bittorrent]agent_restart_retries '
                  'allows %(limit)d. Check the agent\'s console and logs '
                  'for why it restarts (out of memory, a crash, a reboot).')
                % {'node': node.uuid, 'n': restarts, 'limit': limit})
        node.set_driver_internal_info(AGENT_RESTARTS, restarts)
        node.save()
        LOG.warning('The agent of node %(node)s restarted while writing the '
                    'image: starting %(step)s again (retry %(n)d of '
                    '%(limit)d); it resumes from what is on the disk',
                    {'node': node.uuid, 'step': STEP, 'n': restarts,
                     'limit': limit})
        # The step's arguments (a deploy template's) are those it started
        # with. Publishing is idempotent, and seeds again after a conductor
        # restart.
        step_opts = _step_options(node, (node.deploy_step or {}).get('args'))
        return self._start_agent_step(task, self._publish(task), step_opts)

    @METRICS.timer('BitTorrentDeploy.heartbeat')
    def heartbeat(self, task, callback_url, agent_version,
                  agent_verify_ca=None, agent_status=None,
                  agent_status_message=None):
        """Process a heartbeat, publishing again after a conductor restart.

        :param task: task to work with.
        :param callback_url: agent HTTP API URL.
        :param agent_version: the version of the agent that is heartbeating.
        :param agent_verify_ca: TLS certificate for the agent.
        :param agent_status: status of the heartbeating agent.
        :param agent_status_message: message describing agent_status.
        """
        self._resume_seeding(task)
        super().heartbeat(task, callback_url, agent_version,
                          agent_verify_ca=agent_verify_ca,
                          agent_status=agent_status,
                          agent_status_message=agent_status_message)

    def _resume_seeding(self, task):
        node = task.node
        if (not _waiting_for_write(node)
                or publisher.get_publisher().publication(node.uuid)):
            return
        expected = node.driver_internal_info.get(INFO_HASH)
        try:
            publication = self._publish(task)
        except Exception as e:
            # The agent's stall timeout fails the deploy if nobody seeds.
            LOG.warning('Cannot publish the image of node %(node)s again '
                        'while its agent downloads it: %(err)s',
                        {'node': node.uuid, 'err': e})
            return
        if expected and publication.info_hash != expected:
            LOG.warning('The image of node %(node)s changed while its agent '
                        'downloads it: torrent %(new)s instead of %(old)s; '
                        'not seeding it',
                        {'node': node.uuid, 'new': publication.info_hash,
                         'old': expected})
            publisher.get_publisher().release(node.uuid)
            return
        LOG.info('Seeding torrent %(ih)s again for node %(node)s, whose '
                 'agent is downloading it', {'ih': publication.info_hash,
                                             'node': node.uuid})

    @METRICS.timer('BitTorrentDeploy.clean_up')
    @task_manager.require_exclusive_lock
    def clean_up(self, task):
        """Release the node's publication and clean up the deployment.

        :param task: a TaskManager instance.
        """
        # First, so that the image cache clean-up below can evict the image
        # if our link was the last other one.
        self._release(task)
        super().clean_up(task)

    @METRICS.timer('BitTorrentDeploy.tear_down')
    @task_manager.require_exclusive_lock
    def tear_down(self, task):
        """Release the node's publication and tear down the deployment.

        :param task: a TaskManager instance.
        :returns: states.DELETED.
        """
        self._release(task)
        if task.node.del_driver_internal_info(RESULT) is not None:
            task.node.save()
        return super().tear_down(task)

    @periodics.node_periodic(
        purpose='recording BitTorrent download progress',
        spacing=lambda: CONF.bittorrent.progress_record_interval,
        enabled=lambda: CONF.bittorrent.progress_record_interval > 0,
        filters={'provision_state': states.DEPLOYWAIT},
        predicate=lambda n: n.uuid in publisher.get_publisher().nodes())
    def _record_progress(self, task, manager, context):
        """Show each downloading node's progress in driver_internal_info.

        The built-in tracker knows every node's ``left`` from its announces;
        operators see it with ``baremetal node show``.

        :param task: a TaskManager instance with a shared lock.
        :param manager: the conductor manager.
        :param context: an admin context.
        """
        node = task.node
        progress = publisher.get_publisher().progress(node.uuid)
        recorded = node.driver_internal_info.get(PROGRESS, {}).get('left')
        # Progress shown to operators never goes back: an announce that
        # says more is left (a stale one, or an agent that started again)
        # waits until the node is past what was shown.
        if progress is None or (recorded is not None
                                and progress['left'] >= recorded):
            return
        # NodeLocked from here just skips this round (node_periodic).
        task.upgrade_lock(retry=False)
        if (task.node.provision_state != states.DEPLOYWAIT
                or not _on_write_step(task.node)):
            return
        task.node.set_driver_internal_info(PROGRESS, progress)
        task.node.save()
        LOG.info('Node %(node)s: %(pct).1f%% of the image downloaded, '
                 '%(left)d bytes left', {'node': node.uuid,
                                         'pct': progress['percent'],
                                         'left': progress['left']})

    @periodics.node_periodic(
        purpose='checking the power of nodes whose agent went silent',
        spacing=lambda: CONF.bittorrent.progress_record_interval,
        enabled=lambda: CONF.bittorrent.progress_record_interval > 0,
        filters={'provision_state': states.DEPLOYWAIT},
        predicate_extra_fields=('deploy_step',),
        predicate=lambda n: (_on_write_step(n) and
                             n.uuid in publisher.get_publisher().nodes()))
    def _check_power_lost(self, task, manager, context):
        """Fail at once the deploy of a node that lost power mid-write.

        Its agent stops announcing to the built-in tracker. After two
        announce intervals of silence the conductor asks the node's BMC;
        if it reports the power off, the deploy fails now, naming the
        power, rather than after [conductor]deploy_callback_timeout as
        "waiting for callback". (With an external tracker the conductor
        hears no announces, and only the callback timeout applies.)

        :param task: a TaskManager instance with a shared lock.
        :param manager: the conductor manager.
        :param context: an admin context.
        """
        node = task.node
        progress = publisher.get_publisher().progress(node.uuid)
        if (progress is None or progress['seconds_since_seen']
                <= 2 * CONF.bittorrent.announce_interval):
            return
        try:
            power = task.driver.power.get_power_state(task)
        except Exception as e:
            LOG.warning('Node %(node)s: its agent has not announced for '
                        '%(s)d s, and its power state could not be read: '
                        '%(err)s', {'node': node.uuid,
                                    's': progress['seconds_since_seen'],
                                    'err': e})
            return
        if power != states.POWER_OFF:
            return
        # NodeLocked from here just skips this round (node_periodic).
        task.upgrade_lock(retry=False)
        if (task.node.provision_state != states.DEPLOYWAIT
                or not _on_write_step(task.node)):
            return
        msg = (_('Node %(node)s lost power while writing the image over '
                 'BitTorrent: its BMC reports the power off, and its agent '
                 'last announced %(s)d s ago, with %(pct).1f%% of the image '
                 'downloaded. Check the node\'s power supply and its BMC '
                 'event log, then deploy again.')
               % {'node': node.uuid, 's': progress['seconds_since_seen'],
                  'pct': progress['percent']})
        LOG.error(msg)
        deploy_utils.set_failed_state(task, msg, collect_logs=False)

    @periodics.periodic(
        spacing=lambda: CONF.bittorrent.finish_check_interval,
        enabled=lambda: CONF.bittorrent.finish_check_interval > 0)
    def _check_finished(self, manager, context):
        """Move on the deploys whose agent just ended its download.

        The built-in tracker reports the nodes whose agent announced
        ``stopped`` (:meth:`ironic_bt.publisher.Publisher.stopped_nodes`).
        Each is checked in a worker thread of its own (see
        :func:`_finisher`), as ironic handles heartbeats in parallel: a
        deploy that moves on runs its remaining steps there.

        :param manager: the conductor manager.
        :param context: an admin context.
        :returns: the futures of the checks started now.
        """
        started = []
        for node_uuid in publisher.get_publisher().stopped_nodes(
                CONF.bittorrent.finish_check_window):
            future = _finisher().check(self._finish_write, context,
                                       node_uuid)
            if future is not None:
                started.append(future)
        return started

    @staticmethod
    def _finish_write(context, node_uuid):
        """Ask the agent for its step's result, as a heartbeat does it.

        A finished step runs the post-step hook and the next steps, a
        failed one fails the deploy, a running one is asked again next
        time. The announce only prompted the question; the answer comes
        from the agent, over its TLS API, with its token.
        """
        pub = publisher.get_publisher()
        try:
            with task_manager.acquire(
                    context, node_uuid, shared=False, retry=False,
                    purpose='checking a finished BitTorrent download'
                    ) as task:
                node = task.node
                if not _waiting_for_write(node):
                    pub.forget_stopped(node_uuid)
                    return
                # Ironic's own handling of a heartbeat in "wait call-back",
                # failures included; this class inherits it.
                task.driver.deploy._heartbeat_deploy_wait(task)
                if node.provision_state != states.DEPLOYWAIT:
                    pub.forget_stopped(node_uuid)
        except exception.NodeLocked:
            # A heartbeat or an operator holds it; ask again next time.
            LOG.debug('Node %s is locked; checking its finished download '
                      'again later', node_uuid)
        except exception.NodeNotFound:
            pub.forget_stopped(node_uuid)
        except Exception:
            # In a worker thread nobody would see it otherwise; the
            # heartbeat still moves the deploy on.
            LOG.exception('Cannot check the finished download of node %s',
                          node_uuid)

    @periodics.node_periodic(
        purpose='seeding again for nodes downloading after a restart',
        spacing=lambda: CONF.bittorrent.resume_check_interval,
        enabled=lambda: CONF.bittorrent.resume_check_interval > 0,
        filters={'provision_state': states.DEPLOYWAIT},
        predicate_extra_fields=('deploy_step',),
        predicate=lambda n: (_on_write_step(n) and
                             n.uuid not in publisher.get_publisher().nodes()))
    def _resume_publications(self, task, manager, context):
        """Seed again for the agents still downloading.

        Without waiting for their heartbeats (see :meth:`_resume_seeding`).

        :param task: a TaskManager instance with a shared lock.
        :param manager: the conductor manager.
        :param context: an admin context.
        """
        self._resume_seeding(task)

    @periodics.periodic(
        spacing=lambda: CONF.bittorrent.resume_check_interval or 5,
        enabled=publisher.shares_its_tracker)
    def _serve_shared_tracker(self, manager, context):
        """Run the built-in tracker that other conductors share.

        Started within seconds of the conductor, and again after a failure
        to listen, whether or not this conductor deploys anything itself.

        :param manager: the conductor manager.
        :param context: an admin context.
        """
        try:
            publisher.get_publisher().serve_shared_tracker()
        except OSError as e:
            LOG.error('The built-in tracker that other conductors share '
                      '([bittorrent]tracker_secret is set) cannot start: '
                      '%(err)s. Check that [bittorrent]tracker_listen_host '
                      'is an address of this host and that no other service '
                      'uses [bittorrent]tracker_port; trying again in '
                      '%(s)d s.', {'err': e,
                                   's': CONF.bittorrent.resume_check_interval
                                   or 5})
        except certs.CertificateError as e:
            LOG.error('The built-in tracker that other conductors share '
                      'cannot start: %s. Check [bittorrent]'
                      'ssl_authority_dir.', e)

    @periodics.periodic(
        spacing=lambda: CONF.bittorrent.publication_check_interval,
        enabled=lambda: CONF.bittorrent.publication_check_interval > 0)
    def _check_publications(self, manager, context):
        """Release publications of nodes that no longer deploy.

        :param manager: the conductor manager.
        :param context: an admin context.
        """
        for node_uuid in publisher.get_publisher().nodes():
            try:
                node = objects.Node.get_by_uuid(context, node_uuid)
            except exception.NodeNotFound:
                LOG.info('Releasing the image published for node %s, which '
                         'was deleted', node_uuid)
                publisher.get_publisher().release(node_uuid)
                continue
            if node.provision_state in _DEPLOY_STATES:
                continue
            try:
                with task_manager.acquire(
                        context, node_uuid, shared=False, retry=False,
                        purpose='releasing a BitTorrent publication') as task:
                    # The state may have changed before we got the lock.
                    if task.node.provision_state in _DEPLOY_STATES:
                        continue
                    LOG.info('Releasing the image published for node '
                             '%(node)s, which is %(state)s',
                             {'node': node_uuid,
                              'state': task.node.provision_state})
                    self._release(task)
            except exception.NodeLocked:
                LOG.debug('Node %s is locked; checking its publication '
                          'again later', node_uuid)
            except exception.NodeNotFound:
                publisher.get_publisher().release(node_uuid)
