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

"""A small hybrid (v1+v2) torrent made by libtorrent, for tracker tests."""

import os

import libtorrent as lt


def torrent(directory):
    """Write a 64 KiB image into ``directory`` and make its torrent.

    :returns: (``lt.torrent_info``, [v1 key, v2 key truncated to 20 bytes]),
        the two keys libtorrent announces a hybrid torrent under.
    """
    image = os.path.join(str(directory), 'image.raw')
    with open(image, 'wb') as f:
        f.write(os.urandom(64 * 1024))
    creator = lt.create_torrent(lt.list_files(image), 16 * 1024)
    lt.set_piece_hashes(creator, str(directory))
    info = lt.torrent_info(lt.bencode(creator.generate()))
    return info, [bytes(info.info_hashes().v1.to_bytes()),
                  bytes(info.info_hashes().v2.to_bytes())[:20]]
