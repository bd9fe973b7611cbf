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

"""A hostile BitTorrent peer: claims every piece, serves random bytes.

A libtorrent seeder cannot play this part: in seed mode it hashes each
piece before serving it and drops the ones that do not match. This peer
speaks the plain peer wire protocol (BEP 3) over TCP: it answers the
handshake for one info-hash, sends a full bitfield, unchokes whoever is
interested and answers every request with random bytes of the requested
length. It counts the bytes it sent to a JSON file after each connection.

Run as ``python -m tests.lab.badpeer --bind IP --port N --info-hash HEX
--pieces N --stats FILE``.
"""

import argparse
import json
import os
import socket
import struct
import threading

_PROTOCOL = b'\x13BitTorrent protocol'
_UNCHOKE, _INTERESTED, _BITFIELD, _REQUEST, _PIECE = 1, 2, 5, 6, 7


def _recv(sock, n):
    data = b''
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError('closed')
        data += chunk
    return data


def _message(msg_id, payload=b''):
    return struct.pack('>IB', len(payload) + 1, msg_id) + payload


class BadPeer:

    def __init__(self, bind, port, info_hash, pieces, stats):
        self.info_hash = info_hash
        self.pieces = pieces
        self.stats = stats
        self.sent = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((bind, port))
        self.sock.listen(16)

    def serve(self):
        while True:
            conn, _addr = self.sock.accept()
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        try:
            hello = _recv(conn, 68)
            if hello[:20] != _PROTOCOL or hello[28:48] != self.info_hash:
                return
            conn.sendall(_PROTOCOL + bytes(8) + self.info_hash
                         + os.urandom(20))
            bits = bytearray((self.pieces + 7) // 8)
            for i in range(self.pieces):
                bits[i // 8] |= 0x80 >> (i % 8)
            conn.sendall(_message(_BITFIELD, bytes(bits)))
            while True:
                length, = struct.unpack('>I', _recv(conn, 4))
                if not length:
                    continue
                body = _recv(conn, length)
                if body[0] == _INTERESTED:
                    conn.sendall(_message(_UNCHOKE))
                elif body[0] == _REQUEST:
                    index, begin, size = struct.unpack('>III', body[1:13])
                    conn.sendall(_message(
                        _PIECE, struct.pack('>II', index, begin)
                        + os.urandom(size)))
                    with self.lock:
                        self.sent += size
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
            self._save()

    def _save(self):
        with self.lock:
            tmp = self.stats + '.tmp'
            with open(tmp, 'w') as f:
                json.dump({'sent_bytes': self.sent}, f)
            os.replace(tmp, self.stats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bind', required=True)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--info-hash', required=True)
    parser.add_argument('--pieces', type=int, required=True)
    parser.add_argument('--stats', required=True)
    args = parser.parse_args(argv)
    peer = BadPeer(args.bind, args.port, bytes.fromhex(args.info_hash),
                   args.pieces, args.stats)
    print('serving bad pieces on %s:%d' % (args.bind, args.port), flush=True)
    peer.serve()


if __name__ == '__main__':
    main()
