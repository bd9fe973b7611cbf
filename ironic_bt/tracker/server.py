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

All tracker logic lives in :mod:`ironic_bt.tracker.protocol`.
"""

import http.server
import json
import socket
import sys
import threading

from oslo_log import log

from ironic_bt.tracker import protocol

LOG = log.getLogger(__name__)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = 'ironic-bt-tracker'

    def do_GET(self):
        # http.server decodes the request line as latin-1, so this gives
        # back the raw, still percent-encoded query bytes.
        path, _sep, query = self.path.partition('?')
        query = query.encode('latin-1')
        table = self.server.table
        # Exactly "/announce": libtorrent's SSRF mitigation refuses to
        # announce to a tracker on localhost under any other path.
        if path in ('/announce', '/scrape'):
            try:
                if path == '/announce':
                    body = table.announce(protocol.parse_announce(
                        query, self.client_address[0]))
                else:
                    body = table.scrape(protocol.parse_scrape(query))
            except protocol.TrackerError as e:
                LOG.debug('Refused %(path)s from %(client)s: %(reason)s',
                          {'path': path, 'client': self.client_address[0],
                           'reason': e})
                body = protocol.failure(str(e))
            # Failures too are 200: clients only read "failure reason"
            # from a successful HTTP reply.
            self._reply(200, 'text/plain', body)
        elif path == '/status':
            self._reply(200, 'application/json',
                        json.dumps(table.status()).encode('utf-8'))
        else:
            self._reply(404, 'text/plain', b'not found\n')

    def _reply(self, code, content_type, body):
        self.send_response(code)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        LOG.debug('%(client)s: %(message)s',
                  {'client': self.address_string(), 'message': format % args})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Every node of a mass deploy announces within the same second; with
    # socketserver's backlog of 5 the rest of their SYNs are dropped and
    # retried a second later, and those nodes start a second late.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A client that hangs up early (libtorrent does when its session
        # closes during a "stopped" announce) is routine, not a failure.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            LOG.debug('Tracker client %s disconnected early', client_address)
        else:
            # Called from socketserver's except clause: log the traceback.
            LOG.error('Tracker failed to answer %s', client_address,
                      exc_info=error)


class _Server6(_Server):
    address_family = socket.AF_INET6


class TrackerServer:
    """The tracker's HTTP server, answering on a daemon thread."""

    def __init__(self, table, host='0.0.0.0', port=6969):
        """Bind the listening socket.

        :param table: the :class:`~ironic_bt.tracker.protocol.SwarmTable`.
        :param host: address to listen on; IPv6 if it contains ':'.
        :param port: TCP port; 0 picks a free one (see :attr:`port`).
        :raises: OSError if the address cannot be bound.
        """
        cls = _Server6 if ':' in host else _Server
        self._server = cls((host, port), _Handler)
        self._server.table = table
        self._thread = None

    @property
    def port(self):
        """The TCP port actually bound."""
        return self._server.server_address[1]

    def announce_url(self, host):
        """Return the announce URL of this tracker as reached at ``host``.

        :param host: address or name clients use; IPv6 gets brackets.
        """
        if ':' in host and not host.startswith('['):
            host = '[%s]' % host
        return 'http://%s:%d/announce' % (host, self.port)

    def start(self):
        """Start answering requests on a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name='ironic-bt-tracker',
                                        daemon=True)
        self._thread.start()
        LOG.info('BitTorrent tracker listening on %(host)s port %(port)d',
                 {'host': self._server.server_address[0], 'port': self.port})

    def stop(self):
        """Stop answering and close the listening socket."""
        # shutdown() waits for serve_forever(), which never runs if the
        # server was not started.
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        LOG.info('BitTorrent tracker on port %d stopped', self.port)
