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


"""Process helpers for lab tests: supervision, waiting, reading logs.

A process the lab starts is known by its PID and its start time: a PID the
kernel gave to another process since has another start time, and is never
signalled. :func:`terminate` stops processes so known (SIGTERM, then
SIGKILL), with the children left in their session.
"""

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil

LOG = logging.getLogger(__name__)

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


#: Seconds a process has to exit after SIGTERM, before SIGKILL.
KILL_GRACE = 5.0
#: Seconds to wait for processes to go after SIGKILL.
_KILL_WAIT = 2.0


def _process(pid):
    """(start time, alive) of ``pid``; None if there is no such process.

    A zombie (exited, not yet reaped) is not alive, but still has its PID.
    """
    try:
        proc = psutil.Process(pid)
        return proc.create_time(), proc.status() not in (
            psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return None


def start_time(pid):
    """The start time that identifies ``pid``; None if it is gone."""
    found = _process(pid)
    return found[0] if found else None


def is_running(pid, started):
    """Whether the process started at ``started`` as ``pid`` is alive."""
    return _process(pid) == (started, True)


def _sessions():
    """{session id: [(pid, start time)]} of the live processes."""
    sessions = {}
    for proc in psutil.process_iter(['create_time', 'status']):
        if proc.info['status'] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        with contextlib.suppress(OSError):
            sessions.setdefault(os.getsid(proc.pid), []).append(
                (proc.pid, proc.info['create_time'] or 0))
    return sessions


def session_members(sid, started, sessions=None):
    """Live PIDs in session ``sid`` started no earlier than ``started``.

    The children a session leader forked, still there when it is gone.

    :param sessions: what :func:`_sessions` returned, to look once for
        many sessions.
    """
    if sessions is None:
        sessions = _sessions()
    return [pid for pid, when in sessions.get(sid, ()) if when >= started]


def _alive(pid, started, session, sessions):
    """Whether the process, or (with ``session``) what it left, lives."""
    found = _process(pid)
    if found is not None and found[0] != started:
        return False    # the PID is someone else's now
    if found == (started, True):
        return True
    return session and bool(session_members(pid, started, sessions))


def _signal(pid, started, signum, session, sessions):
    """Signal a process (its group if it leads one); True if one was hit.

    With ``session``, every member of the session it leads is signalled
    too, also those in groups of their own, and also once the leader is
    gone.
    """
    found = _process(pid)
    if found is not None and found[0] != started:
        return False    # the PID is someone else's now
    hit = False
    if found is not None and found[1]:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
            hit = True
    for member in session_members(pid, started, sessions) if session else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signum)
            hit = True
    return hit


def terminate(processes, session=True, reap=None, grace=KILL_GRACE):
    """SIGTERM, then after ``grace`` seconds SIGKILL, processes.

    :param processes: {pid: start time}.
    :param session: also stop what each one left in the session it led
        (processes the lab started as session leaders).
    :param reap: called while waiting, to reap the caller's children.
    :returns: the PIDs still alive after SIGKILL.
    """
    def alive():
        if reap is not None:
            reap()
        sessions = _sessions() if session else None
        return [pid for pid, started in processes.items()
                if _alive(pid, started, session, sessions)]

    for signum, wait in ((signal.SIGTERM, grace),
                         (signal.SIGKILL, _KILL_WAIT)):
        sessions = _sessions() if session else None
        for pid, started in processes.items():
            if (_signal(pid, started, signum, session, sessions)
                    and signum == signal.SIGKILL):
                LOG.warning('lab: SIGKILLed pid %d, still there %.0f s '
                            'after SIGTERM', pid, grace)
        deadline = time.monotonic() + wait
        left = alive()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = alive()
        if not left:
            return []
    return left


def pid_file_process(path, token):
    """(pid, start time) of the process whose PID a daemon wrote at path.

    Only if its command line holds ``token`` (so a reused PID is never
    taken for it); None otherwise, or if there is no file.
    """
    try:
        with open(path) as f:
            pid = int(f.read().split()[0])
        proc = psutil.Process(pid)
        if token not in ' '.join(proc.cmdline()):
            return None
        return pid, proc.create_time()
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


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
