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

"""Publishing cached images to the swarm from the conductor.

One :class:`Publisher` per conductor process (:func:`get_publisher`). On
first use it starts the seeder and, unless ``[bittorrent]tracker_url`` names
an external tracker, the built-in tracker, so operators add no service.

An image is published once however many nodes deploy it, and unpublished
when the last of them releases it: publications are reference-counted by
node, and a node holds at most one.

Files in ``[bittorrent]data_dir``:

``seeding/<info-hash>.img``
    A hard link to the raw image in ironic's image cache, held while the
    image is seeded. The cache evicts master images whose link count is 1;
    our link keeps the data alive until the last deploy needing it is done,
    whatever happens to the node's own copy.
``torrents/<dev>-<inode>-<size>-<mtime>.torrent``
    The .torrent of an image file, keyed by the file's identity, so that
    publishing the same cached image again (for the next node, or after a
    conductor restart) does not read and hash the whole image again.

Nothing else survives a conductor restart: the seeder and the tracker start
empty. Links left by the previous process are removed when the publisher
starts, and the deploy interface publishes again whatever a node still
needs (when the write step is entered, or on the agent's next heartbeat
while it downloads); that is cheap because the .torrent is cached.
"""

import contextlib
import dataclasses
import datetime
import errno
import ipaddress
import os
import secrets
import threading
import time

from ironic.conf import CONF   # [deploy]http_root and http_url too
from oslo_log import log
from oslo_utils import netutils

from ironic_bt.common import certs
from ironic_bt.common.i18n import _
from ironic_bt.common import publication
from ironic_bt.common import torrent
from ironic_bt import conf  # noqa: F401 (registers [bittorrent])
from ironic_bt import exception
from ironic_bt import seeder as seeder_mod
from ironic_bt import torrent_cache
from ironic_bt.tracker import server
from ironic_bt.tracker import swarm_table

LOG = log.getLogger(__name__)

SEEDING_DIR = 'seeding'
#: Sub-directory of [deploy]http_root holding the web seed links.
WEB_SEED_DIR = 'bittorrent'
#: Seconds the seeder's certificate in SSL swarms is valid; it is renewed
#: when half of that has passed. Its key never leaves the conductor.
SEEDER_CERTIFICATE_LIFETIME = 24 * 3600


@dataclasses.dataclass(frozen=True)
class Publication:
    """What a node's agent needs to join the swarm of its image."""

    #: The :class:`ironic_bt.common.torrent.Metainfo` of the image.
    meta: torrent.Metainfo
    #: Announce URLs for the agent.
    trackers: list
    #: ``host:port`` of the conductor's seeder, for the agent to connect to.
    peers: list
    #: HTTP URLs of the conductor's copy of the image (BEP 19 web seeds),
    #: for the agent's fallback when the seeder is out of reach; secret in
    #: SSL swarms (an unguessable name).
    web_seeds: list = dataclasses.field(default_factory=list, repr=False)
    #: The :class:`ironic_bt.common.certs.Authority` of an SSL swarm, which
    #: issues the node's certificate; None for a plain torrent.
    authority: certs.Authority = None
    #: The node's announce key (a secret: the agent adds it to its tracker
    #: URLs, see :func:`ironic_bt.common.publication.announce_key`).
    announce_key: str = dataclasses.field(default=None, repr=False)
    #: HTTP URL of the .torrent (not a secret), or None: then the torrent
    #: goes to the agent inline.
    torrent_url: str = None

    @property
    def info_hash(self):
        return self.meta.info_hash


@dataclasses.dataclass
class _Image:
    meta: torrent.Metainfo
    link: str
    name: str
    nodes: set
    #: The link in [deploy]http_root that the web seed URL serves, if any
    #: (an unguessable name in SSL swarms).
    web_link: str = dataclasses.field(default=None, repr=False)
    #: The .torrent in [deploy]http_root that agents fetch, if any.
    torrent_file: str = None


def _ip(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None     # a host name; the agents resolve it


def _host_port(host, port):
    return '%s:%d' % (netutils.escape_ipv6(host), port)


def _overlap(host_a, host_b):
    """Whether listening on both addresses may need the same socket."""
    a, b = _ip(host_a), _ip(host_b)
    if (a is not None and a.is_unspecified) or (
            b is not None and b.is_unspecified):
        return True
    return host_a == host_b


def shares_its_tracker():
    """Whether this conductor runs the built-in tracker others share.

    So it does with ``[bittorrent]tracker_secret`` and no ``tracker_url``.
    A ``tracker_url`` that is not valid counts as set (the tracker is not
    started): :func:`check_config` reports it for each node, and the
    conductor itself still starts.
    """
    opts = CONF.bittorrent
    if not opts.tracker_secret:
        return False
    try:
        return not opts.tracker_url
    except ValueError as e:
        LOG.error('[bittorrent]tracker_url is not valid, so the built-in '
                  'tracker that other conductors share does not start: %s',
                  e)
        return False


def check_config(node_uuid):
    """Check the ``[bittorrent]`` options a deploy depends on.

    :param node_uuid: the node about to be deployed, for the message.
    :raises: InvalidBitTorrentConfig naming the option at fault.
    """
    opts = CONF.bittorrent

    def invalid(option, value, reason):
        raise exception.InvalidBitTorrentConfig(
            node=node_uuid, option=option, value=value, reason=reason)

    def read(option, hint):
        # oslo.config checks the value's type when it is read; a value
        # from a file, the environment or a default substituted from
        # another option ($my_ip) is refused with a ValueError.
        try:
            return getattr(opts, option)
        except ValueError as e:
            raise exception.InvalidBitTorrentOption(
                node=node_uuid, option=option, hint=hint,
                reason=str(e).split(' is not valid: ', 1)[-1])

    host = read('advertise_host',
                _('it must be the address the agents reach this conductor '
                  'at on the provisioning network'))
    address = _ip(host)
    if address is not None and address.is_unspecified:
        invalid('advertise_host', host,
                _('agents cannot connect to the unspecified address; set '
                  'it (or [DEFAULT]my_ip, its default) to the address of '
                  'this conductor on the provisioning network'))
    tracker_url = read('tracker_url', _('it must be an http://, https:// or '
                                        'udp:// announce URL'))
    if (not tracker_url and opts.seeder_port
            and opts.seeder_port == opts.tracker_port
            and _overlap(opts.seeder_listen_host, opts.tracker_listen_host)):
        invalid('tracker_port', opts.tracker_port,
                _('it is also [bittorrent]seeder_port; the built-in tracker '
                  'and the seeder both listen on TCP, so their ports must '
                  'differ'))


class Publisher:
    """The seeder and the tracker of one conductor process.

    Thread-safe: conductor workers publish and release concurrently. An
    image is hashed outside the main lock, so that nodes deploying other
    images are not held up while a large image is hashed; nodes deploying
    the same image wait for one hashing pass and share its result.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._seeder = None
        self._authority = None
        self._announce_secret = None
        self._image_roots = {}          # hex v1 info-hash -> Authority
        self._seeder_credentials = {}   # hex v1 info-hash -> (creds, expiry)
        self._table = None
        self._tracker = None
        self._images = {}       # hex v1 info-hash -> _Image
        self._nodes = {}        # node UUID -> hex v1 info-hash
        self._stopped = {}      # node UUID -> when its agent announced stop
        self._torrents = torrent_cache.TorrentCache(lambda: self._data_dir)

    # Paths are read from the options on use, so that tests (and a
    # publisher started after a configuration reload) see current values.
    @property
    def _data_dir(self):
        return CONF.bittorrent.data_dir

    def _seeding_path(self, info_hash):
        return os.path.join(self._data_dir, SEEDING_DIR, info_hash + '.img')

    @staticmethod
    def _http_dir():
        """Where the conductor serves torrents and web seeds, if anywhere."""
        if not CONF.deploy.http_root or not CONF.deploy.http_url:
            return None
        return os.path.join(CONF.deploy.http_root, WEB_SEED_DIR)

    def _web_seed_dir(self):
        if 'conductor' not in CONF.bittorrent.web_seed_sources:
            return None
        return self._http_dir()

    @staticmethod
    def _http_url(path):
        return '/'.join((CONF.deploy.http_url.rstrip('/'), WEB_SEED_DIR,
                         os.path.basename(path)))

    @property
    def started(self):
        return self._seeder is not None

    def _start_locked(self, node_uuid, image_path):
        if self._seeder is not None:
            return
        check_config(node_uuid)
        opts = CONF.bittorrent
        try:
            os.makedirs(os.path.join(self._data_dir, SEEDING_DIR),
                        exist_ok=True)
            os.makedirs(self._torrents.directory, exist_ok=True)
        except OSError as e:
            raise exception.PublisherStartFailed(
                image=image_path, node=node_uuid, service=_('seeder'),
                reason=e, check=_('[bittorrent]data_dir'))
        self._sweep(start=True)
        try:
            authority = self._load_authority_locked()
        except (certs.CertificateError, OSError) as e:
            raise exception.PublisherStartFailed(
                image=image_path, node=node_uuid,
                service=_('SSL swarm authority'), reason=e,
                check=_('[bittorrent]ssl_authority_dir: it holds ca.pem and '
                        'its key ca.key, or nothing'))

        started_tracker = False
        if not opts.tracker_url and self._tracker is None:
            try:
                self._start_tracker_locked()
            except OSError as e:
                raise exception.PublisherStartFailed(
                    image=image_path, node=node_uuid,
                    service=_('built-in tracker'), reason=e,
                    check=_('that [bittorrent]tracker_listen_host is an '
                            'address of this host and that no other '
                            'service uses [bittorrent]tracker_port'))
            started_tracker = True
        table = self._table
        try:
            seeder = seeder_mod.Seeder(
                listen_host=opts.seeder_listen_host,
                listen_port=opts.seeder_port,
                upload_rate_limit=opts.upload_rate_limit,
                ssl=authority is not None,
                # Other conductors announce to this tracker too.
                shared=bool(opts.tracker_url or opts.tracker_secret))
        except (seeder_mod.SeederError, RuntimeError) as e:
            if started_tracker:
                self._stop_tracker_locked()
            raise exception.PublisherStartFailed(
                image=image_path, node=node_uuid, service=_('seeder'),
                reason=e,
                check=_('that [bittorrent]seeder_listen_host is an address '
                        'of this host and that no other service uses '
                        '[bittorrent]seeder_port'))
        self._seeder = seeder
        self._seeder_credentials = {}
        if table is not None:
            seeder.serve_clients(table.has_clients())
        address = _ip(opts.advertise_host)
        if address is not None and address.is_loopback:
            LOG.warning('[bittorrent]advertise_host is the loopback address '
                        '%s: only agents on this host can reach the seeder '
                        'and the tracker', opts.advertise_host)
        LOG.info('BitTorrent publisher started: seeder on port %(seeder)d, '
                 'tracker %(tracker)s, advertised as %(host)s',
                 {'seeder': seeder.port,
                  'tracker': (self._seeder_trackers() or ['none'])[0],
                  'host': opts.advertise_host})

    def _load_authority_locked(self):
        """The SSL swarm authority ([bittorrent]ssl), loaded once.

        :raises: CertificateError, OSError.
        """
        if CONF.bittorrent.ssl and self._authority is None:
            self._authority = certs.Authority.load_or_create(
                CONF.bittorrent.ssl_authority_dir)
            self._announce_secret = self._authority.derive_secret(
                publication.ANNOUNCE_SECRET_PURPOSE)
        elif not CONF.bittorrent.ssl:
            self._authority = self._announce_secret = None
        return self._authority

    def _start_tracker_locked(self):
        opts = CONF.bittorrent
        self._load_authority_locked()
        table = swarm_table.SwarmTable(
            max_swarms=opts.max_swarms, max_peers=opts.max_peers_per_swarm,
            interval=opts.announce_interval, on_stopped=self._agent_stopped,
            on_clients=self._clients_present,
            publish_secret=opts.tracker_secret,
            announce_secret=self._announce_secret)
        tracker = server.TrackerServer(
            table, opts.tracker_listen_host, opts.tracker_port,
            udp_port=opts.tracker_udp_port, status_token=opts.status_token)
        tracker.start()
        self._table, self._tracker = table, tracker

    def _stop_tracker_locked(self):
        if self._tracker is not None:
            self._tracker.stop()
        self._table = self._tracker = None

    def serve_shared_tracker(self):
        """Start the built-in tracker now if other conductors use it.

        A conductor whose built-in tracker other conductors share (it has
        ``[bittorrent]tracker_secret`` and no ``tracker_url``) runs it from
        the start, not from its own first deploy: the others' deploys need
        it whether or not this conductor deploys anything.

        :returns: True if the tracker runs after the call.
        :raises: OSError if it cannot listen.
        """
        if not shares_its_tracker():
            return False
        with self._lock:
            if self._tracker is None:
                self._start_tracker_locked()
                LOG.info('Built-in tracker %s started for the conductors '
                         'sharing it',
                         self._tracker.announce_url(
                             CONF.bittorrent.advertise_host))
            return True

    def _sweep(self, start=False):
        """Remove files no publication needs.

        On start nothing is seeded yet: a link left by a previous process
        would only keep an image in the cache forever, and a deploy still
        needing it publishes it again from the node's cached copy.
        """
        if start:
            seeding = os.path.join(self._data_dir, SEEDING_DIR)
            for entry in os.scandir(seeding):
                torrent_cache.unlink_quiet(entry.path)
            web = self._http_dir()
            if web is not None and os.path.isdir(web):
                for entry in os.scandir(web):
                    torrent_cache.unlink_quiet(entry.path)
        self._torrents.sweep()

    def _link(self, node_uuid, image_path, link):
        with contextlib.suppress(FileNotFoundError):
            if os.path.samefile(image_path, link):
                return
        tmp = link + '.tmp'
        torrent_cache.unlink_quiet(tmp)
        try:
            os.link(image_path, tmp)
            os.replace(tmp, link)
        except OSError as e:
            torrent_cache.unlink_quiet(tmp)
            if e.errno == errno.EXDEV:
                raise exception.DataDirCrossDevice(
                    image=image_path, node=node_uuid,
                    data_dir=self._data_dir)
            raise exception.ImagePublishFailed(
                image=image_path, node=node_uuid,
                reason=_('cannot hard-link it to %(link)s: %(err)s. Check '
                         'that [bittorrent]data_dir is writable by the '
                         'conductor.') % {'link': link, 'err': e})

    def _seeder_trackers(self, meta=None):
        # The seeder announces too, so the tracker hands it out like any
        # peer: agents find it again after a reconnect, and the status
        # shows what the conductor uploads.
        url = CONF.bittorrent.tracker_url
        if url:
            secret = CONF.bittorrent.tracker_secret
            if meta is not None and secret:
                # Publishes the image on another conductor's built-in
                # tracker (see ironic_bt.common.publication); other
                # trackers ignore the parameter.
                url = publication.with_query(url, {publication.PARAM: (
                    publication.make_key(secret, meta.tracker_keys,
                                         meta.size))})
            return [url]
        if self._tracker is not None:
            url = self._tracker.announce_url(CONF.bittorrent.advertise_host)
            if meta is not None and self._announce_secret is not None:
                # The seeder's own announce key (no node label).
                url = publication.keyed_url(url, self._announce_secret, '',
                                            meta.tracker_keys[0])
            return [url]
        return []

    def _publication_locked(self, node_uuid, meta):
        announce_key = None
        if self._announce_secret is not None:
            announce_key = publication.announce_key(
                self._announce_secret, node_uuid, meta.tracker_keys[0])
        label = {'node': node_uuid}
        if CONF.bittorrent.tracker_url:
            trackers = [CONF.bittorrent.tracker_url]
            if announce_key is not None:
                # A shared built-in tracker checks the key of the node's
                # label; other trackers ignore both parameters.
                trackers = [publication.with_query(trackers[0], label)]
        else:
            # In order of preference: the agents try each in turn.
            host = CONF.bittorrent.advertise_host
            trackers = [publication.with_query(url, label) for url in (
                self._tracker.udp_announce_url(host),
                self._tracker.announce_url(host)) if url]
        peers = [_host_port(CONF.bittorrent.advertise_host,
                            self._seeder.port)]
        web_seeds = []
        torrent_url = None
        image = self._images.get(meta.info_hash)
        if image is not None and image.web_link is not None:
            web_seeds.append(self._http_url(image.web_link))
        if image is not None and image.torrent_file is not None:
            torrent_url = self._http_url(image.torrent_file)
        return Publication(meta=meta, trackers=trackers, peers=peers,
                           web_seeds=web_seeds,
                           authority=self._image_authority(meta),
                           announce_key=announce_key, torrent_url=torrent_url)

    def _image_authority(self, meta):
        """The root of the image's SSL swarm (None: plain torrents)."""
        if self._authority is None:
            return None
        roots = self._image_roots
        if meta.info_hash not in roots:
            roots[meta.info_hash] = self._authority.for_image(meta.info_hash)
        return roots[meta.info_hash]

    def _credentials_locked(self, meta):
        """The seeder's credentials in the image's SSL swarm.

        Renewed when half their lifetime has passed.
        """
        authority = self._image_authority(meta)
        if authority is None:
            return None
        creds, expires = self._seeder_credentials.get(meta.info_hash,
                                                      (None, 0))
        now = time.time()
        if expires - now < SEEDER_CERTIFICATE_LIFETIME / 2:
            creds = authority.credentials(
                'seeder %s' % CONF.bittorrent.advertise_host,
                datetime.timedelta(seconds=SEEDER_CERTIFICATE_LIFETIME))
            self._seeder_credentials[meta.info_hash] = (
                creds, now + SEEDER_CERTIFICATE_LIFETIME)
        return creds

    def _add_locked(self, node_uuid, image_path, meta, name):
        link = self._seeding_path(meta.info_hash)
        self._link(node_uuid, image_path, link)
        try:
            # The torrent was hashed from this very file (its cache key is
            # the file's identity, size and mtime), as ironic trusts its
            # own image cache; the agents verify every piece they get.
            self._seeder.add(meta, link, trackers=self._seeder_trackers(meta),
                             verified=True,
                             credentials=self._credentials_locked(meta))
            if self._table is not None:
                self._table.publish(meta.tracker_keys, name, size=meta.size)
        except Exception as e:
            self._seeder.remove(meta.info_hash)
            torrent_cache.unlink_quiet(link)
            raise exception.ImagePublishFailed(
                image=image_path, node=node_uuid, reason=e)
        LOG.info('Published image %(name)s as torrent %(ih)s (%(size)d '
                 'bytes) for node %(node)s',
                 {'name': name, 'ih': meta.info_hash, 'size': meta.size,
                  'node': node_uuid})
        return _Image(meta=meta, link=link, name=name, nodes=set(),
                      web_link=self._web_link(node_uuid, link, meta),
                      torrent_file=self._torrent_file(node_uuid, meta))

    def _torrent_file(self, node_uuid, meta):
        """Put the .torrent into [deploy]http_root for the agents to fetch.

        IPA logs every step argument; a torrent inline (hundreds of KB of
        piece hashes) would fill its log. The agent checks what it fetched
        against the info-hash it is given. Without it, the torrent goes
        inline.

        :returns: the file's path, or None.
        """
        directory = self._http_dir()
        if directory is None:
            return None
        path = os.path.join(directory, meta.info_hash + '.torrent')
        try:
            os.makedirs(directory, exist_ok=True)
            # Readable by the web server, as the images ironic serves.
            torrent_cache.write_atomic(path, meta.data, mode=0o644)
        except OSError as e:
            LOG.warning('Node %(node)s: cannot write the torrent of %(ih)s '
                        'into [deploy]http_root, so agents get it inline: '
                        '%(err)s. Check that %(dir)s is writable by the '
                        'conductor.', {'node': node_uuid,
                                       'ih': meta.info_hash, 'err': e,
                                       'dir': directory})
            return None
        return path

    def _web_link(self, node_uuid, link, meta):
        """Link the image into [deploy]http_root for the web seed fallback.

        A hard link where the file systems allow it, else a symbolic link
        (web servers follow them, as for ironic's own http images). Without
        it the deploy goes on without the fallback: it is not needed while
        the seeder lives.

        :returns: the link's path, or None.
        """
        directory = self._web_seed_dir()
        if directory is None:
            return None
        name = meta.info_hash
        if self._authority is not None:
            # SSL swarms: nobody may fetch the image over HTTP by its
            # info-hash. An unguessable name instead, which reaches the
            # agents sealed for their swarm keys; the link goes when the
            # publication ends, and the directory is emptied at start.
            name = secrets.token_hex(16)
        path = os.path.join(directory, name + '.img')
        tmp = path + '.tmp'
        try:
            os.makedirs(directory, exist_ok=True)
            torrent_cache.unlink_quiet(tmp)
            try:
                os.link(link, tmp)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM):
                    raise
                os.symlink(link, tmp)
            os.replace(tmp, path)
        except OSError as e:
            torrent_cache.unlink_quiet(tmp)
            LOG.warning('Node %(node)s: cannot link image %(ih)s into '
                        '[deploy]http_root for the HTTP fallback, so agents '
                        'get no web seed: %(err)s. Check that %(dir)s is '
                        'writable by the conductor.',
                        {'node': node_uuid, 'ih': meta.info_hash, 'err': e,
                         'dir': directory})
            return None
        return path

    def publish(self, node_uuid, image_path, name=None):
        """Seed an image for a node; idempotent.

        :param node_uuid: the node that deploys the image. A node holds one
            publication: publishing another image for it releases the
            previous one.
        :param image_path: the raw image in ironic's image cache.
        :param name: a label for the image in the tracker status (no
            secrets: operators see it); the file name by default.
        :raises: InvalidBitTorrentConfig if an option is invalid.
        :raises: ImagePublishFailed (or a subclass) if the seeder or the
            tracker cannot start, the image cannot be read or linked, or
            the tracker refuses it.
        :returns: a :class:`Publication` for the node's agent.
        """
        with self._lock:
            self._start_locked(node_uuid, image_path)
        try:
            key = self._torrents.key(image_path)
        except OSError as e:
            raise exception.ImagePublishFailed(
                image=image_path, node=node_uuid, reason=e)
        meta = self._torrents.get(node_uuid, image_path, key)
        with self._lock:
            if not self.started:
                raise exception.ImagePublishFailed(
                    image=image_path, node=node_uuid,
                    reason=_('the publisher was shut down'))
            current = self._nodes.get(node_uuid)
            if current is not None and current != meta.info_hash:
                self._release_locked(node_uuid)
            image = self._images.get(meta.info_hash)
            if image is None:
                image = self._add_locked(
                    node_uuid, image_path, meta,
                    name or os.path.basename(image_path))
                self._images[meta.info_hash] = image
            elif self._authority is not None:
                # A long-lived publication: keep the seeder's certificate
                # valid (a no-op until half its lifetime has passed).
                self._seeder.add(meta, image.link,
                                 credentials=self._credentials_locked(meta))
            image.nodes.add(node_uuid)
            self._nodes[node_uuid] = meta.info_hash
            self._seeder.expect_nodes(len(self._nodes))
            return self._publication_locked(node_uuid, meta)

    def publication(self, node_uuid):
        """The node's current publication, without publishing anything.

        :param node_uuid: a node UUID.
        :returns: a :class:`Publication`, or None if the node holds none
            (never published, released, or published by a previous
            conductor process).
        """
        with self._lock:
            info_hash = self._nodes.get(node_uuid)
            if info_hash is None:
                return None
            return self._publication_locked(
                node_uuid, self._images[info_hash].meta)

    def nodes(self):
        """The UUIDs of the nodes holding a publication."""
        with self._lock:
            return sorted(self._nodes)

    def _clients_present(self, present):
        # Called by the tracker, which starts before the seeder; a client
        # announcing in between finds the seeder with its default queue.
        seeder = self._seeder
        if seeder is not None:
            seeder.serve_clients(present)

    def _agent_stopped(self, node_uuid):
        # Called by the tracker. Only nodes holding a publication are
        # remembered, so an announcer cannot grow this dict.
        with self._lock:
            if node_uuid in self._nodes:
                self._stopped[node_uuid] = time.monotonic()

    def stopped_nodes(self, max_age):
        """Nodes whose agent told the built-in tracker it stopped.

        An agent announces ``stopped`` when its download ends, just before
        its deploy step returns (or fails); the conductor can then ask the
        agent for the step's result instead of waiting for its next
        heartbeat. Entries older than ``max_age`` seconds are dropped: by
        then the heartbeat has done it.

        :param max_age: seconds.
        :returns: sorted node UUIDs holding a publication.
        """
        deadline = time.monotonic() - max_age
        with self._lock:
            for node_uuid, when in list(self._stopped.items()):
                if when < deadline or node_uuid not in self._nodes:
                    del self._stopped[node_uuid]
            return sorted(self._stopped)

    def forget_stopped(self, node_uuid):
        """Stop reporting the node in :meth:`stopped_nodes`."""
        with self._lock:
            self._stopped.pop(node_uuid, None)

    def _release_locked(self, node_uuid):
        self._stopped.pop(node_uuid, None)
        info_hash = self._nodes.pop(node_uuid, None)
        if info_hash is None:
            return False
        image = self._images[info_hash]
        image.nodes.discard(node_uuid)
        if image.nodes:
            LOG.debug('Node %(node)s released torrent %(ih)s; still needed '
                      'by %(count)d node(s)',
                      {'node': node_uuid, 'ih': info_hash,
                       'count': len(image.nodes)})
            return True
        uploaded = (self._seeder.stats().get(info_hash) or {}).get(
            'uploaded', 0)
        del self._images[info_hash]
        self._image_roots.pop(info_hash, None)
        self._seeder_credentials.pop(info_hash, None)
        self._seeder.remove(info_hash)
        if self._table is not None:
            self._table.unpublish(image.meta.info_hash)
        torrent_cache.unlink_quiet(image.link)
        if image.web_link is not None:
            torrent_cache.unlink_quiet(image.web_link)
        if image.torrent_file is not None:
            torrent_cache.unlink_quiet(image.torrent_file)
        self._sweep()
        LOG.info('Unpublished image %(name)s (torrent %(ih)s) after node '
                 '%(node)s, the last to need it, released it; the seeder '
                 'uploaded %(up)d bytes of it',
                 {'name': image.name, 'ih': info_hash, 'node': node_uuid,
                  'up': uploaded})
        return True

    def release(self, node_uuid):
        """Release a node's publication; idempotent.

        The image stays seeded while other nodes hold it. When none does,
        the seeder and the tracker drop it and its hard link is removed.

        :param node_uuid: a node UUID.
        :returns: True if the node held a publication.
        """
        with self._lock:
            released = self._release_locked(node_uuid)
            if released and self._seeder is not None:
                self._seeder.expect_nodes(len(self._nodes))
            return released

    def stats(self, info_hash):
        """Seeder statistics of one published image.

        :param info_hash: hex v1 info-hash.
        :returns: a dict with ``name``, ``size``, ``nodes``, ``uploaded``,
            ``peers`` and ``error``; None if the image is not published.
        """
        with self._lock:
            image = self._images.get(info_hash)
            if image is None:
                return None
            seeding = self._seeder.stats().get(info_hash) or {}
            return {'name': image.name,
                    'size': image.meta.size,
                    'nodes': sorted(image.nodes),
                    'uploaded': seeding.get('uploaded', 0),
                    'peers': seeding.get('peers', 0),
                    'error': seeding.get('error')}

    def progress(self, node_uuid):
        """What the node last announced to the built-in tracker.

        :param node_uuid: a node UUID.
        :returns: a dict with ``percent``, ``left``, ``downloaded``,
            ``uploaded`` and ``seconds_since_seen``; None if the node holds
            no publication, has not announced yet, or the tracker is
            external.
        """
        with self._lock:
            info_hash = self._nodes.get(node_uuid)
            table = self._table
            image = self._images.get(info_hash) if info_hash else None
        if table is None or image is None:
            return None
        peer = table.peer_progress(image.meta.info_hash, node_uuid)
        if peer is None:
            return None
        size = image.meta.size
        left = min(int(peer['left']), size)
        return dict(peer, left=left,
                    percent=round(100.0 * (size - left) / size, 1))

    def status(self):
        """A JSON-serialisable snapshot for operators.

        :returns: a dict with ``started``, ``seeder_port``, ``trackers``
            (the announce URLs), ``images`` (see :meth:`stats`, plus
            ``info_hash``) and, with the built-in tracker, ``swarms`` (see
            :meth:`ironic_bt.tracker.swarm_table.SwarmTable.status`).
        """
        with self._lock:
            if not self.started:
                return {'started': False, 'images': []}
            hashes = sorted(self._images)
            trackers = self._seeder_trackers()
            port = self._seeder.port
            table = self._table
        images = []
        for info_hash in hashes:
            stats = self.stats(info_hash)
            if stats is not None:
                images.append(dict(stats, info_hash=info_hash))
        result = {'started': True, 'seeder_port': port,
                  'trackers': trackers, 'images': images}
        if table is not None:
            result['swarms'] = table.status()['swarms']
        return result

    def shutdown(self):
        """Stop seeding and tracking, and forget all publications.

        The files stay; the next start removes the links. For tests and
        process exit.
        """
        with self._lock:
            self._stop_tracker_locked()
            if self._seeder is not None:
                self._seeder.close()
            self._seeder = None
            self._authority = self._announce_secret = None
            self._image_roots = {}
            self._seeder_credentials = {}
            self._images.clear()
            self._nodes.clear()
            self._stopped.clear()


_publisher = None
_publisher_lock = threading.Lock()


def get_publisher():
    """The publisher of this conductor process, created on first call.

    Creating it opens nothing: the seeder and the tracker start on the
    first :meth:`Publisher.publish`.
    """
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = Publisher()
        return _publisher
