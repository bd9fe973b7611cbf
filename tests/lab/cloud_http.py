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

"""The local cloud's image HTTP server (``[deploy]http_url``).

Ironic does not serve ``[deploy]http_root`` itself; any web server does.
This one is :mod:`http.server` plus two things the harness needs:

* single ``Range`` requests, so that libtorrent can use the image URL as a
  BEP 19 web seed;
* a count of the bytes sent to each client address, rewritten to a JSON
  file after every request, so the deploy summary can show how much of
  the image each node (and the conductor) pulled over HTTP.

Run as ``python -m tests.lab.cloud_http --bind IP --port N --root DIR
--stats FILE``.
"""

import argparse
import functools
import http.server
import json
import os
import re
import threading

_RANGE_RE = re.compile(r'^bytes=(\d*)-(\d*)$')


class Stats:
    """Bytes sent per client address, persisted after every change."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.sent = {}

    def add(self, client, nbytes):
        with self.lock:
            self.sent[client] = self.sent.get(client, 0) + nbytes
            tmp = self.path + '.tmp'
            with open(tmp, 'w') as f:
                json.dump(self.sent, f, sort_keys=True)
            os.replace(tmp, self.path)


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support and byte accounting."""

    protocol_version = 'HTTP/1.1'
    stats = None

    def list_directory(self, path):
        # As an operator's server must: the web seed of an SSL swarm is an
        # unguessable name in [deploy]http_root/bittorrent.
        self.send_error(403, 'No directory listing')
        return None

    def send_head(self):
        self._range = None
        header = self.headers.get('Range')
        path = self.translate_path(self.path)
        if not header or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        match = _RANGE_RE.match(header.strip())
        if not match or match.groups() == ('', ''):
            self.send_error(416, 'Unsupported range %s' % header)
            return None
        first, last = match.groups()
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        else:
            start, end = max(0, size - int(last)), size - 1
        if start >= size or start > end:
            self.send_response(416)
            self.send_header('Content-Range', 'bytes */%d' % size)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return None
        f = open(path, 'rb')
        f.seek(start)
        self._range = end - start + 1
        self.send_response(206)
        self.send_header('Content-Type', self.guess_type(path))
        self.send_header('Content-Range',
                         'bytes %d-%d/%d' % (start, end, size))
        self.send_header('Content-Length', str(self._range))
        self.send_header('Accept-Ranges', 'bytes')
        self.end_headers()
        return f

    def copyfile(self, source, outputfile):
        remaining = self._range
        sent = 0
        try:
            while remaining is None or remaining > 0:
                want = 1 << 20 if remaining is None else min(1 << 20,
                                                             remaining)
                chunk = source.read(want)
                if not chunk:
                    break
                outputfile.write(chunk)
                sent += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
        finally:
            # Count what was sent even when the client went away (an agent
            # killed mid-download), so the figures add up.
            if sent:
                # Image bytes per client; the .torrent files agents fetch
                # (metadata, not the image) under a key of their own.
                client = self.client_address[0]
                if self.path.endswith('.torrent'):
                    client = 'torrent ' + client
                self.stats.add(client, sent)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bind', required=True)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--root', required=True)
    parser.add_argument('--stats', required=True)
    args = parser.parse_args(argv)
    handler = functools.partial(Handler, directory=args.root)
    Handler.stats = Stats(args.stats)
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    server.daemon_threads = True
    print('serving %s on http://%s:%d/' % (args.root, args.bind, args.port),
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == '__main__':
    main()
