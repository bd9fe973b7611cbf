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

"""Tests for the publisher, with a real seeder, tracker and image."""

import errno
import os
import socket
import threading
import time
from unittest import mock
import urllib.parse
import urllib.request

import testtools

from ironic_bt.common import publication
from ironic_bt.common import torrent
from ironic_bt import exception
from ironic_bt import publisher
from ironic_bt import seeder
from ironic_bt import torrent_cache
from ironic_bt.tracker import server
from ironic_bt.tracker import swarm_table
from tests import bencode
from tests.lab import procs
from tests.unit.conductor import base

NODE_A = '1be26c0b-03f2-4d2e-ae87-c02d7f33c123'
NODE_B = '2be26c0b-03f2-4d2e-ae87-c02d7f33c124'


def announce(url, meta, port=51413, left=None, downloaded=0, auth=None):
    """Announce to url; ``auth``: an announce key (see Publication)."""
    params = {
        'info_hash': meta.info_hash_v1,
        'peer_id': b'-XX0000-%012d' % port,
        'port': port, 'uploaded': 0, 'downloaded': downloaded,
        'left': meta.size if left is None else left}
    if auth is not None:
        params['auth'] = auth
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    sep = '&' if '?' in url else '?'
    with urllib.request.urlopen(url + sep + query, timeout=5) as response:
        return bencode.decode(response.read())


class PublisherTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.image = base.make_image(self.tmp)
        self.link_dir = os.path.join(self.data_dir, 'seeding')

    def links(self):
        return sorted(os.listdir(self.link_dir))

    def seeding(self):
        return [image['info_hash']
                for image in self.publisher.status()['images']]

    def test_publish(self):
        pub = self.publisher.publish(NODE_A, self.image, name='image.raw')

        expected = torrent.build(self.image)
        self.assertEqual(expected.data, pub.meta.data)
        status = self.publisher.status()
        self.assertEqual(
            ['%s?node=%s' % (status['trackers'][0], NODE_A)], pub.trackers)
        self.assertRegex(status['trackers'][0],
                         r'^http://127\.0\.0\.1:\d+/announce$')
        self.assertEqual(['127.0.0.1:%d' % status['seeder_port']], pub.peers)
        # The seeder holds a hard link, keyed by info-hash, so the image
        # cache cannot evict the image while it is seeded.
        link = os.path.join(self.link_dir, pub.info_hash + '.img')
        self.assertTrue(os.path.samefile(self.image, link))
        self.assertEqual(2, os.stat(self.image).st_nlink)
        self.assertEqual(
            {'name': 'image.raw', 'size': 3 * base.MiB, 'nodes': [NODE_A],
             'uploaded': 0, 'peers': 0, 'error': None},
            self.publisher.stats(pub.info_hash))
        self.assertEqual([pub.info_hash], self.seeding())
        # The agent's tracker URL serves the torrent and records the node.
        reply = announce(pub.trackers[0], pub.meta,
                         auth=pub.announce_key)
        self.assertNotIn(b'failure reason', reply)
        self.assertEqual(10, reply[b'interval'])
        swarm, = self.publisher.status()['swarms']
        self.assertEqual('image.raw', swarm['name'])
        self.assertIn(NODE_A, [peer['node'] for peer in swarm['peers']])

    def test_web_seed_link_in_http_root(self):
        http_root = os.path.join(self.tmp, 'httpboot')
        self.config(group='deploy', http_root=http_root,
                    http_url='http://127.0.0.1:8080/')
        pub = self.publisher.publish(NODE_A, self.image)

        # SSL swarms: an unguessable name, not the public info-hash.
        # Beside it, the torrent (not a secret) that agents fetch.
        torrent_file = pub.info_hash + '.torrent'
        name, = set(os.listdir(os.path.join(http_root, 'bittorrent'))) - {
            torrent_file}
        self.assertEqual('http://127.0.0.1:8080/bittorrent/' + torrent_file,
                         pub.torrent_url)
        with open(os.path.join(http_root, 'bittorrent', torrent_file),
                  'rb') as f:
            self.assertEqual(pub.meta.data, f.read())
        self.assertRegex(name, r'^[0-9a-f]{32}\.img$')
        self.assertNotIn(pub.info_hash, name)
        link = os.path.join(http_root, 'bittorrent', name)
        self.assertEqual(['http://127.0.0.1:8080/bittorrent/' + name],
                         pub.web_seeds)
        self.assertTrue(os.path.samefile(self.image, link))
        # Another node of the same image gets the same URL; the link goes
        # with the last node.
        self.assertEqual(pub.web_seeds,
                         self.publisher.publish(NODE_B, self.image).web_seeds)
        self.publisher.release(NODE_A)
        self.assertTrue(os.path.exists(link))
        self.publisher.release(NODE_B)
        self.assertEqual([], os.listdir(os.path.join(http_root,
                                                     'bittorrent')))
        self.assertEqual(1, os.stat(self.image).st_nlink)

    def test_web_seed_of_a_plain_torrent_is_named_by_its_info_hash(self):
        http_root = os.path.join(self.tmp, 'httpboot')
        self.config(group='deploy', http_root=http_root,
                    http_url='http://127.0.0.1:8080/')
        self.config(group='bittorrent', ssl=False)
        pub = self.publisher.publish(NODE_A, self.image)
        self.assertEqual(
            ['http://127.0.0.1:8080/bittorrent/%s.img' % pub.info_hash],
            pub.web_seeds)

    def test_web_seed_off_or_unlinkable(self):
        http_root = os.path.join(self.tmp, 'httpboot')
        self.config(group='deploy', http_root=http_root,
                    http_url='http://127.0.0.1:8080/')
        self.config(group='bittorrent', web_seed_sources=[])
        pub = self.publisher.publish(NODE_A, self.image)
        self.assertEqual([], pub.web_seeds)
        # The torrent is still served.
        self.assertEqual([pub.info_hash + '.torrent'],
                         os.listdir(os.path.join(http_root, 'bittorrent')))
        self.publisher.release(NODE_A)

        # An http_root the conductor cannot write: no fallback, but the
        # deploy goes on (the seeder is what serves it).
        self.config(group='bittorrent', web_seed_sources=['conductor'])
        http_root = os.path.join(self.tmp, 'a-file')
        self.config(group='deploy', http_root=http_root)
        with open(http_root, 'w'):
            pass
        with mock.patch.object(publisher.LOG, 'warning',
                               autospec=True) as warning_mock:
            pub = self.publisher.publish(NODE_A, self.image)
        self.assertEqual([], pub.web_seeds)
        self.assertIsNone(pub.torrent_url)
        messages = [c.args[0] % c.args[1]
                    for c in warning_mock.call_args_list]
        web, = [m for m in messages if 'agents get no web seed' in m]
        inline, = [m for m in messages if 'so agents get it inline' in m]
        for message in (web, inline):
            self.assertIn(NODE_A, message)
            self.assertIn(http_root, message)

    def test_progress_per_node(self):
        pub = self.publisher.publish(NODE_A, self.image, name='image.raw')
        self.assertIsNone(self.publisher.progress(NODE_A))

        announce(pub.trackers[0], pub.meta, left=base.MiB,
                 downloaded=2 * base.MiB, auth=pub.announce_key)

        progress = self.publisher.progress(NODE_A)
        self.assertEqual(
            {'percent': 66.7, 'left': base.MiB, 'downloaded': 2 * base.MiB,
             'uploaded': 0},
            {k: v for k, v in progress.items()
             if k != 'seconds_since_seen'})
        self.assertIsNone(self.publisher.progress(NODE_B))

    def announce_stopped(self, pub):
        query = urllib.parse.urlencode({
            'info_hash': pub.meta.info_hash_v1,
            'peer_id': b'-XX0000-000000051413', 'port': 51413,
            'uploaded': 0, 'downloaded': 0, 'left': 0, 'event': 'stopped',
            'auth': pub.announce_key}, quote_via=urllib.parse.quote)
        with urllib.request.urlopen(pub.trackers[0] + '&' + query,
                                    timeout=5) as response:
            self.assertNotIn(b'failure reason', response.read())

    def test_stopped_nodes(self):
        pub = self.publisher.publish(NODE_A, self.image, name='image.raw')
        self.publisher.publish(NODE_B, self.image, name='image.raw')
        self.assertEqual([], self.publisher.stopped_nodes(30))
        announce(pub.trackers[0], pub.meta, left=0, auth=pub.announce_key)
        self.assertEqual([], self.publisher.stopped_nodes(30))

        self.announce_stopped(pub)
        self.assertEqual([NODE_A], self.publisher.stopped_nodes(30))
        # Reported until forgotten, released or too old.
        self.assertEqual([NODE_A], self.publisher.stopped_nodes(30))
        self.publisher.forget_stopped(NODE_A)
        self.assertEqual([], self.publisher.stopped_nodes(30))
        self.announce_stopped(pub)
        self.assertEqual([], self.publisher.stopped_nodes(0))
        self.announce_stopped(pub)
        self.publisher.release(NODE_A)
        self.assertEqual([], self.publisher.stopped_nodes(30))
        # A node without a publication (released, or never published
        # here) is not remembered, whatever it announces.
        self.announce_stopped(pub)
        self.assertEqual([], self.publisher.stopped_nodes(30))

    def test_refcount_by_node(self):
        with mock.patch.object(torrent, 'build', autospec=True,
                               side_effect=torrent.build) as build:
            pub_a = self.publisher.publish(NODE_A, self.image)
            pub_b = self.publisher.publish(NODE_B, self.image)
        # The second node is served from the cache, without hashing.
        build.assert_called_once_with(self.image)
        self.assertEqual(pub_a.meta, pub_b.meta)
        self.assertTrue(pub_b.trackers[0].endswith('?node=' + NODE_B))
        self.assertEqual([NODE_A, NODE_B],
                         self.publisher.stats(pub_a.info_hash)['nodes'])
        self.assertEqual([pub_a.info_hash + '.img'], self.links())

        self.assertTrue(self.publisher.release(NODE_A))
        # Still needed by node B: still seeded, tracked and linked.
        self.assertEqual([NODE_B],
                         self.publisher.stats(pub_a.info_hash)['nodes'])
        self.assertEqual([pub_a.info_hash], self.seeding())
        self.assertNotIn(b'failure reason',
                         announce(pub_b.trackers[0], pub_b.meta,
                                  auth=pub_b.announce_key))
        self.assertEqual(2, os.stat(self.image).st_nlink)

        self.assertTrue(self.publisher.release(NODE_B))
        self.assertIsNone(self.publisher.stats(pub_a.info_hash))
        self.assertEqual([], self.seeding())
        self.assertEqual([], self.links())
        self.assertEqual(1, os.stat(self.image).st_nlink)
        self.assertIn(b'failure reason',
                      announce(pub_b.trackers[0], pub_b.meta,
                               auth=pub_b.announce_key))
        self.assertEqual([], self.publisher.status()['images'])
        self.assertFalse(self.publisher.release(NODE_B))

    def test_concurrent_publish_hashes_once(self):
        results = {}

        def publish(node):
            results[node] = self.publisher.publish(node, self.image)

        with mock.patch.object(torrent, 'build', autospec=True,
                               side_effect=torrent.build) as build:
            threads = [threading.Thread(target=publish, args=(node,))
                       for node in (NODE_A, NODE_B)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        build.assert_called_once_with(self.image)
        self.assertEqual(results[NODE_A].meta, results[NODE_B].meta)
        self.assertEqual([NODE_A, NODE_B], self.publisher.nodes())

    def test_node_switching_image_releases_the_previous(self):
        other = base.make_image(self.tmp, 'other.raw', seed=2)
        first = self.publisher.publish(NODE_A, self.image)
        second = self.publisher.publish(NODE_A, other)
        self.assertNotEqual(first.info_hash, second.info_hash)
        self.assertEqual([second.info_hash], self.seeding())
        self.assertEqual([second.info_hash + '.img'], self.links())
        self.assertEqual(1, os.stat(self.image).st_nlink)

    def test_publish_is_idempotent(self):
        first = self.publisher.publish(NODE_A, self.image)
        second = self.publisher.publish(NODE_A, self.image)
        self.assertEqual(first, second)
        self.assertEqual(first, self.publisher.publication(NODE_A))
        self.assertEqual([NODE_A],
                         self.publisher.stats(first.info_hash)['nodes'])
        self.assertTrue(self.publisher.release(NODE_A))
        self.assertIsNone(self.publisher.publication(NODE_A))

    def test_restart_uses_cached_torrent_and_drops_old_links(self):
        stray = base.make_image(self.tmp, 'stray.raw', seed=3)
        pub = self.publisher.publish(NODE_A, self.image)
        self.publisher.publish(NODE_B, stray)
        self.publisher.shutdown()
        # A conductor restart: the links stay, nothing is seeded.
        self.assertEqual(2, os.stat(stray).st_nlink)

        restarted = publisher.Publisher()
        self.addCleanup(restarted.shutdown)
        with mock.patch.object(torrent, 'build', autospec=True,
                               side_effect=torrent.build) as build:
            again = restarted.publish(NODE_A, self.image)
        build.assert_not_called()
        self.assertEqual(pub.meta, again.meta)
        # The link of the image nobody published again is gone.
        self.assertEqual([pub.info_hash + '.img'], self.links())
        self.assertEqual(1, os.stat(stray).st_nlink)
        self.assertEqual(2, os.stat(self.image).st_nlink)
        self.assertNotIn(b'failure reason',
                         announce(again.trackers[0], again.meta,
                                  auth=again.announce_key))

    def test_changed_image_is_hashed_again(self):
        pub = self.publisher.publish(NODE_A, self.image)
        self.publisher.release(NODE_A)
        with open(self.image, 'r+b') as f:
            f.write(b'changed')
        with mock.patch.object(torrent, 'build', autospec=True,
                               side_effect=torrent.build) as build:
            again = self.publisher.publish(NODE_A, self.image)
        build.assert_called_once_with(self.image)
        self.assertNotEqual(pub.info_hash, again.info_hash)

    def test_corrupt_cached_torrent_is_rebuilt(self):
        self.publisher.publish(NODE_A, self.image)
        self.publisher.release(NODE_A)
        cache_dir = os.path.join(self.data_dir, 'torrents')
        cached, = os.listdir(cache_dir)
        with open(os.path.join(cache_dir, cached), 'wb') as f:
            f.write(b'garbage')
        with mock.patch.object(torrent, 'build', autospec=True,
                               side_effect=torrent.build) as build:
            pub = self.publisher.publish(NODE_A, self.image)
        build.assert_called_once_with(self.image)
        with open(os.path.join(cache_dir, cached), 'rb') as f:
            self.assertEqual(pub.meta.data, f.read())

    def test_stale_cached_torrents_are_removed_on_start(self):
        cache_dir = os.path.join(self.data_dir, 'torrents')
        os.makedirs(cache_dir)
        old = os.path.join(cache_dir, '1-2-3-4.torrent')
        recent = os.path.join(cache_dir, '1-2-3-5.torrent')
        for path in (old, recent):
            with open(path, 'wb') as f:
                f.write(b'd4:infode')
        week_ago = time.time() - torrent_cache.TTL - 60
        os.utime(old, (week_ago, week_ago))
        self.publisher.publish(NODE_A, self.image)
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(recent))

    @mock.patch.object(publisher.os, 'link', autospec=True)
    def test_cross_device_data_dir(self, link_mock):
        link_mock.side_effect = OSError(errno.EXDEV,
                                        'Invalid cross-device link')
        exc = self.assertRaises(exception.DataDirCrossDevice,
                                self.publisher.publish, NODE_A, self.image)
        self.assertEqual(
            'Cannot publish image %(image)s of node %(node)s over '
            'BitTorrent: the seeder keeps a hard link to the image in '
            '[bittorrent]data_dir (%(data)s), so that the image cache does '
            'not evict it while it is seeded, but that directory is on a '
            'different file system. Set [bittorrent]data_dir to a directory '
            'on the same file system as the image cache '
            '([pxe]instance_master_path and [pxe]images_path).'
            % {'image': self.image, 'node': NODE_A, 'data': self.data_dir},
            str(exc))
        self.assertEqual([], self.publisher.nodes())
        self.assertEqual([], self.seeding())
        self.assertEqual([], self.links())

    @mock.patch.object(publisher.os, 'link', autospec=True)
    def test_link_failure(self, link_mock):
        link_mock.side_effect = PermissionError(errno.EACCES,
                                                'Permission denied')
        exc = self.assertRaises(exception.ImagePublishFailed,
                                self.publisher.publish, NODE_A, self.image)
        self.assertIn('of node %s' % NODE_A, str(exc))
        self.assertIn('Permission denied', str(exc))
        self.assertIn('[bittorrent]data_dir is writable', str(exc))
        self.assertEqual([], self.publisher.nodes())

    def test_missing_image(self):
        missing = os.path.join(self.tmp, 'missing.raw')
        exc = self.assertRaises(exception.ImagePublishFailed,
                                self.publisher.publish, NODE_A, missing)
        self.assertIn('Cannot publish image %s of node %s' % (missing, NODE_A),
                      str(exc))
        self.assertIn('No such file', str(exc))

    def test_external_tracker(self):
        url = 'udp://tracker.example.com:6969/announce'
        self.config(group='bittorrent', tracker_url=url)
        pub = self.publisher.publish(NODE_A, self.image)
        # The node's label, for a shared built-in tracker's key check.
        self.assertEqual([url + '?node=' + NODE_A], pub.trackers)
        status = self.publisher.status()
        self.assertEqual([url], status['trackers'])
        self.assertNotIn('swarms', status)
        self.assertEqual(['127.0.0.1:%d' % status['seeder_port']], pub.peers)

    def _other_conductors_tracker(self, secret):
        """Start another conductor's built-in tracker; point us at it."""
        table = swarm_table.SwarmTable(interval=1, publish_secret=secret)
        tracker = server.TrackerServer(table, '127.0.0.1', 0)
        tracker.start()
        self.addCleanup(tracker.stop)
        url = tracker.announce_url('127.0.0.1')
        self.config(group='bittorrent', tracker_url=url,
                    tracker_secret='s3cret')
        return table, url

    def test_publishes_on_another_conductors_tracker(self):
        # Another conductor's built-in tracker, sharing the secret.
        table, url = self._other_conductors_tracker('s3cret')
        pub = self.publisher.publish(NODE_A, self.image)
        # The agents get the URL with their node label; the seeder's
        # announces carry the publication key, and publish the image there.
        self.assertEqual([url + '?node=' + NODE_A], pub.trackers)
        self.assertEqual([url], self.publisher.status()['trackers'])
        seeder_port = self.publisher.status()['seeder_port']

        def listed():
            try:
                reply = announce(url, pub.meta)
            except Exception:
                return None
            return reply.get(b'peers')
        peers = procs.wait_for(listed, 20, 0.2, 'the seeder in the swarm')
        self.assertEqual(socket.inet_aton('127.0.0.1')
                         + seeder_port.to_bytes(2, 'big'), peers)
        swarm, = table.status()['swarms']
        self.assertEqual(3 * base.MiB, swarm['size'])
        # Released: the seeder stops announcing, the publication ends.
        self.publisher.release(NODE_A)
        procs.wait_for(lambda: not table.status()['swarms'], 20, 0.2,
                       'the publication to end')

    def test_shared_tracker_serves_before_any_deploy(self):
        self.assertFalse(self.publisher.serve_shared_tracker())
        self.config(group='bittorrent', tracker_secret='s3cret')
        self.assertTrue(self.publisher.serve_shared_tracker())
        self.assertTrue(self.publisher.serve_shared_tracker())
        # Only the tracker: the seeder starts with the first deploy.
        self.assertFalse(self.publisher.started)
        meta = torrent.build(self.image)
        url = 'http://127.0.0.1:%d/announce' % (
            self.publisher._tracker.port)
        # Another conductor's seeder publishes its image with a key.
        key = publication.make_key('s3cret', meta.tracker_keys, meta.size)
        reply = announce(url + '?publish=' + key, meta, left=0)
        self.assertEqual(1, reply[b'complete'])
        # This conductor deploys the same image: one tracker, one swarm.
        pub = self.publisher.publish(NODE_A, self.image)
        self.assertEqual(url, self.publisher.status()['trackers'][0])
        reply = announce(pub.trackers[-1], meta, port=51414,
                         auth=pub.announce_key)
        peers = reply[b'peers']
        ports = {int.from_bytes(peers[i + 4:i + 6], 'big')
                 for i in range(0, len(peers), 6)}
        self.assertIn(51413, ports)

    def test_no_shared_tracker_with_an_external_one(self):
        self.config(group='bittorrent', tracker_secret='s3cret',
                    tracker_url='http://tracker.example:6969/announce')
        self.assertFalse(self.publisher.serve_shared_tracker())
        self.assertIsNone(self.publisher._tracker)

    def test_refused_publication_is_logged_without_the_key(self):
        # A tracker that does not share the secret refuses the key.
        _table, url = self._other_conductors_tracker(None)
        with mock.patch.object(seeder.LOG, 'warning',
                               autospec=True) as warning:
            pub = self.publisher.publish(NODE_A, self.image)
            # stats() pumps the alerts.
            procs.wait_for(lambda: (self.publisher.stats(pub.info_hash),
                                    warning.called)[1], 20, 0.2,
                           'the warning')
        logged = str(warning.call_args_list)
        self.assertIn('no publications from other conductors', logged)
        self.assertIn(url, logged)
        self.assertNotIn('publish=', logged)

    def test_tracker_port_in_use(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        self.config(group='bittorrent', tracker_port=port)
        exc = self.assertRaises(exception.PublisherStartFailed,
                                self.publisher.publish, NODE_A, self.image)
        self.assertIn('of node %s' % NODE_A, str(exc))
        self.assertIn('built-in tracker of this conductor cannot start',
                      str(exc))
        self.assertIn('[bittorrent]tracker_port', str(exc))
        self.assertFalse(self.publisher.started)
        # Once the port is free, the next deploy starts the publisher.
        busy.close()
        pub = self.publisher.publish(NODE_A, self.image)
        self.assertTrue(self.publisher.started)
        self.assertEqual([pub.info_hash], self.seeding())

    def test_status_before_start(self):
        self.assertEqual({'started': False, 'images': []},
                         self.publisher.status())
        self.assertFalse(self.publisher.release(NODE_A))
        self.assertFalse(self.publisher.started)

    def test_get_publisher_is_a_singleton(self):
        self.assertIs(self.publisher, publisher.get_publisher())
        with mock.patch.object(publisher, '_publisher', None):
            first = publisher.get_publisher()
            self.assertIsInstance(first, publisher.Publisher)
            self.assertIs(first, publisher.get_publisher())
            self.assertFalse(first.started)


class CheckConfigTestCase(base.TestCase):

    def assertInvalid(self, option, value, reason):
        exc = self.assertRaises(exception.InvalidBitTorrentConfig,
                                publisher.check_config, NODE_A)
        self.assertIn('Node %s cannot be deployed with the bittorrent deploy '
                      'interface: option [bittorrent]%s is "%s": '
                      % (NODE_A, option, value), str(exc))
        self.assertIn(reason, str(exc))

    def test_valid(self):
        publisher.check_config(NODE_A)
        self.config(group='bittorrent', advertise_host='conductor.example')
        publisher.check_config(NODE_A)

    def test_unspecified_advertise_host(self):
        for host in ('0.0.0.0', '::'):
            self.config(group='bittorrent', advertise_host=host)
            self.assertInvalid('advertise_host', host,
                               'agents cannot connect to the unspecified '
                               'address')

    def assertNotValid(self, option, value, reason):
        # As a value from ironic.conf: oslo.config checks its type when
        # the option is read.
        self.cfg_fixture.conf.clear_override(option, group='bittorrent')
        self.cfg_fixture.load_raw_values(group='bittorrent',
                                         **{option: value})
        exc = self.assertRaises(exception.InvalidBitTorrentOption,
                                publisher.check_config, NODE_A)
        self.assertIn('Node %s cannot be deployed with the bittorrent deploy '
                      'interface: option [bittorrent]%s is not valid: '
                      % (NODE_A, option), str(exc))
        self.assertIn(reason, str(exc))
        self.assertIn('Fix it in the configuration of this conductor',
                      str(exc))

    def test_bad_my_ip(self):
        # The default advertise_host is $my_ip, ironic's plain string.
        self.config(my_ip='host_1')
        self.cfg_fixture.conf.clear_override('advertise_host',
                                             group='bittorrent')
        exc = self.assertRaises(exception.InvalidBitTorrentOption,
                                publisher.check_config, NODE_A)
        self.assertIn('[bittorrent]advertise_host is not valid: host_1',
                      str(exc))

    def test_my_ip_unspecified(self):
        # The default advertise_host is $my_ip.
        self.config(my_ip='0.0.0.0')
        self.cfg_fixture.conf.clear_override('advertise_host',
                                             group='bittorrent')
        self.assertInvalid('advertise_host', '0.0.0.0', '[DEFAULT]my_ip')

    def test_bad_advertise_host(self):
        for host in ('', '[::]', 'conductor example'):
            # Refused when set...
            self.assertRaises(ValueError, self.config, group='bittorrent',
                              advertise_host=host)
        for host in ('[::]', 'conductor example'):
            # ...and, from the configuration file, when a deploy reads it.
            self.assertNotValid('advertise_host', host, 'must be the address')
        self.assertNotValid('advertise_host', '[::]',
                            '[::] is not a valid host address')
        self.assertNotValid('advertise_host', '',
                            'is not a valid host address')
        # A host name is fine.
        self.cfg_fixture.load_raw_values(group='bittorrent',
                                         advertise_host='conductor.example')
        publisher.check_config(NODE_A)

    def test_bad_tracker_url(self):
        for url in ('ftp://tracker/announce', 'tracker:6969', 'http://'):
            self.assertRaises(ValueError, self.config, group='bittorrent',
                              tracker_url=url)
            self.assertNotValid('tracker_url', url,
                                'http://, https:// or udp://')
        self.assertNotValid('tracker_url', 'ftp://tracker/announce',
                            "scheme was required to be one of")

    def test_listen_hosts_are_addresses(self):
        # The seeder and the tracker bind numeric addresses: oslo.config
        # refuses anything else when the option is set.
        for option in ('seeder_listen_host', 'tracker_listen_host'):
            for value in ('conductor.example', '[::]', ''):
                self.assertRaises(ValueError, self.config,
                                  group='bittorrent', **{option: value})
            self.config(group='bittorrent', **{option: '::'})
        self.assertRaises(ValueError, self.config, group='bittorrent',
                          agent_listen_port=0)

    def test_seeder_and_tracker_on_one_port(self):
        self.config(group='bittorrent', seeder_port=7000, tracker_port=7000,
                    seeder_listen_host='0.0.0.0')
        self.assertInvalid('tracker_port', 7000, 'their ports must differ')
        # With an external tracker, there is no built-in tracker port.
        self.config(group='bittorrent',
                    tracker_url='http://tracker.example:6969/announce')
        publisher.check_config(NODE_A)

    def test_same_port_on_distinct_addresses(self):
        self.config(group='bittorrent', seeder_port=7000, tracker_port=7000,
                    seeder_listen_host='198.18.0.1',
                    tracker_listen_host='198.18.0.2')
        publisher.check_config(NODE_A)

    def test_publish_checks_config(self):
        self.config(group='bittorrent', advertise_host='0.0.0.0')
        image = base.make_image(self.tmp)
        self.assertRaises(exception.InvalidBitTorrentConfig,
                          self.publisher.publish, NODE_A, image)
        self.assertFalse(self.publisher.started)


class SeederQueueTestCase(base.TestCase):
    """The seeder's request queue follows the nodes downloading at once."""

    def setUp(self):
        super().setUp()
        self.image = base.make_image(self.tmp)

    def queue(self):
        session = self.publisher._seeder._session
        return session.get_settings()['max_allowed_in_request_queue']

    def test_queue_follows_the_nodes_published_for(self):
        self.publisher.publish(NODE_A, self.image)
        # A lone node gets a deep queue: nobody can get duplicates, and a
        # fast link is not starved.
        self.assertEqual(256, self.queue())
        others = ['1be26c0b-03f2-4d2e-ae3f-a7f3d0ac%04d' % i
                  for i in range(15)]
        for node in others:
            self.publisher.publish(node, self.image)
        # Sixteen nodes share 32 requests in flight: 2 each, so that few
        # are still queued when the last pieces leave the seeder.
        self.assertEqual(2, self.queue())
        for node in others[4:]:
            self.publisher.release(node)
        self.assertEqual(7, self.queue())
        self.publisher.release(NODE_A)
        for node in others[:4]:
            self.publisher.release(node)
        # Nobody downloading: back to the default for whoever comes next.
        self.assertEqual([], self.publisher.nodes())
        self.assertEqual(8, self.queue())

    def test_shared_tracker_keeps_the_queue_short(self):
        # Other conductors announce to our built-in tracker: their seeders
        # may serve this swarm too, so its nodes get the shortest queue
        # (not 256 for one, 16 for two).
        self.config(tracker_secret='shared-by-the-conductors',
                    group='bittorrent')
        self.publisher.publish(NODE_A, self.image)
        self.assertEqual(2, self.queue())
        self.publisher.publish('1be26c0b-03f2-4d2e-ae3f-a7f3d0ac0001',
                               self.image)
        self.assertEqual(2, self.queue())


class RequestQueueTestCase(testtools.TestCase):

    def test_sizes(self):
        self.assertEqual(
            [8, 8, 256, 16, 11, 8, 4, 2, 2, 2],
            [seeder.request_queue(n)
             for n in (None, 0, 1, 2, 3, 4, 8, 16, 17, 500)])

    def test_sizes_where_conductors_share_the_tracker(self):
        self.assertEqual(
            [2, 2, 2, 2, 2],
            [seeder.request_queue(n, shared=True)
             for n in (None, 1, 2, 3, 16)])
