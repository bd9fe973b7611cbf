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

"""The HTTP adapter of the tracker: moves bytes to and from the protocol.

All tracker logic lives in :mod:`ironic_bt.tracker.protocol`. This module
is a small HTTP/1.1 server that a provisioning network full of nodes, or a
hostile neighbour on it, cannot starve:

* one thread with an asyncio event loop serves every connection; announces
  are answered in the loop, in microseconds, so there is no thread per
  connection and nothing to run out of;
* HTTP/1.1 keep-alive (and pipelining): a client announces again on the
  same connection;
* at most ``max_connections`` connections; a new one past the cap closes
  the one that has been quiet the longest, so idle or half-sent requests
  held open cannot lock out the nodes;
* a request (line and headers) must arrive whole within
  ``request_timeout`` seconds and fit in ``MAX_REQUEST_BYTES``; a
  connection idle for ``idle_timeout`` seconds between requests is closed;
* request bodies are refused, so memory per connection is bounded;
* the listening socket is made and bound here, from a numeric address: no
  name is ever resolved (``http.server`` looks its own name up in DNS).

Replies of the tracker are bencoded, HTTP errors included, and every reply
has a proper HTTP/1.1 status line.
"""

import asyncio
import collections
import hmac
import ipaddress
import json
import socket
import threading

from oslo_log import log
from oslo_utils import netutils

from ironic_bt.tracker import protocol
from ironic_bt.tracker import udp

LOG = log.getLogger(__name__)

#: Most bytes of a request line and its headers.
MAX_REQUEST_BYTES = 8192
#: Connections kept at once; below the 1024 file descriptors a conductor
#: usually may open, whatever its other sockets.
MAX_CONNECTIONS = 512
#: Seconds for a request to arrive whole, once it started.
REQUEST_TIMEOUT = 10.0
#: Seconds a keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 60.0

#: Header carrying the token that opens ``/status`` to other hosts.
STATUS_TOKEN_HEADER = 'X-Status-Token'

_REASONS = {200: 'OK', 400: 'Bad Request', 403: 'Forbidden',
            404: 'Not Found',
            405: 'Method Not Allowed', 408: 'Request Timeout',
            413: 'Content Too Large',
            431: 'Request Header Fields Too Large',
            500: 'Internal Server Error', 505: 'HTTP Version Not Supported'}


def _http_error(code, reason, close=True, extra=()):
    return code, 'text/plain', protocol.failure(reason), close, extra


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.peer = None
        self.buffer = bytearray()
        self.timer = None
        self.closing = False

    # -- asyncio callbacks ---------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info('peername') or ('', 0)
        self.peer = peer[0]
        self.local = (transport.get_extra_info('sockname') or ('', 0))[0]
        self.server.opened(self)
        self._arm(self.server.idle_timeout)

    def connection_lost(self, exc):
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.closed(self)

    def data_received(self, data):
        if self.closing:
            return
        if not self.buffer:
            # A request starts: it must arrive whole in time.
            self._arm(self.server.request_timeout)
        self.buffer += data
        self.server.touched(self)
        while not self.closing:
            end = self.buffer.find(b'\r\n\r\n')
            if end < 0:
                if len(self.buffer) > MAX_REQUEST_BYTES:
                    self._send(*_http_error(
                        431, 'request line and headers exceed %d bytes'
                        % MAX_REQUEST_BYTES))
                return
            if end > MAX_REQUEST_BYTES:
                self._send(*_http_error(
                    431, 'request line and headers exceed %d bytes'
                    % MAX_REQUEST_BYTES))
                return
            head = bytes(self.buffer[:end])
            del self.buffer[:end + 4]
            try:
                reply = self.server.respond(head, self.peer, self.local)
            except Exception:
                LOG.exception('Tracker failed to answer %s', self.peer)
                reply = _http_error(500, 'internal error')
            self._send(*reply)
            if not self.closing:
                self._arm(self.server.request_timeout if self.buffer
                          else self.server.idle_timeout)

    def eof_received(self):
        if self.buffer and not self.closing:
            # The client finished sending without ending its request.
            self._send(*_http_error(400, 'incomplete request'))
        return False

    # -- helpers -------------------------------------------------------

    def _arm(self, seconds):
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.server.loop.call_later(seconds, self._timed_out)

    def _timed_out(self):
        if self.closing:
            return
        if self.buffer:
            self._send(*_http_error(408, 'request not received in time'))
        else:
            self.close()

    def _send(self, code, content_type, body, close, extra=()):
        headers = ['HTTP/1.1 %d %s' % (code, _REASONS.get(code, 'Error')),
                   'Content-Type: %s' % content_type,
                   'Content-Length: %d' % len(body)]
        headers.extend(extra)
        if close:
            headers.append('Connection: close')
        self.transport.write(('\r\n'.join(headers) + '\r\n\r\n').encode(
            'latin-1') + body)
        if close:
            self.close()

    def close(self):
        if not self.closing:
            self.closing = True
            self.transport.close()

    def abort(self):
        self.closing = True
        self.transport.abort()


def _target(raw):
    """The path and raw query of an origin- or absolute-form target."""
    if raw[:7].lower() == b'http://' or raw[:8].lower() == b'https://':
        # Absolute form (RFC 9112 3.2.2): drop the scheme and authority.
        start = raw.find(b'/', raw.find(b'//') + 2)
        raw = raw[start:] if start >= 0 else b'/'
    path, _sep, query = raw.partition(b'?')
    return path, query


class _Router:
    """From a request head to a reply; no I/O."""

    def __init__(self, table, status_token=None):
        self.table = table
        self.status_token = status_token

    def respond(self, head, client, local=None):
        """Answer one request.

        :returns: (status, content type, body, close, extra headers).
        """
        lines = head.split(b'\r\n')
        parts = lines[0].split(b' ')
        if len(parts) != 3 or not parts[2].startswith(b'HTTP/'):
            # HTTP/0.9 and garbage: a status line all the same.
            return _http_error(400, 'malformed request line')
        method, raw_target, version = parts
        if version not in (b'HTTP/1.1', b'HTTP/1.0'):
            return _http_error(505, 'only HTTP/1.0 and HTTP/1.1')
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b':')
            if not sep or not name or name != name.strip():
                return _http_error(400, 'malformed header line')
            headers[name.strip().lower()] = value.strip()
        connection = headers.get(b'connection', b'').lower()
        if version == b'HTTP/1.1':
            close = connection == b'close'
        else:
            close = connection != b'keep-alive'
        length = headers.get(b'content-length', b'0')
        if length != b'0' or b'transfer-encoding' in headers:
            # A tracker takes no body; reading one would cost memory.
            return _http_error(413, 'request bodies are not accepted')
        if method != b'GET':
            return _http_error(405, 'only GET', close=close,
                               extra=('Allow: GET',))
        path, query = _target(raw_target)
        if path == b'/status' and not self._operator(client, local, headers):
            return _http_error(
                403, 'the status lists every node: ask from the tracker\'s '
                'own host, or send the [bittorrent]status_token in an %s '
                'header' % STATUS_TOKEN_HEADER, close=close)
        code, content_type, body = self._route(path, query, client)
        return code, content_type, body, close, ()

    def _operator(self, client, local, headers):
        """Whether the client may read the status.

        From this very host (loopback, or the address it reached us at),
        or with the token.
        """
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if address.is_loopback or client == local:
            return True
        given = headers.get(STATUS_TOKEN_HEADER.lower().encode())
        return bool(self.status_token and given and hmac.compare_digest(
            given, self.status_token.encode('utf-8')))

    def _route(self, path, query, client):
        table = self.table
        # Exactly "/announce": libtorrent's SSRF mitigation refuses to
        # announce to a tracker on localhost under any other path.
        if path in (b'/announce', b'/scrape'):
            try:
                if path == b'/announce':
                    req = protocol.parse_announce(query, client)
                    body = protocol.announce_reply(
                        req, table.interval, *table.record(req))
                else:
                    body = protocol.scrape_reply(table.scrape_counts(
                        protocol.parse_scrape(query)))
            except protocol.TrackerError as e:
                LOG.debug('Refused %(path)s from %(client)s: %(reason)s',
                          {'path': path.decode('latin-1'), 'client': client,
                           'reason': e})
                body = protocol.failure(str(e))
            # Failures too are 200: clients only read "failure reason"
            # from a successful HTTP reply.
            return 200, 'text/plain', body
        if path == b'/status':
            return 200, 'application/json', json.dumps(
                table.status()).encode('utf-8')
        return 404, 'text/plain', protocol.failure('not found')


class _Datagrams(asyncio.DatagramProtocol):
    """The UDP tracker (BEP 15): one reply datagram per request."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            reply = self.tracker.handle(data, addr[0], addr[1])
        except Exception:
            LOG.exception('UDP tracker failed to answer %s', addr[0])
            return
        if reply is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc):
        LOG.debug('UDP tracker: %s', exc)


def _bind(host, port, kind):
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    flags = socket.AI_NUMERICHOST | socket.AI_PASSIVE
    # AI_NUMERICHOST: a name is refused instead of looked up.
    address = socket.getaddrinfo(host or None, port, family, kind, 0,
                                 flags)[0][4]
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            # Every node of a mass deploy announces within the same second.
            sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TrackerServer:
    """The tracker's HTTP (and UDP) server, answering on a daemon thread."""

    def __init__(self, table, host='0.0.0.0', port=6969, udp_port=None,
                 max_connections=MAX_CONNECTIONS,
                 request_timeout=REQUEST_TIMEOUT, idle_timeout=IDLE_TIMEOUT,
                 status_token=None):
        """Bind the listening sockets.

        :param table: the :class:`~ironic_bt.tracker.swarm_table.SwarmTable`.
        :param host: numeric address to listen on; IPv6 if it contains ':'.
        :param port: TCP port; 0 picks a free one (see :attr:`port`).
        :param udp_port: UDP port of the BEP 15 tracker; None for none, 0
            picks a free one (see :attr:`udp_port`).
        :param max_connections: most connections at once.
        :param request_timeout: seconds for a request to arrive whole.
        :param idle_timeout: seconds a connection may wait between requests.
        :param status_token: opens ``/status`` to other hosts when sent in
            the ``X-Status-Token`` header; without it only the tracker's
            own host may read it.
        :raises: OSError if an address cannot be bound.
        """
        self._router = _Router(table, status_token)
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self._sock = _bind(host, port, socket.SOCK_STREAM)
        self._udp_sock = None
        if udp_port is not None:
            try:
                self._udp_sock = _bind(host, udp_port, socket.SOCK_DGRAM)
            except BaseException:
                self._sock.close()
                raise
        self._udp = udp.UdpTracker(table)
        self._address = self._sock.getsockname()
        self.loop = None
        self._thread = None
        self._ready = threading.Event()
        # Connections by last activity, the quietest first.
        self._connections = collections.OrderedDict()

    @property
    def port(self):
        """The TCP port actually bound."""
        return self._address[1]

    @property
    def udp_port(self):
        """The UDP port actually bound, or None."""
        if self._udp_sock is None:
            return None
        return self._udp_sock.getsockname()[1]

    def udp_announce_url(self, host):
        """The ``udp://`` announce URL as reached at ``host``, or None."""
        if self._udp_sock is None:
            return None
        return udp.announce_url(host, self.udp_port)

    def announce_url(self, host):
        """Return the announce URL of this tracker as reached at ``host``.

        :param host: address or name clients use; IPv6 gets brackets.
        """
        return 'http://%s:%d/announce' % (netutils.escape_ipv6(host),
                                          self.port)

    # -- called from the loop --------------------------------------------

    def respond(self, head, client, local=None):
        return self._router.respond(head, client, local)

    def handle(self, data, ip, port):
        return self._udp.handle(data, ip, port)

    def opened(self, conn):
        self._connections[conn] = None
        while len(self._connections) > self.max_connections:
            quietest = next(iter(self._connections))
            del self._connections[quietest]
            LOG.debug('Tracker at %(max)d connections: closing the quietest '
                      'one, from %(peer)s',
                      {'max': self.max_connections, 'peer': quietest.peer})
            quietest.abort()

    def touched(self, conn):
        if conn in self._connections:
            self._connections.move_to_end(conn)

    def closed(self, conn):
        self._connections.pop(conn, None)

    # -- lifecycle -----------------------------------------------------

    def _run(self):
        loop = asyncio.new_event_loop()
        self.loop = loop
        datagrams = None
        try:
            server = loop.run_until_complete(loop.create_server(
                lambda: _Connection(self), sock=self._sock))
            if self._udp_sock is not None:
                datagrams, _protocol = loop.run_until_complete(
                    loop.create_datagram_endpoint(lambda: _Datagrams(self),
                                                  sock=self._udp_sock))
        except BaseException:
            self._ready.set()
            loop.close()
            raise
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            if datagrams is not None:
                datagrams.close()
            for conn in list(self._connections):
                conn.abort()
            loop.run_until_complete(server.wait_closed())
            loop.close()

    def start(self):
        """Start answering requests on a daemon thread."""
        self._thread = threading.Thread(target=self._run,
                                        name='ironic-bt-tracker',
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        LOG.info('BitTorrent tracker listening on %(host)s TCP port '
                 '%(port)d%(udp)s',
                 {'host': self._address[0], 'port': self.port,
                  'udp': '' if self.udp_port is None
                  else ' and UDP port %d' % self.udp_port})

    def stop(self):
        """Stop answering; close the connections and listening sockets."""
        if self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self._thread = None
        self._sock.close()
        if self._udp_sock is not None:
            self._udp_sock.close()
        LOG.info('BitTorrent tracker on port %d stopped', self.port)
