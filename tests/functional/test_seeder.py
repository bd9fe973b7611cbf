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

"""The conductor's seeder, a real libtorrent session on 127.0.0.1."""

import logging
import os
import socket
import threading
import time

from ironic_bt.common import torrent
from ironic_bt import seeder
from tests.lab import procs


def _closed_port():
    """A local TCP port nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_tracker_errors_are_logged_when_they_happen(tmp_path, caplog):
    # Nothing asks the seeder for its stats: the error still reaches the
    # conductor's log within seconds, naming the tracker without the key
    # its announce URL carries.
    image = tmp_path / 'image.raw'
    image.write_bytes(b'ironic-bt' * 10000)
    meta = torrent.build(str(image))
    url = 'http://127.0.0.1:%d/announce' % _closed_port()
    seed = seeder.Seeder('127.0.0.1', 0)
    try:
        with caplog.at_level(logging.WARNING, logger='ironic_bt.seeder'):
            seed.add(meta, str(image), trackers=[url + '?auth=S3cretKey'],
                     verified=True)
            procs.wait_for(lambda: any(url in r.getMessage()
                                       for r in caplog.records),
                           20, 0.1, 'the tracker error in the log')
    finally:
        seed.close()
    lines = [r.getMessage() for r in caplog.records
             if r.name == 'ironic_bt.seeder']
    assert any(line.startswith('Seeder: tracker %s: ' % url)
               for line in lines), lines
    assert not any('S3cretKey' in line for line in lines)


def _alert_readers():
    return [t for t in threading.enumerate()
            if t.name == 'ironic-bt-seeder-alerts']


def test_close_stops_the_alert_reader():
    before = len(_alert_readers())
    seed = seeder.Seeder('127.0.0.1', 0)
    assert len(_alert_readers()) == before + 1
    seed.close()
    assert len(_alert_readers()) == before


def test_upload_rate_limit_holds_for_peers_on_private_addresses(tmp_path):
    # Provisioning networks are private, and libtorrent exempts "local"
    # peers from rate limits unless the seeder puts them in the global
    # class: a limit the operator set must hold on 127.0.0.1 too.
    from ipa_extension import writer

    size = 6 * 1024 * 1024
    limit = 2 * 1024 * 1024
    image = tmp_path / 'image.raw'
    image.write_bytes(os.urandom(size))
    meta = torrent.build(str(image))
    seed = seeder.Seeder('127.0.0.1', 0, upload_rate_limit=limit)
    try:
        seed.add(meta, str(image), verified=True)
        start = time.monotonic()
        result = writer.write(meta, str(tmp_path / 'disk'),
                              peers=['127.0.0.1:%d' % seed.port],
                              listen_host='127.0.0.1', listen_port=0,
                              linger_timeout=0, create=True)
        seconds = time.monotonic() - start
    finally:
        seed.close()
    assert result.downloaded_bytes == size
    # Unlimited, this takes well under a second; limited, at least the
    # time the bytes take at the limit (libtorrent's quota may let the
    # first second's worth through at once).
    assert seconds >= (size - limit) / limit, seconds


def test_port_survives_libtorrent_reopening_its_sockets():
    # While libtorrent reopens its listen sockets after a network change it
    # reports port 0; the conductor must still hand agents the real one.
    from unittest import mock

    from ironic_bt.common import swarm

    seed = seeder.Seeder('127.0.0.1', 0)
    try:
        port = seed.port
        assert port > 0
        with mock.patch.object(swarm, 'listen_port', autospec=True,
                               return_value=0):
            assert seed.port == port
    finally:
        seed.close()
