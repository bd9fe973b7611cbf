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

"""A study of the line-rate lever "several sessions per node" (issue 8).

libtorrent runs each session's peer connections, and with SSL every TLS
record's decryption, on the session's one network thread. This writer
splits a torrent over ``sessions`` libtorrent sessions in one process, each
fetching a disjoint stripe of the pieces (piece ``i`` goes to session
``i % sessions``) from the seeder and writing it to the same target, to
measure what more network threads would win before the product's writer
is built around them.

It is a study, not the product: no piece plan, no tracker, no web seeds,
no resume; only the seeder. It holds the target open as the product does
(so that no per-block close drops the page cache), flushes it, and reads
it back to check the image's SHA-256, so that its seconds compare with the
product's ``verified`` moment; it reports the same events.
"""

import hashlib
import os
import time

import libtorrent as lt

from ipa_extension import device
from ironic_bt.common import swarm

_CHUNK = 4 * 1024 * 1024


def _finished(handle):
    state = handle.status().state
    return state in (lt.torrent_status.finished, lt.torrent_status.seeding)


def write(meta, target, seeder, listen_host, listen_port, sessions,
          credentials=None, settings=None, report=None, timeout=300):
    """Download ``meta`` to ``target`` over ``sessions`` stripes.

    :param seeder: (host, port) of the seeder.
    :param report: called as ``report(event=..., **fields)``.
    :returns: a dict like the product's write result.
    """
    report = report or (lambda **kw: None)
    held = os.open(target, os.O_RDWR)
    started = time.monotonic()
    running = []
    try:
        for k in range(sessions):
            session = swarm.make_session(
                listen_host, listen_port + k, ssl=credentials is not None,
                **(settings or {}))
            params = lt.add_torrent_params()
            params.ti = meta.torrent_info()
            params.save_path = device.save_path(target)
            params.renamed_files = {0: device.file_name(target)}
            params.flags |= (lt.torrent_flags.no_verify_files
                             | lt.torrent_flags.sequential_download)
            params.flags &= ~(lt.torrent_flags.auto_managed
                              | lt.torrent_flags.paused)
            params.piece_priorities = [
                4 if i % sessions == k else 0
                for i in range(meta.num_pieces)]
            handle = swarm.add_torrent(session, params, credentials)
            handle.connect_peer(seeder)
            running.append((session, handle))
        deadline = started + timeout
        while not all(_finished(h) for _s, h in running):
            if time.monotonic() > deadline:
                raise RuntimeError('stripes: not done in %d s' % timeout)
            for session, handle in running:
                for alert in session.pop_alerts():
                    if isinstance(alert, (lt.torrent_error_alert,
                                          lt.file_error_alert)):
                        raise RuntimeError('stripes: %s' % alert.message())
                if handle.status().num_peers == 0:
                    handle.connect_peer(seeder)
            time.sleep(0.05)
        downloaded = sum(h.status().total_payload_download
                         for _s, h in running)
        for _s, handle in running:
            handle.flush_cache()
        download_seconds = time.monotonic() - started
        os.fsync(held)
        digest = hashlib.sha256()
        with open(target, 'rb') as f:
            left = meta.size
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
        sha256 = digest.hexdigest()
        report(event='verified', at=time.time())
        return {'target': target, 'size': meta.size,
                'sha256': sha256, 'downloaded_bytes': downloaded,
                'downloaded_from_seeder_bytes': downloaded,
                'download_seconds': round(download_seconds, 3),
                'verify_seconds': round(
                    time.monotonic() - started - download_seconds, 3),
                'sessions': sessions}
    finally:
        for session, _h in running:
            session.pause()
        del running
        os.close(held)
