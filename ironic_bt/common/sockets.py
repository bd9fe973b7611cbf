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

"""The connections a session accepted on its SSL port, kept in check.

libtorrent (2.1.1) keeps each incoming SSL connection in a list of its own
until its TLS handshake ends, with no time limit and no cap, and its peer
limits do not count them. Two things follow, both handled here, from the
outside (the sockets are the process's own, found with psutil):

* a connection that never says a word holds a descriptor and memory for as
  long as the session runs: :meth:`SslPort.check` shuts down those that
  have not become peers within a time limit, so a neighbour on the
  provisioning network cannot run the conductor out of descriptors;
* destroying the session frees those sockets under their pending
  handshake, which corrupts the heap: :meth:`SslPort.close` ends them
  first.

This module does not import libtorrent; sessions are passed in.
"""

import ipaddress
import os
import socket
import time

from oslo_log import log
import psutil

LOG = log.getLogger(__name__)

#: A network device that cannot exist: 24 characters, and Linux names have
#: at most 15.
_NO_INTERFACE = 'ironic-bt-closed-session:0s'
#: Seconds :meth:`SslPort.close` waits for libtorrent to let go of the
#: connections it shut down.
CLOSE_WAIT = 2.0
#: Seconds an incoming connection may take to become a peer (its TLS and
#: BitTorrent handshakes) before :meth:`SslPort.check` ends it. libtorrent
#: gives the BitTorrent handshake 10 s after TLS; a peer on the slowest
#: provisioning link finishes both in about a second.
HANDSHAKE_LIMIT = 30.0
#: Seconds between two looks of :meth:`SslPort.check`.
HANDSHAKE_CHECK_INTERVAL = 5.0


def address(ip, port):
    """(ip, port) as both psutil and libtorrent can be compared by.

    IPv4-mapped IPv6 addresses are plain IPv4, and the scope of a
    link-local address (``%eth0``, which only libtorrent gives) is dropped.
    """
    try:
        parsed = ipaddress.ip_address(ip.split('%', 1)[0])
    except ValueError:
        return ip, port
    mapped = getattr(parsed, 'ipv4_mapped', None)
    return str(mapped or parsed), port


def _local(host):
    """The address a session listens on, or None for any address."""
    try:
        parsed = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        return None
    return None if parsed.is_unspecified else str(parsed)


def _accepted(port, host=None):
    """{fd: (ip, port)} of this process's TCP connections accepted on port.

    :param host: the address the session listens on (any if None or
        unspecified): connections to the same port on another address (a
        tracker of this process) are not the session's.
    """
    local = _local(host)
    proc = psutil.Process()
    # psutil < 6 names it connections().
    connections = getattr(proc, 'net_connections', None) or proc.connections
    accepted = {}
    for c in connections(kind='tcp'):
        if (c.fd < 0 or not c.laddr or c.laddr.port != port
                or c.status == psutil.CONN_LISTEN or not c.raddr):
            continue
        if local is not None and address(c.laddr.ip, 0)[0] != local:
            continue
        accepted[c.fd] = address(*c.raddr)
    return accepted


def _shut_down(fd, port, peer=None):
    """Shut down the connection on ``fd`` if it is still the one listed.

    The descriptor is libtorrent's and may have been closed and reused
    since it was listed: a duplicate is checked to be a TCP socket bound to
    ``port`` (and connected to ``peer``, if given) before anything is done
    to it.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)   # not a socket any more
        return False
    try:
        if (sock.type != socket.SOCK_STREAM
                or sock.getsockname()[1] != port
                or (peer is not None
                    and address(*sock.getpeername()[:2]) != peer)):
            return False
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        # Closed by the other side or by libtorrent in the meantime.
        return False
    finally:
        sock.close()


class SslPort:
    """The connections a session accepted on its SSL port.

    :param session: the ``lt.session``, listening for SSL peers.
    :param host: the address it listens on (any if None or unspecified):
        connections to the same port on another address (a tracker of
        this process) are not the session's.
    :param limit: seconds a connection accepted on the SSL port may go
        without being one of the session's peers.
    :param interval: seconds between two looks; :meth:`check` does
        nothing when called more often.
    """

    def __init__(self, session, host=None, limit=HANDSHAKE_LIMIT,
                 interval=HANDSHAKE_CHECK_INTERVAL):
        self.session = session
        self.host = host
        self.limit = limit
        self.interval = interval
        self._next = 0.0
        self._since = {}    # (fd, (ip, port)) -> first seen not a peer

    def due(self, now=None):
        """Whether :meth:`check` would look now (``interval`` elapsed)."""
        now = time.monotonic() if now is None else now
        return now >= self._next

    def check(self, peers, now=None):
        """End the connections that did not become peers in time.

        Looks at most once an ``interval``. Never raises: a failure to
        look (the process is out of descriptors, /proc cannot be read) is
        logged, and the next look tries again.

        :param peers: the (ip, port) of the session's peer connections,
            over all its torrents (``lt.peer_info.ip``).
        :returns: the addresses of the connections shut down.
        """
        now = time.monotonic() if now is None else now
        if not self.due(now):
            return []
        self._next = now + self.interval
        # 0 while libtorrent reopens its listen sockets.
        port = self.session.ssl_listen_port()
        if not port:
            return []
        try:
            accepted = _accepted(port, self.host)
        except (OSError, psutil.Error) as e:
            LOG.warning('Cannot list the connections to SSL port %(port)d '
                        'to close those that never became peers: %(e)s',
                        {'port': port, 'e': e})
            return []
        peers = {address(*peer) for peer in peers}
        since = {}
        ended = []
        for fd, remote in accepted.items():
            if remote in peers:
                continue
            key = (fd, remote)
            first = self._since.get(key, now)
            if now - first >= self.limit and _shut_down(fd, port, remote):
                ended.append(remote)
                continue
            since[key] = first
        self._since = since
        if ended:
            LOG.warning('Closed %(n)d incoming connections on SSL port '
                        '%(port)d that were not peers %(s).0f s after they '
                        'connected (a TLS handshake never finished): from '
                        '%(who)s. Only nodes being deployed should connect '
                        'to it; check the provisioning network for what '
                        'else does.',
                        {'n': len(ended), 'port': port, 's': self.limit,
                         'who': ', '.join(sorted(
                             {ip for ip, _port in ended})[:16])})
        return ended

    def close(self, announce_wait=0.0):
        """Make the session, whose torrents were removed, safe to destroy.

        With SSL, libtorrent (2.1.1) destroys the sockets of incoming
        connections still in their TLS handshake while the handshake is
        still waiting on them, which corrupts the heap: the process aborts
        ("corrupted size vs. prev_size"). Anyone who can reach the port
        holds such a handshake open by connecting and sending nothing, and
        agents that dial each other always have a few in flight (2 to 4 of
        64 agents aborted on exit at 1 Mbit/s). So the session first stops
        listening; then every connection accepted on its SSL port is shut
        down, which ends the handshakes at once, and libtorrent is given
        :data:`CLOSE_WAIT` seconds to forget them.

        The caller then drops its last reference to the session. This
        never raises: what cannot be done is logged.

        :param announce_wait: seconds to leave the "stopped" announces of
            the removed torrents before the listeners close: libtorrent
            sends UDP tracker traffic from its listen sockets.
        """
        if announce_wait:
            time.sleep(announce_wait)
        try:
            self._end_handshakes()
        except (OSError, psutil.Error) as e:
            LOG.warning('Cannot close the connections of the session\'s '
                        'SSL port before destroying it: %s', e)

    def _end_handshakes(self):
        session, host = self.session, self.host
        port = session.ssl_listen_port()
        # An empty listen_interfaces is not applied to an SSL session
        # (libtorrent reads the setting back as empty already); a device
        # name no Linux interface can have (longer than IFNAMSIZ) closes
        # every listener and opens none.
        session.apply_settings({'listen_interfaces': _NO_INTERFACE})
        deadline = time.monotonic() + CLOSE_WAIT
        while session.is_listening() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not port:
            return
        shut = set()
        deadline = time.monotonic() + CLOSE_WAIT
        while time.monotonic() < deadline:
            accepted = _accepted(port, host)
            if not accepted:
                break
            shut.update(fd for fd, remote in accepted.items()
                        if fd not in shut and _shut_down(fd, port, remote))
            time.sleep(0.05)
        else:
            LOG.warning('%(n)d connections accepted on SSL port %(port)d '
                        'were still open %(s).0f s after the session shut '
                        'them down; destroying it anyway',
                        {'n': len(_accepted(port, host)), 'port': port,
                         's': CLOSE_WAIT})
        if shut:
            LOG.debug('Shut down %(n)d connections accepted on SSL port '
                      '%(port)d before destroying the session',
                      {'n': len(shut), 'port': port})
