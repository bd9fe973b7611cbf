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

"""libtorrent settings shared by the conductor's seeder and the agents.

This module imports neither ironic nor ironic-python-agent: the same swarm
settings must hold on both sides of the wire, and the ramdisk does not carry
the Ironic server stack.
"""

import libtorrent as lt
from oslo_utils import netutils

import ironic_bt

#: Alerts we act on: errors (disk, tracker), state changes, tracker replies.
ALERT_MASK = (lt.alert_category.error
              | lt.alert_category.status
              | lt.alert_category.tracker
              | lt.alert_category.storage)

#: The peer id of every ironic-bt session starts with this (BEP 20 style
#: fingerprint), so that agents tell each other from standard clients.
PEER_ID_PREFIX = b'-IB'
#: The fingerprint of the agents' sessions.
AGENT_FINGERPRINT = '-IB0001-'
#: A conductor's seeder sends this fingerprint instead, so that an agent
#: tells every conductor's seeder from the other agents: where several
#: conductors share one swarm, an agent meets the seeders of the others
#: through the tracker, and the piece plan must treat them as seeds (whose
#: upload each piece should cross once), not as agents it shares pieces
#: with.
SEEDER_FINGERPRINT = '-IBS001-'
SEEDER_PEER_ID_PREFIX = SEEDER_FINGERPRINT[:4].encode()


def _base():
    return {
        # Nothing leaves the provisioning network: the only peers are the
        # ones our tracker, the conductor or swarm members hand out.
        'enable_dht': False,
        'enable_lsd': False,
        'enable_upnp': False,
        'enable_natpmp': False,
        'webtorrent_stun_server': '',
        'max_webtorrent_offers': 0,
        'dht_bootstrap_nodes': '',
        # uTP backs off as soon as queuing delay grows, which on a
        # provisioning LAN only costs throughput; TCP fills the link.
        'enable_incoming_utp': False,
        'enable_outgoing_utp': False,
        # Several agents may sit behind one address in labs, and a conductor
        # may share an address with an agent in small setups.
        'allow_multiple_connections_per_ip': True,
        # Honour the short announce interval of the built-in tracker, so
        # nodes that boot later find the swarm within seconds.
        'min_announce_interval': 2,
        'announce_to_all_trackers': True,
        'announce_to_all_tiers': True,
        'alert_mask': int(ALERT_MASK),
        'user_agent': 'ironic-bt/%s libtorrent/%s' % (ironic_bt.__version__,
                                                      lt.__version__),
        'peer_fingerprint': AGENT_FINGERPRINT,
        # Every peer is a trusted member of the same deployment: unchoke all
        # of them instead of the internet's tit-for-tat rationing.
        'unchoke_slots_limit': -1,
        'connections_limit': 1000,
        # libtorrent's backlog of 5 drops connection attempts when a whole
        # swarm connects at once; a retried SYN costs a node a second.
        'listen_queue_size': 128,
        'active_downloads': -1,
        'active_seeds': -1,
        'active_limit': -1,
    }


def session_settings(listen_host='0.0.0.0', listen_port=6881, ssl=False,
                     **overrides):
    """The settings pack of an ironic-bt libtorrent session.

    :param listen_host: address to accept peer connections on.
    :param listen_port: TCP port to accept peer connections on.
    :param ssl: listen for SSL peer connections only (see
        :func:`secure`); a session with SSL torrents has no plain listener.
    :param overrides: further libtorrent settings (name -> value).
    :returns: a dict for ``libtorrent.session_params``/``apply_settings``.
    """
    settings = _base()
    suffix = 's' if ssl else ''
    if listen_host in ('', '0.0.0.0', '::'):
        # Any address: listen on both families, so IPv6 provisioning
        # networks work without configuration.
        interfaces = '0.0.0.0:%d%s,[::]:%d%s' % (listen_port, suffix,
                                                 listen_port, suffix)
    else:
        interfaces = '%s:%d%s' % (netutils.escape_ipv6(listen_host),
                                  listen_port, suffix)
    settings['listen_interfaces'] = interfaces
    settings.update(overrides)
    return settings


def make_session(listen_host='0.0.0.0', listen_port=6881, ssl=False,
                 **overrides):
    """Create a libtorrent session with the POSIX disk backend.

    The default (mmap) backend truncates files on first write, which fails
    on block devices ("file_truncate: Invalid argument"); the POSIX backend
    writes with pwrite and leaves the target's size alone.
    """
    params = lt.session_params()
    params.settings = session_settings(listen_host, listen_port, ssl=ssl,
                                       **overrides)
    params.disk_io_constructor = 'posix_disk_io_constructor'
    return lt.session(params)


def listen_port(session, ssl=False):
    """The port a session accepts peers on (its SSL port if ``ssl``)."""
    return session.ssl_listen_port() if ssl else session.listen_port()


#: Diffie-Hellman parameters for SSL peer connections: the ffdhe2048 group
#: of RFC 7919 (public, standard; libtorrent refuses 1024-bit groups, and
#: an empty buffer puts the torrent in an error state).
DH_PARAMS = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def secure(params, credentials):
    """Make a torrent about to be added SSL-only.

    libtorrent then accepts only peers that present a certificate issued
    by ``credentials.ca`` (and presents ours, see :func:`use_certificate`);
    peers on plain TCP, with no certificate or with one from another
    authority get nothing. The info-hash does not change, so swarms stay
    deterministic.

    :param params: ``lt.add_torrent_params``.
    :param credentials: :class:`ironic_bt.common.certs.Credentials`.
    """
    params.root_certificate = credentials.ca


def use_certificate(handle, credentials):
    """Give an SSL torrent our certificate and key (after adding it).

    To add an SSL torrent, use :func:`add_torrent`; this alone renews the
    certificate of a torrent already running.
    """
    handle.set_ssl_certificate_buffer(credentials.certificate,
                                      credentials.private_key, DH_PARAMS)


def add_torrent(session, params, credentials=None):
    """Add a torrent; an SSL one with our certificate before it connects.

    A torrent added running announces and connects at once, before
    :func:`use_certificate` reaches it. Its first connections then went out
    without a certificate, the other side refused them ("tlsv13 alert
    certificate required") and libtorrent waited before trying that peer
    again: agents found their own seeder out of reach for seconds and fell
    back to the web seeds (a node or two of six, in four runs of five with
    opentracker, which answers the first announce at once). So an SSL
    torrent is added paused, given the certificate, then resumed; the two
    calls reach libtorrent's network thread in that order.

    :param session: ``lt.session``.
    :param params: ``lt.add_torrent_params``.
    :param credentials: :class:`ironic_bt.common.certs.Credentials` for an SSL
        torrent (see :func:`secure`), or None.
    :returns: the ``lt.torrent_handle``.
    """
    if credentials is None:
        return session.add_torrent(params)
    secure(params, credentials)
    paused = bool(params.flags & lt.torrent_flags.paused)
    params.flags |= lt.torrent_flags.paused
    handle = session.add_torrent(params)
    use_certificate(handle, credentials)
    if not paused:
        handle.resume()
    return handle
