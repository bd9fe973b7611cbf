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

"""The command line: addresses, and a disk in use (and only one) refused."""

import argparse

import pytest

from ironic_bt.cmd import cli


def _sys_block(tmp_path, disks):
    """A /sys/class/block with these disks and their partitions."""
    root = tmp_path / 'block'
    for disk, partitions in disks.items():
        (root / disk).mkdir(parents=True)
        for part in partitions:
            (root / disk / part).mkdir()
            (root / disk / part / 'partition').write_text('1\n')
    return str(root)


def _mounts(tmp_path, lines):
    path = tmp_path / 'mounts'
    path.write_text(''.join('%s %s ext4 rw 0 0\n' % pair for pair in lines))
    return str(path)


def test_disk_is_in_use_when_one_of_its_partitions_is_mounted(tmp_path):
    sys_block = _sys_block(tmp_path, {'loop1': ['loop1p1', 'loop1p2']})
    mounts = _mounts(tmp_path, [('proc', '/proc'),
                                ('/dev/loop1p2', '/mnt/root')])
    assert cli._mounted('/dev/loop1', mounts, sys_block) == ['/mnt/root']


def test_disk_itself_mounted(tmp_path):
    sys_block = _sys_block(tmp_path, {'loop1': []})
    mounts = _mounts(tmp_path, [('/dev/loop1', '/mnt/whole')])
    assert cli._mounted('/dev/loop1', mounts, sys_block) == ['/mnt/whole']


def test_other_disk_with_a_longer_name_is_not_this_one(tmp_path):
    # /dev/loop10 and its partition start with "/dev/loop1", and are other
    # disks: writing to /dev/loop1 must not be refused for them.
    sys_block = _sys_block(tmp_path, {'loop1': [],
                                      'loop10': ['loop10p1']})
    mounts = _mounts(tmp_path, [('/dev/loop10', '/mnt/a'),
                                ('/dev/loop10p1', '/mnt/b')])
    assert cli._mounted('/dev/loop1', mounts, sys_block) == []


def test_host_port_forms():
    assert cli._host_port('198.18.0.1:6881') == ('198.18.0.1', 6881)
    assert cli._host_port('[fd00::1]:6969') == ('fd00::1', 6969)
    assert cli._host_port(':6881') == ('0.0.0.0', 6881)
    assert cli._host_port('198.18.0.1', default_port=6969) == (
        '198.18.0.1', 6969)


def test_host_port_refusals_name_the_value():
    for value in ('198.18.0.1', '198.18.0.1:x', '198.18.0.1:70000'):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            cli._host_port(value)
        assert '"%s" is not HOST:PORT' % value in str(e.value)
