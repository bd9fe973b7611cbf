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

"""What the functional tests of the writer share: a seeder, a write."""

import contextlib
import hashlib

from ipa_extension import writer
from ironic_bt import seeder


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read(path, length, offset=0):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(length)


@contextlib.contextmanager
def seeding(meta, image_path, verified=True, credentials=None):
    """Seed ``image_path`` on 127.0.0.1 with the conductor's seeder.

    :param verified: as the conductor's publisher, trust that the torrent
        was hashed from this file; if not, the seeder hashes each piece on
        its first send (``ironic-bt seed`` without ``--trust-image``).
    :param credentials: the seeder's, for an SSL swarm.
    :yields: the :class:`ironic_bt.seeder.Seeder`.
    """
    seed = seeder.Seeder('127.0.0.1', 0, ssl=credentials is not None)
    try:
        seed.add(meta, image_path, verified=verified, credentials=credentials)
        yield seed
    finally:
        seed.close()


def address(seed):
    """The ``HOST:PORT`` a writer is given for ``seed``."""
    return '127.0.0.1:%d' % seed.port


def write_from(seed, meta, target, **kwargs):
    """:func:`write` with ``seed`` (a :func:`seeding`) as the one peer."""
    return write(meta, target, [address(seed)], **kwargs)


def write(meta, target, peers, **kwargs):
    kwargs.setdefault('linger_timeout', 0)
    kwargs.setdefault('stall_timeout', 30)
    kwargs.setdefault('create', not target.startswith('/dev/'))
    return writer.write(meta, target, peers=peers, listen_host='127.0.0.1',
                        listen_port=0, progress_interval=1, **kwargs)
