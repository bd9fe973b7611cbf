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

"""Values that every version of ironic-bt must agree on.

Conductors and agents of different releases meet in one swarm: during an
upgrade, or when several conductors share a tracker. If the info-hash of an
image, the piece size chosen for it, or the piece plan's ranks changed
between releases, the same image would make two swarms, or two agents
would each take the other for the owner of a piece. A change here is a
protocol change: it needs a release note and an upgrade plan, not a new
golden value.
"""

import os

import libtorrent as lt
import pytest

from ipa_extension import pieces
from ironic_bt.common import ring
from ironic_bt.common import torrent

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _image(tmp_path):
    """1,319,720 bytes: one zero piece's worth, a pattern, then text."""
    path = tmp_path / 'golden.img'
    path.write_bytes(bytes(256 * KiB) + bytes(range(256)) * 4096
                     + b'ironic-bt' * 1000)
    return str(path)


def test_info_hash_of_a_fixed_image(tmp_path):
    meta = torrent.build(_image(tmp_path))
    assert meta.info_hash == '5c7490fad805f52926b0c5f1a0c3df4d8b33292c'
    assert meta.info_hash_v2.hex() == (
        'b878ef776a7808e102cf9da9e44789ef10d79eafeae330d1781a5484c443a815')
    assert (meta.piece_length, meta.num_pieces) == (16 * KiB, 81)
    assert meta.zero_pieces == frozenset(range(16))


@pytest.mark.parametrize('size,piece', [
    (1, 16 * KiB),
    (64 * MiB, 16 * KiB),
    (64 * MiB + 1, 32 * KiB),
    (1 * GiB, 256 * KiB),
    (4 * GiB, 1 * MiB),
    (16 * GiB, 4 * MiB),
    (100 * GiB, 4 * MiB),
])
def test_piece_size_table(size, piece):
    assert torrent.piece_size_for(size) == piece


def test_member_keys_and_weights():
    # The rendezvous hash every agent computes alone and must agree on.
    key = pieces.member_key('198.18.0.2')
    assert key == 4495080307429375654
    assert [pieces.weight(i, key) for i in range(3)] == [
        15085117448697344775, 17689930366559531298, 8513810318219020154]


def test_owners_of_the_first_pieces():
    members = ['198.18.0.2', '198.18.0.3', '198.18.0.4']
    owners = {}
    for me in members:
        plan = pieces.PiecePlan(12)
        change = plan.update(0.0, me, [m for m in members if m != me],
                             [False] * 12, [0] * 12)
        owners.update((piece, me) for piece, prio in dict(change).items()
                      if prio == pieces.OWN)
    assert [owners[i][-1] for i in range(12)] == list('223333423343')


def _made(tmp_path, files, v1_only=False, private=True):
    """A torrent of ``files`` ({name: bytes}) made by libtorrent itself."""
    root = tmp_path / 'content'
    root.mkdir()
    storage = lt.file_storage()
    for name, data in files.items():
        (root / name).write_bytes(data)
        storage.add_file(os.path.join('content', name), len(data))
    flags = lt.create_torrent.v1_only if v1_only else 0
    creator = lt.create_torrent(storage, 16 * KiB, flags)
    creator.set_priv(private)
    lt.set_piece_hashes(creator, str(tmp_path))
    return lt.bencode(creator.generate())


def test_load_refuses_a_public_torrent(tmp_path):
    data = _made(tmp_path, {'disk.img': b'x' * 40000}, private=False)
    with pytest.raises(torrent.InvalidTorrent) as e:
        torrent.load(data, source='public.torrent')
    assert 'public.torrent is not a private torrent' in str(e.value)


def test_load_refuses_a_v1_only_torrent(tmp_path):
    data = _made(tmp_path, {'disk.img': b'x' * 40000}, v1_only=True)
    with pytest.raises(torrent.InvalidTorrent) as e:
        torrent.load(data, source='v1.torrent')
    assert 'v1.torrent is not a hybrid (v1+v2) torrent' in str(e.value)


def test_load_refuses_several_files(tmp_path):
    data = _made(tmp_path, {'a.img': b'a' * 40000, 'b.img': b'b' * 40000})
    with pytest.raises(torrent.InvalidTorrent) as e:
        torrent.load(data, source='two.torrent')
    assert 'two.torrent holds 2 files' in str(e.value)


def test_load_accepts_what_build_makes(tmp_path):
    meta = torrent.build(_image(tmp_path))
    assert torrent.load(meta.data).info_hash == meta.info_hash


def test_ring_points():
    # Where members and pieces sit on the ring of swarms too large to see
    # whole (ironic_bt.common.ring).
    assert ring.VNODES == 16
    assert ring.points('198.18.0.2')[:2] == [
        15085117448697344775, 17689930366559531298]
    assert [ring.piece_point(i) for i in range(3)] == [
        6186224882254365519, 7210056345939467046, 7858493669946493337]
