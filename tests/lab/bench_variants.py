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

"""Variants of the product's settings that the benchmark compares."""

import dataclasses


from tests.lab import bench_metrics


@dataclasses.dataclass
class Variant:
    """How the bittorrent method runs: the product, or an experiment."""

    name: str = 'default'
    #: libtorrent overrides for both sides, the writers, the seeder.
    settings: dict = dataclasses.field(default_factory=dict)
    writer_settings: dict = dataclasses.field(default_factory=dict)
    seeder_settings: dict = dataclasses.field(default_factory=dict)
    #: bytes; None for the product's policy, 'old' for the one before.
    piece_size: object = None
    #: announce interval the tracker asks for.
    interval: int = 5
    #: give every writer every other writer as --peer (full mesh at once).
    mesh: bool = False
    #: the seeder connects out to every writer at the start.
    connect_out: bool = False
    super_seed: bool = False
    #: the seeder hashes each piece the first time it sends it (libtorrent's
    #: seed mode, as ``ironic-bt seed`` does) instead of trusting the image
    #: it hashed into the torrent, as the conductor's publisher does.
    seed_mode: bool = False
    #: force the library path even without overrides.
    library: bool = False
    #: writers log their peers this often (seconds; experiments).
    diag: float = None
    #: the writer polls libtorrent this often (Tuning.poll_interval).
    poll: float = None
    #: read back only after the download (Tuning.overlap_read_back off).
    no_overlap: bool = False
    #: Tuning.flush_interval (None: the product's).
    flush_interval: float = None
    #: Tuning.sequential_alone off.
    no_sequential: bool = False
    #: sysctls set in every lab host for this variant (e.g. TCP knobs).
    sysctls: dict = dataclasses.field(default_factory=dict)
    #: the writers' piece plan (ipa_extension.pieces); False: rarest-first.
    share: bool = True
    #: the piece plan's backup threshold (None: the product's).
    plan_backup: int = None
    #: a plain torrent instead of the product's SSL swarm
    #: ([bittorrent]ssl = false): anyone may join.
    plain: bool = False
    #: study (tests.lab.stripes): this many writer sessions, each on a
    #: stripe of the pieces, from the seeder only; 0: the product's writer.
    stripes: int = 0

    @property
    def cli(self):
        """Whether the real ``ironic-bt seed``/``write`` commands run."""
        return not (self.settings or self.writer_settings
                    or self.seeder_settings or self.connect_out
                    or self.super_seed or self.library
                    or self.sysctls or self.poll or not self.share
                    or self.plan_backup is not None or self.no_overlap
                    or self.no_sequential or self.stripes
                    or self.flush_interval is not None)

    def writer(self):
        return dict(self.settings, **self.writer_settings)

    def seeder(self):
        return dict(self.settings, **self.seeder_settings)

    def describe(self):
        parts = ['%s=%s' % kv for kv in sorted(self.writer().items())]
        parts += ['seeder:%s=%s' % kv
                  for kv in sorted(self.seeder_settings.items())]
        if self.piece_size == 'old':
            parts.append('piece=old policy')
        elif self.piece_size:
            parts.append('piece=%dK' % (self.piece_size // 1024))
        if self.interval != 5:
            parts.append('interval=%d' % self.interval)
        parts += ['sysctl %s=%s' % kv for kv in sorted(self.sysctls.items())]
        if self.poll:
            parts.append('poll %gs' % self.poll)
        if self.flush_interval is not None:
            parts.append('flush every %gs' % self.flush_interval)
        for flag in ('mesh', 'connect_out', 'super_seed', 'seed_mode',
                     'no_overlap', 'no_sequential', 'plain'):
            if getattr(self, flag):
                parts.append(flag)
        if not self.share:
            parts.append('no piece plan')
        if self.plan_backup is not None:
            parts.append('plan backup %d' % self.plan_backup)
        if self.stripes:
            parts.append('study: %d sessions on stripes' % self.stripes)
        return ' '.join(parts) or ('ironic-bt CLI' if self.cli
                                   else 'library, no overrides')


def old_piece_size(size):
    """The piece size policy before the benchmark: 2048 pieces, >= 256 K."""
    piece = 256 * 1024
    while piece < 4 * bench_metrics.MiB and piece * 2048 < size:
        piece *= 2
    return piece


def lever_variants():
    """The levers of issue 4, each moved away from the product's defaults.

    The first variant is the product as it is, the second the defaults it
    had before these measurements; every other one is the product with one
    lever moved, so its effect is measured against it in the same run.
    """
    k = 1024
    product = Variant
    return [
        product('product', library=True),
        product('before: 2048 pieces >= 256K, seeder queue 2000',
                piece_size='old', seeder_settings={
                    'max_allowed_in_request_queue': 2000}),
        # Piece size policy.
        product('piece 64K', piece_size=64 * k, library=True),
        product('piece 256K', piece_size=256 * k, library=True),
        # The agents' piece plan (ipa_extension.pieces) against plain
        # rarest-first.
        product('no piece plan', share=False),
        # The seeder's queue of requests per peer (sized to the swarm now:
        # ironic_bt.seeder.request_queue).
        product('seeder queue 4', seeder_settings={
            'max_allowed_in_request_queue': 4}),
        product('seeder queue 16', seeder_settings={
            'max_allowed_in_request_queue': 16}),
        product('seeder queue 2000', seeder_settings={
            'max_allowed_in_request_queue': 2000}),
        # Connection and unchoke limits.
        product('connections 8', settings={'connections_limit': 8}),
        product('unchoke 4', settings={'unchoke_slots_limit': 4}),
        # Request queue depth, send buffer watermarks.
        product('reqq deep', settings={'max_out_request_queue': 2000,
                                       'request_queue_time': 10}),
        product('reqq shallow', settings={'max_out_request_queue': 50,
                                          'request_queue_time': 1}),
        product('sndbuf 4M', settings={
            'send_buffer_watermark': 4 * bench_metrics.MiB,
            'send_buffer_low_watermark': 512 * k,
            'send_buffer_watermark_factor': 150}),
        product('sndbuf 64K', settings={'send_buffer_watermark': 64 * k,
                                        'send_buffer_low_watermark': 16 * k}),
        product('suggest', settings={'suggest_mode': 1}),
        product('no encryption', settings={'out_enc_policy': 2,
                                           'in_enc_policy': 2}),
        product('predictive announce', settings={
            'predictive_piece_announce': 20}),
        product('no strict end game', settings={
            'strict_end_game_mode': False}),
        # The disk backend (POSIX is the only one that writes to a block
        # device; these are its knobs).
        product('hashing threads 2', settings={'hashing_threads': 2}),
        product('aio threads 2', settings={'aio_threads': 2}),
        product('disk queue 8M', settings={
            'max_queued_disk_bytes': 8 * bench_metrics.MiB}),
        product('extent affinity', settings={'piece_extent_affinity': True}),
        # Seeder behaviour.
        product('super seed', super_seed=True),
        product('seeder in seed mode', seed_mode=True),
        product('plain torrent (no SSL)', plain=True),
        product('no TCP slow start after idle', sysctls={
            'net.ipv4.tcp_slow_start_after_idle': 0}),
        # How fast peers find each other.
        product('seeder connects out', connect_out=True),
        product('mesh peers', mesh=True, library=True),
        product('tracker interval 1', interval=1, library=True),
        # The writer's own knobs (writer.Tuning).
        product('poll 50 ms', poll=0.05),
        product('read back after the download', no_overlap=True),
        product('never in order', no_sequential=True),
        product('listen queue 128', settings={'listen_queue_size': 128}),
    ]
