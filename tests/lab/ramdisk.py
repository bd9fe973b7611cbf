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

"""The deploy ramdisk, built as a site builds it, cached by its inputs.

ironic-python-agent-builder runs diskimage-builder with the
``ironic-python-agent-ramdisk`` element and ironic-bt's own element
(``devstack/elements/ironic-bt``, which the devstack plugin uses too), on
Debian bookworm from Debian's archive. Nothing is cloned from the internet:

* ironic-python-agent comes from its sdist on PyPI, made a local git
  repository (the element installs IPA from a git checkout);
* the constraints of the ramdisk's virtualenv come from
  ``ramdisk-constraints.txt`` beside this module, made the local
  ``requirements`` repository (upper-constraints, as OpenStack pins them);
* ironic-bt comes from this repository's HEAD: commit what the ramdisk
  should hold (a dirty tree is refused, see :func:`inputs`).

The kernel and the initramfs are kept in
``$IRONIC_BT_CACHE/ramdisk/<key>/`` (``~/.cache/ironic-bt`` by default),
where the key is the sha256 of every input: the tools' versions, IPA's,
the release, the elements and their files, the constraints, the git trees
of the ironic-bt paths that go into the ramdisk, and the ISO week (for
Debian's updates). A build (about 3 minutes here) happens only when one of
them changed.

``python -m tests.lab.ramdisk`` builds (or finds) it and prints where it
is, its key, its size and how long the build took.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from tests.lab import net

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

#: The image builders, pinned: a new release may build another ramdisk.
TOOLS = ('diskimage-builder==3.43.0', 'ironic-python-agent-builder==7.4.0')
#: The agent in the ramdisk.
IPA = ('ironic-python-agent', '13.0.0')
RELEASE = 'bookworm'
DISTRO = 'debian-minimal'
#: Extra elements: ironic-bt's (the devstack plugin's too) and the lab's.
ELEMENTS = ('ironic-bt', 'pip-host-ca')
#: diskimage-builder's own elements the lab adds (pinned with TOOLS):
#: dynamic-login puts a public key given on the kernel command line
#: (``sshkey=``) into root's authorized keys, and does nothing without it.
#: The lab's VMs get the cloud's key, so ``tools/cloud ssh`` can look
#: inside a ramdisk at work.
DIB_ELEMENTS = ('dynamic-login',)
ELEMENT_DIRS = (os.path.join(REPO, 'devstack', 'elements'),
                os.path.join(HERE, 'elements'))
CONSTRAINTS = os.path.join(HERE, 'ramdisk-constraints.txt')
#: What of ironic-bt goes into the ramdisk (pip installs the package).
SOURCE_PATHS = ('ipa_extension', 'ironic_bt', 'setup.cfg', 'setup.py',
                'requirements.txt', 'pyproject.toml')
#: Debian packages the build needs on the build host (diskimage-builder
#: calls sudo even as root).
PACKAGES = ('debootstrap', 'sudo', 'cpio', 'qemu-utils')
#: Seconds a build may take (a cold one: about 3 minutes here).
BUILD_TIMEOUT = 3600


class RamdiskError(RuntimeError):
    """The ramdisk cannot be built (the message says why and where)."""


@dataclasses.dataclass
class Ramdisk:
    kernel: str
    initramfs: str
    key: str
    #: Seconds the build took (when it was built), and whether it was.
    build_seconds: float
    built_now: bool

    def sizes(self):
        return {'kernel_bytes': os.path.getsize(self.kernel),
                'initramfs_bytes': os.path.getsize(self.initramfs)}


def cache_root():
    return os.environ.get('IRONIC_BT_CACHE') or os.path.join(
        os.path.expanduser('~'), '.cache', 'ironic-bt')


def _git(*args):
    return subprocess.run(['git', '-C', REPO] + list(args), check=True,
                          capture_output=True, text=True).stdout.strip()


def hash_files(directory):
    """sha256 over the names, modes and contents of the files under it."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode())
            digest.update(b'x' if os.access(path, os.X_OK) else b'-')
            with open(path, 'rb') as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def inputs():
    """Everything that decides what the ramdisk holds.

    :raises RamdiskError: when the ironic-bt paths that go into the
        ramdisk have uncommitted changes: the build takes HEAD, so the
        ramdisk would not hold what the working tree says.
    """
    present = [p for p in SOURCE_PATHS
               if os.path.exists(os.path.join(REPO, p))]
    dirty = _git('status', '--porcelain', '--', *present)
    if dirty:
        raise RamdiskError(
            'The ramdisk takes ironic-bt from HEAD of %s, and these paths '
            'have changes that are not committed:\n%s\nCommit them first.'
            % (REPO, dirty))
    with open(CONSTRAINTS, 'rb') as f:
        constraints = hashlib.sha256(f.read()).hexdigest()
    return {
        'tools': list(TOOLS),
        'ipa': '%s==%s' % IPA,
        'release': RELEASE,
        'distro': DISTRO,
        'elements': list(ELEMENTS) + list(DIB_ELEMENTS),
        'element_files': {e: hash_files(element_dir(e)) for e in ELEMENTS},
        'constraints': constraints,
        'ironic_bt': {p: _git('rev-parse', 'HEAD:%s' % p) for p in present},
        # Debian's packages (the kernel, security fixes) and the few
        # unpinned Python packages of the build (pip, pbr, glean) move on:
        # a new ramdisk every ISO week takes their updates.
        'week': time.strftime('%G-W%V', time.gmtime()),
    }


def element_dir(name):
    """The directory of one of the lab's or ironic-bt's elements."""
    for directory in ELEMENT_DIRS:
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            return path
    raise RamdiskError('element %s is in none of %s'
                       % (name, ', '.join(ELEMENT_DIRS)))


def key_of(given):
    return hashlib.sha256(json.dumps(given, sort_keys=True).encode()
                          ).hexdigest()[:16]


def run(cmd, log, **kwargs):
    log.write(('$ %s\n' % ' '.join(cmd)).encode())
    log.flush()
    try:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                **kwargs)
    except subprocess.TimeoutExpired as e:
        raise RamdiskError('%s did not finish in %d s; see %s'
                           % (cmd[0], e.timeout, log.name))
    if result.returncode:
        raise RamdiskError('%s failed with exit code %d; see %s'
                           % (cmd[0], result.returncode, log.name))


def tools_venv(log):
    """A virtualenv with the pinned image builders, cached by their pins."""
    venv = os.path.join(cache_root(), 'tools-%s' % hashlib.sha256(
        ' '.join(TOOLS).encode()).hexdigest()[:12])
    builder = os.path.join(venv, 'bin', 'ironic-python-agent-builder')
    if not os.path.exists(builder):
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, '-m', 'venv', venv], log)
        run([os.path.join(venv, 'bin', 'pip'), 'install', '-q']
            + list(TOOLS), log)
    return venv


def _local_repo(path, log, message):
    env = dict(os.environ, GIT_AUTHOR_NAME='ironic-bt lab',
               GIT_AUTHOR_EMAIL='lab@ironic-bt.invalid',
               GIT_COMMITTER_NAME='ironic-bt lab',
               GIT_COMMITTER_EMAIL='lab@ironic-bt.invalid')
    for cmd in (['init', '-q', '-b', 'master'], ['add', '-A'],
                ['commit', '-q', '-m', message]):
        run(['git', '-C', path] + cmd, log, env=env)


def _ipa_repo(work, venv, log):
    """IPA's sdist from PyPI as a local git repository."""
    name, version = IPA
    download = os.path.join(work, 'sdist')
    run([os.path.join(venv, 'bin', 'pip'), 'download', '-q', '--no-deps',
         '--no-binary', ':all:', '-d', download,
         '%s==%s' % (name, version)], log)
    (archive,) = os.listdir(download)
    with tarfile.open(os.path.join(download, archive)) as tar:
        tar.extractall(work, filter='data')
    source = os.path.join(work, '%s-%s' % (name.replace('-', '_'), version))
    # The element runs "pip install" on the checkout: pbr takes the
    # version from PKG-INFO, which the sdist holds.
    _local_repo(source, log, '%s %s from its sdist' % (name, version))
    return source


def _requirements_repo(work, log):
    repo = os.path.join(work, 'requirements')
    os.makedirs(repo)
    shutil.copy(CONSTRAINTS, os.path.join(repo, 'upper-constraints.txt'))
    _local_repo(repo, log, 'upper-constraints of the ramdisk')
    return repo


def dib_env(venv, work):
    """diskimage-builder's environment for a Debian build in ``work``."""
    env = dict(os.environ)
    # The host's pip settings (local wheel folders, constraints) must not
    # reach the chroot's pip.
    for name in list(env):
        if name.startswith('PIP_'):
            del env[name]
    env.update({
        'PATH': '%s:%s' % (os.path.join(venv, 'bin'), env.get('PATH', '')),
        # Debian's archive: deb.debian.org unless the caller set
        # DIB_DISTRIBUTION_MIRROR.
        'DIB_RELEASE': RELEASE,
        'DIB_IMAGE_CACHE': os.path.join(cache_root(), 'dib-cache'),
        'TMPDIR': work,
    })
    # Debian's security archive through deb.debian.org, the one name of
    # Debian's archive that this machine's registry access lets through
    # (security.debian.org answers 400 here).
    env.setdefault('DIB_DEBIAN_SECURITY_MIRROR',
                   'http://deb.debian.org/debian-security')
    return env


def build(given, key, log_path):
    """Build the ramdisk for ``given`` inputs into the cache."""
    missing = [p for p in ('debootstrap', 'sudo', 'cpio', 'qemu-img')
               if shutil.which(p) is None]
    if missing:
        raise RamdiskError('%s not found: install the Debian packages %s '
                           '(tools/install-deps.sh --vms)'
                           % (', '.join(missing), ' '.join(PACKAGES)))
    final, work = build_dirs('ramdisk', key)
    start = time.monotonic()
    try:
        with open(log_path, 'ab') as log:
            venv = tools_venv(log)
            ipa = _ipa_repo(work, venv, log)
            requirements = _requirements_repo(work, log)
            env = dib_env(venv, work)
            env.update({
                'ELEMENTS_PATH': ':'.join(ELEMENT_DIRS),
                'DIB_REPOLOCATION_ironic_python_agent': ipa,
                'DIB_REPOREF_ironic_python_agent': 'master',
                'DIB_REPOLOCATION_requirements': requirements,
                'DIB_REPOREF_requirements': 'master',
                'DIB_REPOLOCATION_ironic_bt': REPO,
                'DIB_REPOREF_ironic_bt': _git('rev-parse', 'HEAD'),
                # glean from PyPI (simple-init), not a clone from opendev.
                'DIB_INSTALLTYPE_glean': 'package',
            })
            output = os.path.join(work, 'out', 'ipa')
            cmd = ['ironic-python-agent-builder', '-o', output,
                   '--release', RELEASE]
            for element in ELEMENTS + DIB_ELEMENTS:
                cmd += ['-e', element]
            run(cmd + [DISTRO], log, env=env, timeout=BUILD_TIMEOUT)
            seconds = time.monotonic() - start
            staged = os.path.join(work, 'result')
            os.makedirs(staged)
            for suffix in ('kernel', 'initramfs'):
                os.rename('%s.%s' % (output, suffix),
                          os.path.join(staged, 'ipa.%s' % suffix))
            install(staged, final, given, seconds)
        return seconds
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def build_dirs(kind, key):
    """Where a build of ``kind`` goes in the cache, and a work directory.

    The work directory is beside it, on the same file system, so that
    :func:`install` can rename the result into place.
    """
    final = os.path.join(cache_root(), kind, key)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    work = tempfile.mkdtemp(prefix='build-%s-' % key,
                            dir=os.path.dirname(final))
    return final, work


def install(staged, final, given, seconds):
    """Record how a build was made, and move it into the cache."""
    with open(os.path.join(staged, 'build.json'), 'w') as f:
        json.dump({'inputs': given, 'seconds': round(seconds, 1),
                   'built': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                          time.gmtime())}, f,
                  indent=1, sort_keys=True)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staged, final)


def unmount_under(directory):
    """Unmount what a failed diskimage-builder run left mounted there."""
    real = os.path.realpath(directory)
    points = net.mount_points()
    for point in sorted((p for p in points
                         if p == real or p.startswith(real + '/')),
                        reverse=True):
        subprocess.run(['umount', '-l', point], check=False,
                       capture_output=True)


def get(log_path=None, force=False):
    """The ramdisk of the current inputs, built if it is not cached."""
    given = inputs()
    key = key_of(given)
    directory = os.path.join(cache_root(), 'ramdisk', key)
    kernel = os.path.join(directory, 'ipa.kernel')
    initramfs = os.path.join(directory, 'ipa.initramfs')
    if force or not (os.path.exists(kernel) and os.path.exists(initramfs)):
        log_path = log_path or os.path.join(cache_root(),
                                            'ramdisk-%s.log' % key)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        build(given, key, log_path)
        built_now = True
    else:
        built_now = False
    with open(os.path.join(directory, 'build.json')) as f:
        seconds = json.load(f)['seconds']
    return Ramdisk(kernel=kernel, initramfs=initramfs, key=key,
                   build_seconds=seconds, built_now=built_now)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--force', action='store_true',
                        help='build even if the cache has it')
    parser.add_argument('--log', help='build log (default: in the cache)')
    args = parser.parse_args(argv)
    try:
        ramdisk = get(args.log, force=args.force)
    except RamdiskError as e:
        sys.exit('ramdisk: %s' % e)
    print(json.dumps(dict(dataclasses.asdict(ramdisk), **ramdisk.sizes()),
                     indent=1))


if __name__ == '__main__':
    main()
