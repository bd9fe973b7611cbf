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

"""The VM lab's instance image: a bootable whole-disk Debian, cached.

diskimage-builder builds the root file system (``debian-minimal`` with the
lab's ``lab-instance`` element: cloud-init reading the config drive) as a
tarball. diskimage-builder's own disk images map partitions with
device-mapper (kpartx), which the lab's kernel may lack, so the disk is
put together here with a loop device over the partition instead:

* a GPT with one ext4 partition from 1 MiB, marked legacy-BIOS bootable
  (Ironic's agent adds the config drive as a partition after it);
* the root file system from the tarball;
* extlinux (syslinux) as the boot loader, behind syslinux's GPT boot
  code in the protective MBR; the kernel on the serial console.

The image is a raw file in ``$IRONIC_BT_CACHE/instance/<key>/``, where the
key covers the tools, the release, the element and the ISO week.
``python -m tests.lab.instance`` builds (or finds) it and prints where it
is, its size and how long the build took.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from tests.lab import ramdisk as lab_ramdisk

ELEMENTS = ('lab-instance',)
#: The raw image's size: the root file system (about 420 MB) and room.
SIZE_BYTES = 768 * 1024 ** 2
LABEL = 'instance-root'
MBR = '/usr/lib/syslinux/mbr/gptmbr.bin'
PACKAGES = ('extlinux', 'syslinux-common', 'e2fsprogs', 'fdisk')
BUILD_TIMEOUT = 3600


class InstanceError(RuntimeError):
    """The instance image cannot be built (the message says why)."""


def inputs():
    return {
        'tools': list(lab_ramdisk.TOOLS),
        'release': lab_ramdisk.RELEASE,
        'distro': lab_ramdisk.DISTRO,
        'elements': {e: lab_ramdisk.hash_files(lab_ramdisk.element_dir(e))
                     for e in ELEMENTS},
        'size': SIZE_BYTES,
        'assembly': hashlib.sha256(open(__file__, 'rb').read()).hexdigest(),
        'week': time.strftime('%G-W%V', time.gmtime()),
    }


def _run(cmd, log, **kwargs):
    try:
        lab_ramdisk.run(cmd, log, **kwargs)
    except lab_ramdisk.RamdiskError as e:
        raise InstanceError(str(e))


def _assemble(tarball, image, work, log):
    """The bootable disk from the root file system's tarball."""
    with open(image, 'wb') as f:
        f.truncate(SIZE_BYTES)
    _run(['sfdisk', '--quiet', image], log,
         input=b'label: gpt\nstart=2048, '
         b'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, '
         b'attrs="LegacyBIOSBootable"\n')
    table = json.loads(subprocess.run(
        ['sfdisk', '--json', image], check=True, capture_output=True,
        text=True).stdout)['partitiontable']
    (part,) = table['partitions']
    sector = table.get('sectorsize', 512)
    # A loop device over the partition's bytes: partition scanning of loop
    # devices gives no partition node on some kernels (this lab's).
    device = subprocess.run(
        ['losetup', '--find', '--show', '--offset',
         str(part['start'] * sector), '--sizelimit',
         str(part['size'] * sector), image],
        check=True, capture_output=True, text=True).stdout.strip()
    mnt = os.path.join(work, 'mnt')
    os.makedirs(mnt)
    try:
        # Write only to the loop device over the file made above.
        backing = subprocess.run(
            ['losetup', '--noheadings', '--output', 'BACK-FILE', device],
            check=True, capture_output=True, text=True).stdout.strip()
        if os.path.realpath(backing) != os.path.realpath(image):
            raise InstanceError('%s is backed by %s, not by %s'
                                % (device, backing, image))
        _run(['mkfs.ext4', '-q', '-L', LABEL, device], log)
        _run(['mount', device, mnt], log)
        try:
            _run(['tar', '-C', mnt, '--numeric-owner', '-xpf', tarball], log)
            kernels = sorted(n for n in os.listdir(os.path.join(mnt, 'boot'))
                             if n.startswith('vmlinuz-'))
            if not kernels:
                raise InstanceError('no kernel in /boot of %s' % tarball)
            version = kernels[-1][len('vmlinuz-'):]
            with open(os.path.join(mnt, 'etc', 'fstab'), 'w') as f:
                f.write('LABEL=%s / ext4 errors=remount-ro 0 1\n' % LABEL)
            boot = os.path.join(mnt, 'boot', 'extlinux')
            os.makedirs(boot, exist_ok=True)
            with open(os.path.join(boot, 'extlinux.conf'), 'w') as f:
                f.write('SERIAL 0 115200\nDEFAULT debian\nTIMEOUT 1\n'
                        'LABEL debian\n  LINUX /boot/vmlinuz-%(v)s\n'
                        '  INITRD /boot/initrd.img-%(v)s\n'
                        '  APPEND root=LABEL=%(label)s rw '
                        'console=ttyS0,115200\n'
                        % {'v': version, 'label': LABEL})
            _run(['extlinux', '--install', boot], log)
        finally:
            _run(['umount', mnt], log)
        with open(MBR, 'rb') as src, open(image, 'r+b') as dst:
            dst.write(src.read(440))
    finally:
        subprocess.run(['losetup', '--detach', device], check=False)


def build(given, key, log_path):
    missing = [p for p in ('extlinux', 'sfdisk', 'mkfs.ext4', 'debootstrap')
               if shutil.which(p) is None] + (
        [] if os.path.exists(MBR) else [MBR])
    if missing:
        raise InstanceError('%s not found: install the Debian packages %s '
                            '(tools/install-deps.sh --vms)'
                            % (', '.join(missing), ' '.join(
                                PACKAGES + lab_ramdisk.PACKAGES)))
    final, work = lab_ramdisk.build_dirs('instance', key)
    start = time.monotonic()
    try:
        with open(log_path, 'ab') as log:
            venv = lab_ramdisk.tools_venv(log)
            env = lab_ramdisk.dib_env(venv, work)
            env['ELEMENTS_PATH'] = ':'.join(lab_ramdisk.ELEMENT_DIRS)
            rootfs = os.path.join(work, 'rootfs')
            _run(['disk-image-create', '-a', 'amd64', '-t', 'tar', '-o',
                  rootfs, lab_ramdisk.DISTRO] + list(ELEMENTS), log, env=env,
                 timeout=BUILD_TIMEOUT)
            staged = os.path.join(work, 'result')
            os.makedirs(staged)
            _assemble(rootfs + '.tar', os.path.join(staged, 'instance.raw'),
                      work, log)
            lab_ramdisk.install(staged, final, given,
                                time.monotonic() - start)
    finally:
        lab_ramdisk.unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def get(log_path=None, force=False):
    """The instance image of the current inputs: (path, build seconds)."""
    given = inputs()
    key = lab_ramdisk.key_of(given)
    directory = os.path.join(lab_ramdisk.cache_root(), 'instance', key)
    image = os.path.join(directory, 'instance.raw')
    if force or not os.path.exists(image):
        log_path = log_path or os.path.join(lab_ramdisk.cache_root(),
                                            'instance-%s.log' % key)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        build(given, key, log_path)
    with open(os.path.join(directory, 'build.json')) as f:
        seconds = json.load(f)['seconds']
    return image, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--force', action='store_true',
                        help='build even if the cache has it')
    args = parser.parse_args(argv)
    try:
        image, seconds = get(force=args.force)
    except InstanceError as e:
        sys.exit('instance image: %s' % e)
    print(json.dumps({'image': image, 'bytes': os.path.getsize(image),
                      'build_seconds': seconds}, indent=1))


if __name__ == '__main__':
    main()
