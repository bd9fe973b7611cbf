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


"""Process helpers for lab tests: waiting and reading logs."""

import os
import re
import socket
import subprocess
import sys
import time

_ERROR_RE = re.compile(r'\b(ERROR|CRITICAL|Traceback|Exception|FAILED)\b')

# Runs inside a namespace: exit 0 once ip:port accepts a connection.
_WAIT_PORT_SCRIPT = '''
import socket, sys, time
ip, port, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + deadline
while True:
    try:
        socket.create_connection((ip, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        if time.monotonic() >= end:
            sys.exit(1)
        time.sleep(0.1)
'''


def wait_for(predicate, timeout, interval=0.1, what='condition',
             proc=None, log_path=None):
    """Poll ``predicate()`` until it returns something true; return it.

    :param timeout: seconds before giving up.
    :param what: names the condition in the TimeoutError.
    :param proc: optional ``Popen`` the condition depends on: if it exits
        first, fail at once instead of waiting for the timeout.
    :param log_path: optional log whose tail goes into the error message.
    :raises TimeoutError: naming ``what`` (and with the log tail).
    :raises RuntimeError: if ``proc`` exited first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise RuntimeError('%s: process %d exited with %s while waiting'
                               '%s' % (what, proc.pid, proc.returncode,
                                       _tail_suffix(log_path)))
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError('timed out after %.1fs waiting for %s%s'
                               % (timeout, what, _tail_suffix(log_path)))
        time.sleep(max(0.0, min(interval, deadline - now)))


def _tail_suffix(log_path):
    if not log_path:
        return ''
    return '; last lines of %s:\n%s' % (log_path, tail_log(log_path, 20))


def port_open(ip, port, timeout=1.0):
    """True if a TCP connection to ip:port succeeds (root namespace)."""
    try:
        socket.create_connection((ip, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_port(ip, port, timeout=30.0, netns=None, proc=None,
              log_path=None):
    """Wait until ``ip:port`` accepts TCP connections.

    :param netns: connect from inside this namespace (else from the root
        namespace, which reaches every lab host through the bridge).
    """
    what = 'TCP %s:%d%s' % (ip, port, ' from %s' % netns if netns else '')
    if netns is None:
        return wait_for(lambda: port_open(ip, port), timeout, 0.1, what,
                        proc=proc, log_path=log_path)
    # One helper process polls inside the namespace, rather than one
    # "ip netns exec" per attempt.
    child = subprocess.Popen(
        ['ip', 'netns', 'exec', netns, sys.executable, '-c',
         _WAIT_PORT_SCRIPT, ip, str(port), str(timeout)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        wait_for(lambda: child.poll() is not None, timeout + 10, 0.1,
                 what, proc=proc, log_path=log_path)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stderr.close()
    if child.returncode != 0:
        raise TimeoutError('timed out after %.1fs waiting for %s%s'
                           % (timeout, what, _tail_suffix(log_path)))
    return True


def tail_log(path, lines=50, max_bytes=64 * 1024):
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ''
    text = data.decode('utf-8', errors='replace')
    return '\n'.join(text.splitlines()[-lines:])


def find_errors(path, pattern=_ERROR_RE, max_bytes=1024 * 1024):
    """Lines of the last ``max_bytes`` of a log that look like errors."""
    text = tail_log(path, lines=10 ** 9, max_bytes=max_bytes)
    if isinstance(pattern, str):
        pattern = re.compile(pattern)
    return [line for line in text.splitlines() if pattern.search(line)]
