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

"""Finding the pieces of an image already on the target."""

import os
from unittest import mock

from ipa_extension import resume
from ironic_bt.common import torrent

PIECE = torrent.MIN_PIECE_SIZE


def _image(tmp_path, pieces=200):
    data = bytearray(os.urandom(pieces * PIECE - 100))
    # Two zero pieces: never counted as found (they are zeroed anyway).
    data[3 * PIECE:5 * PIECE] = bytes(2 * PIECE)
    path = tmp_path / 'image.raw'
    path.write_bytes(bytes(data))
    return bytes(data), torrent.build(str(path))


def _target(tmp_path, data, keep):
    """A target holding the pieces in ``keep``, garbage elsewhere."""
    out = bytearray(os.urandom(len(data) + PIECE))
    for i in keep:
        out[i * PIECE:(i + 1) * PIECE] = data[i * PIECE:(i + 1) * PIECE]
    path = tmp_path / 'target'
    path.write_bytes(bytes(out))
    return str(path)


def test_half_written_target(tmp_path):
    data, meta = _image(tmp_path)
    keep = set(range(0, meta.num_pieces, 2)) | {meta.num_pieces - 1}
    found, _seconds = resume.present_pieces(_target(tmp_path, data, keep),
                                            meta)
    assert found == keep - meta.zero_pieces


def test_fresh_target_reads_only_the_samples(tmp_path):
    data, meta = _image(tmp_path)
    target = _target(tmp_path, data, set())
    with mock.patch.object(resume._Reader, 'matching', autospec=True,
                           side_effect=resume._Reader.matching) as reads:
        found, _seconds = resume.present_pieces(target, meta, samples=8)
    assert found == set()
    assert sum(end - first for _self, first, end in
               (c.args for c in reads.call_args_list)) == 8


def test_short_file_and_no_check(tmp_path):
    data, meta = _image(tmp_path)
    path = tmp_path / 'short'
    path.write_bytes(data[:10 * PIECE + 5])
    found, _seconds = resume.present_pieces(str(path), meta)
    assert found == set(range(10)) - meta.zero_pieces
    assert resume.present_pieces(str(path), meta, samples=0)[0] == set()
    assert resume.present_pieces(str(tmp_path / 'missing'),
                                 meta)[0] == set()
