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

"""The conductor's torrent cache: one hashing pass per image file."""

import os
import threading
import time
from unittest import mock

import pytest

from ironic_bt.common import torrent
from ironic_bt import exception
from ironic_bt import torrent_cache


@pytest.fixture
def cache(tmp_path):
    os.makedirs(tmp_path / 'data' / torrent_cache.DIRECTORY)
    return torrent_cache.TorrentCache(lambda: str(tmp_path / 'data'))


def _image(tmp_path, name='image.raw', data=b'ironic-bt' * 5000):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_built_once_then_read_from_disk(tmp_path, cache):
    image = _image(tmp_path)
    key = cache.key(image)
    with mock.patch.object(torrent, 'build', autospec=True,
                           side_effect=torrent.build) as build:
        first = cache.get('node-a', image, key)
        # Another conductor process, same data_dir.
        again = torrent_cache.TorrentCache(
            lambda: str(tmp_path / 'data')).get('node-b', image, key)
    assert build.call_count == 1
    assert again.info_hash == first.info_hash
    assert os.path.exists(cache.path(key))


def test_nodes_publishing_at_once_share_one_build(tmp_path, cache):
    image = _image(tmp_path)
    key = cache.key(image)
    real_build = torrent.build

    def slow_build(path):
        time.sleep(0.3)
        return real_build(path)

    results = []
    with mock.patch.object(torrent, 'build', autospec=True,
                           side_effect=slow_build) as build:
        threads = [threading.Thread(
            target=lambda n=n: results.append(cache.get(n, image, key)))
            for n in ('node-a', 'node-b', 'node-c')]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert build.call_count == 1
    assert len({m.info_hash for m in results}) == 1


def test_a_rewritten_image_gets_another_key(tmp_path, cache):
    image = _image(tmp_path)
    key = cache.key(image)
    time.sleep(0.01)
    _image(tmp_path, data=b'other bytes' * 5000)
    assert cache.key(image) != key


def test_unreadable_image_names_node_and_image(tmp_path, cache):
    empty = _image(tmp_path, 'empty.raw', b'')
    with pytest.raises(exception.ImagePublishFailed) as e:
        cache.get('node-a', empty, cache.key(empty))
    assert 'node-a' in str(e.value) and empty in str(e.value)


def test_sweep_removes_stale_torrents_and_temporaries(tmp_path, cache):
    old, recent, tmp = (cache.path(k) for k in ('1-2-3-4', '1-2-3-5', 'x'))
    tmp += '.tmp'
    for path in (old, recent, tmp):
        with open(path, 'wb') as f:
            f.write(b'd4:infode')
    stale = time.time() - torrent_cache.TTL - 60
    os.utime(old, (stale, stale))
    cache.sweep()
    assert sorted(os.listdir(cache.directory)) == ['1-2-3-5.torrent']
