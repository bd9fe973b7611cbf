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

"""QEMU guests that boot the deploy ramdisk: a real kernel under the agent.

A :class:`Guest` boots a kernel and an initramfs with a virtio disk (a
file the caller made) and a serial console written to a file, and is
stopped by its PID (and start time) only. Guests run under KVM where KVM
boots a Linux guest; where ``/dev/kvm`` exists but does not (seen on this
machine, itself a Firecracker microVM: SeaBIOS runs, the kernel never
prints a line), under QEMU's software emulation (TCG), which is slower but
the same guest. :func:`accelerator` finds out which, once per process.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time

from tests.lab import procs

QEMU = 'qemu-system-x86_64'
#: Seconds a KVM guest is given to print its first kernel line.
KVM_PROBE_SECONDS = 20
_accelerator = None


class GuestError(RuntimeError):
    """A guest did not boot or did not show what was awaited."""


def available():
    """Why guests cannot run here, or None when they can."""
    if shutil.which(QEMU) is None:
        return ('%s not found: install the Debian package qemu-system-x86 '
                '(tools/install-deps.sh --vms)' % QEMU)
    return None


class Guest:
    """One QEMU guest, started at once.

    :param kernel: path of the kernel.
    :param initramfs: path of the initramfs.
    :param append: kernel command line (the console is added).
    :param disk: a raw disk image file for the guest's virtio disk, or None.
    :param console: the file the serial console is written to.
    :param memory_mib: guest memory; the initramfs is unpacked into it.
    :param nic: None for no network, else ``(tap_name, mac)``.
    :param accel: 'kvm' or 'tcg' (default: :func:`accelerator`).
    """

    def __init__(self, kernel, initramfs, append, console, disk=None,
                 memory_mib=3072, cpus=2, nic=None, accel=None):
        self.console = console
        self.accel = accel or accelerator(kernel, initramfs)
        cmd = [QEMU, '-name', os.path.basename(console), '-nodefaults',
               '-display', 'none', '-no-reboot', '-m', str(memory_mib),
               '-smp', str(cpus), '-serial', 'file:%s' % console,
               '-kernel', kernel, '-initrd', initramfs,
               '-append', 'console=ttyS0 ' + append]
        if self.accel == 'kvm':
            cmd += ['-accel', 'kvm', '-cpu', 'host']
        else:
            cmd += ['-accel', 'tcg,thread=multi', '-cpu', 'max']
        if disk is not None:
            cmd += ['-drive', 'file=%s,if=virtio,format=raw,cache=none'
                    % disk]
        if nic is None:
            cmd += ['-nic', 'none']
        else:
            tap, mac = nic
            cmd += ['-netdev', 'tap,id=n0,ifname=%s,script=no,downscript=no'
                    % tap, '-device', 'virtio-net-pci,netdev=n0,mac=%s'
                    % mac]
        self.cmd = cmd
        self.started = time.monotonic()
        with open(console + '.qemu', 'ab') as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.starttime = procs.start_time(self.proc.pid)

    def text(self):
        try:
            with open(self.console, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def wait_for(self, pattern, timeout):
        """Wait until the console shows ``pattern`` (a regular expression).

        :returns: seconds since the guest started.
        :raises GuestError: the guest stopped or the time ran out; the
            message holds the console's last lines.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            if regex.search(self.text()):
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise GuestError('the guest stopped (exit code %s) before '
                                 'its console showed %r; it ends with:\n%s'
                                 % (self.proc.returncode, pattern,
                                    self.tail()))
            if time.monotonic() > deadline:
                raise GuestError('the console did not show %r in %d s; it '
                                 'ends with:\n%s' % (pattern, timeout,
                                                     self.tail()))
            time.sleep(0.5)

    def tail(self, lines=15):
        return '\n'.join(self.text().splitlines()[-lines:])

    def stop(self):
        """Kill the guest by its PID, if it is still the process we made."""
        if self.proc.poll() is None and procs.is_running(
                self.proc.pid, self.starttime):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def accelerator(kernel, initramfs):
    """'kvm' if a KVM guest prints its first kernel line, else 'tcg'."""
    global _accelerator
    if _accelerator is None:
        _accelerator = 'tcg'
        if os.access('/dev/kvm', os.R_OK | os.W_OK):
            console = '/tmp/ironic-bt-kvm-probe-%d.log' % os.getpid()
            try:
                with Guest(kernel, initramfs, 'earlyprintk=serial,ttyS0',
                           console, memory_mib=512, cpus=1,
                           accel='kvm') as probe:
                    with contextlib.suppress(GuestError):
                        probe.wait_for(r'Linux version', KVM_PROBE_SECONDS)
                        _accelerator = 'kvm'
            finally:
                for path in (console, console + '.qemu'):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
    return _accelerator
