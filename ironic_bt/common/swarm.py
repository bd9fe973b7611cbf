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

import os
import socket
import time

import libtorrent as lt
from oslo_log import log
from oslo_utils import netutils
import psutil

import ironic_bt

LOG = log.getLogger(__name__)

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


#: A network device that cannot exist: 24 characters, and Linux names have
#: at most 15.
_NO_INTERFACE = 'ironic-bt-closed-session:0s'
#: Seconds :func:`close_session` waits for libtorrent to let go of the
#: connections it shut down.
CLOSE_WAIT = 2.0


def _accepted(port):
    """File descriptors of this process's TCP connections accepted on port."""
    proc = psutil.Process()
    # psutil < 6 names it connections().
    connections = getattr(proc, 'net_connections', None) or proc.connections
    return [c.fd for c in connections(kind='tcp')
            if c.fd >= 0 and c.laddr and c.laddr.port == port
            and c.status != psutil.CONN_LISTEN]


def _shut_down(fd, port):
    """Shut down the connection on ``fd`` if it is still one on ``port``.

    The descriptor is libtorrent's and may have been closed and reused
    since it was listed: a duplicate is checked to be a TCP socket bound to
    ``port`` before anything is done to it.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        if (sock.type != socket.SOCK_STREAM
                or sock.getsockname()[1] != port):
            return False
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        # Closed by the other side or by libtorrent in the meantime.
        return False
    finally:
        sock.close()


def close_session(session, ssl=False):
    """Make a session whose torrents were removed safe to destroy.

    With SSL, libtorrent (2.1.1) destroys the sockets of incoming
    connections still in their TLS handshake while the handshake is still
    waiting on them, which corrupts the heap: the process aborts
    ("corrupted size vs. prev_size"). Anyone who can reach the port holds
    such a handshake open by connecting and sending nothing, and agents
    that dial each other always have a few in flight (2 to 4 of 64 agents
    aborted on exit at 1 Mbit/s). So the session first stops listening;
    then every connection accepted on its SSL port is shut down, which ends
    the handshakes at once, and libtorrent is given :data:`CLOSE_WAIT`
    seconds to forget them before the session is destroyed.

    The caller then drops its last reference to the session.

    :param session: an ``lt.session`` whose torrents were removed.
    :param ssl: whether the session listens for SSL peers.
    """
    if not ssl:
        return
    port = session.ssl_listen_port()
    # An empty listen_interfaces is not applied to an SSL session (libtorrent
    # reads the setting back as empty already); a device name no Linux
    # interface can have (longer than IFNAMSIZ) closes every listener and
    # opens none.
    session.apply_settings({'listen_interfaces': _NO_INTERFACE})
    deadline = time.monotonic() + CLOSE_WAIT
    while session.is_listening() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not port:
        return
    shut = set()
    deadline = time.monotonic() + CLOSE_WAIT
    while time.monotonic() < deadline:
        fds = _accepted(port)
        if not fds:
            break
        shut.update(fd for fd in fds if fd not in shut
                    and _shut_down(fd, port))
        time.sleep(0.05)
    else:
        LOG.warning('%(n)d connections accepted on SSL port %(port)d were '
                    'still open %(s).0f s after the session shut them '
                    'down; destroying it anyway',
                    {'n': len(_accepted(port)), 'port': port,
                     's': CLOSE_WAIT})
    if shut:
        LOG.debug('Shut down %(n)d connections accepted on SSL port '
                  '%(port)d before destroying the session',
                  {'n': len(shut), 'port': port})


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
