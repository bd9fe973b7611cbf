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

"""Standard BitTorrent clients from Debian, run headless in a lab host.

qBittorrent (``qbittorrent-nox``, built on libtorrent) and rtorrent (built
on libtorrent-rakshasa, BitTorrent v1 only and without the BEP 6 fast
extension) join a swarm the way an operator's own tools would: from the
``.torrent`` file, through the tracker. Everything that would look beyond
the provisioning network is switched off (DHT, local peer discovery, PeX,
UPnP/NAT-PMP), and the lab hosts have no default route anyway.
"""

import hashlib
import os
import shutil
import textwrap
import time

from ironic_bt.common import torrent
from tests.lab import procs

CLIENT_PORT = 6891


class Client:
    """One client process in one lab host, downloading one torrent."""

    name = None
    package = None

    def __init__(self, host, state_dir, torrent_path, tracker_url):
        """Prepare a client in ``host`` for the torrent at ``torrent_path``.

        The client gets its own copy of the torrent with ``tracker_url`` as
        its announce URL (same info-hash): it has no other way to learn it.
        """
        self.host = host
        self.dir = os.path.join(state_dir, '%s-%s' % (self.name, host.name))
        self.download_dir = os.path.join(self.dir, 'download')
        self.proc = None
        os.makedirs(self.download_dir, exist_ok=True)
        with open(torrent_path, 'rb') as f:
            data = f.read()
        self.torrent_path = os.path.join(self.dir, 'image.torrent')
        with open(self.torrent_path, 'wb') as f:
            f.write(torrent.with_trackers(data, [tracker_url]))

    @classmethod
    def available(cls):
        return shutil.which(cls.binary) is not None

    @property
    def log(self):
        return os.path.join(self.dir, 'client.log')

    @property
    def path(self):
        """Where the client writes the image."""
        return os.path.join(self.download_dir, torrent.FILE_NAME)

    def start(self):
        self.proc = self.host.popen(self.command(), self.log,
                                    env={'HOME': self.dir})
        return self

    def sha256(self):
        digest = hashlib.sha256()
        try:
            with open(self.path, 'rb') as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        return digest.hexdigest()

    def problem(self, image):
        """None once the client's file is the image, byte for byte.

        Otherwise what is wrong, for the test's message.
        """
        if (os.path.exists(self.path)
                and os.path.getsize(self.path) == image.size
                and self.sha256() == image.sha256):
            return None
        if self.proc.poll() is not None:
            return '%s on %s exited with %s:\n%s' % (
                self.name, self.host.name, self.proc.returncode,
                procs.tail_log(self.log, 20))
        size = (os.path.getsize(self.path) if os.path.exists(self.path)
                else 0)
        return '%s on %s does not have the image (%s holds %d bytes)%s' % (
            self.name, self.host.name, self.path, size, self.diagnosis())

    def diagnosis(self):
        return ''

    def stop(self, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except Exception:
            self.proc.kill()
            self.proc.wait()


class Rtorrent(Client):
    """rtorrent 0.9 in daemon mode, configured by an rc file of its own."""

    name = 'rtorrent'
    binary = 'rtorrent'

    def command(self):
        session = os.path.join(self.dir, 'session')
        os.makedirs(session, exist_ok=True)
        rc = os.path.join(self.dir, 'rtorrent.rc')
        with open(rc, 'w') as f:
            f.write(textwrap.dedent('''\
                directory.default.set = {download}
                session.path.set = {session}
                network.bind_address.set = {ip}
                network.local_address.set = {ip}
                network.port_range.set = {port}-{port}
                network.port_random.set = no
                dht.mode.set = disable
                protocol.pex.set = no
                trackers.use_udp.set = no
                system.daemon.set = true
                log.open_file = "main", {dir}/rtorrent-main.log
                log.add_output = "info", "main"
                log.add_output = "tracker_info", "main"
                ''').format(download=self.download_dir, session=session,
                            ip=self.host.ip, port=CLIENT_PORT, dir=self.dir))
        # -n: no ~/.rtorrent.rc; torrents given on the command line start.
        return ['rtorrent', '-n', '-o', 'import=%s' % rc, self.torrent_path]


class QBittorrent(Client):
    """qbittorrent-nox, with a profile directory of its own."""

    name = 'qbittorrent'
    binary = 'qbittorrent-nox'

    def command(self):
        config = os.path.join(self.dir, 'profile', 'qBittorrent', 'config')
        os.makedirs(config, exist_ok=True)
        with open(os.path.join(config, 'qBittorrent.conf'), 'w') as f:
            f.write(textwrap.dedent('''\
                [LegalNotice]
                Accepted=true

                [BitTorrent]
                Session\\DHTEnabled=false
                Session\\LSDEnabled=false
                Session\\PeXEnabled=false
                Session\\Port={port}
                Session\\InterfaceAddress={ip}
                Session\\QueueingSystemEnabled=false
                Session\\DefaultSavePath={download}
                Session\\TempPathEnabled=false
                Session\\AddTorrentPaused=false

                [Preferences]
                Connection\\UPnP=false
                Connection\\ResolvePeerCountries=false
                General\\Locale=en
                WebUI\\Address=127.0.0.1
                WebUI\\Port={webui}
                WebUI\\LocalHostAuth=true
                ''').format(port=CLIENT_PORT, ip=self.host.ip,
                            download=self.download_dir,
                            webui=CLIENT_PORT + 1))
        return ['qbittorrent-nox', '--profile=%s' % os.path.join(
                    self.dir, 'profile'),
                '--save-path=%s' % self.download_dir,
                '--add-paused=false', '--skip-dialog=true',
                self.torrent_path]


CLIENTS = (QBittorrent, Rtorrent)


def wait_complete(clients, image, timeout):
    """Wait until every client has the image, or the timeout.

    :returns: {client name: '' or what is wrong with it}.
    """
    deadline = time.monotonic() + timeout
    while True:
        problems = {client.name: client.problem(image) for client in clients}
        if not any(problems.values()) or time.monotonic() >= deadline:
            return {name: problem or '' for name, problem in problems.items()}
        time.sleep(1)
