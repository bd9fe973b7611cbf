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

"""The lab's process supervision, on real child processes."""

import subprocess
import sys
import time

from tests.lab import procs

# Ignores SIGTERM; forks a child that stays in its session when it exits
# on SIGKILL... or on its own after the child is up.
_STUBBORN = '''
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.setpgid(0, 0)   # its own group, same session
    time.sleep(60)
    os._exit(0)
print('up', flush=True)
if sys.argv[1] == 'leave':
    os._exit(0)
time.sleep(60)
'''


def _start(mode):
    proc = subprocess.Popen([sys.executable, '-c', _STUBBORN, mode],
                            stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline() == 'up\n'
    return proc


def _session_gone(proc, started):
    return not procs.session_members(proc.pid, started)


def test_terminate_kills_what_ignores_sigterm_and_its_session():
    proc = _start('stay')
    started = procs.start_time(proc.pid)
    assert procs.is_running(proc.pid, started)
    assert len(procs.session_members(proc.pid, started)) == 2
    begin = time.monotonic()
    assert procs.terminate({proc.pid: started}, reap=proc.poll,
                           grace=0.3) == []
    assert time.monotonic() - begin < 5
    assert proc.wait(5) == -9
    procs.wait_for(lambda: _session_gone(proc, started), 5)


def test_terminate_finds_the_children_of_a_leader_that_left():
    proc = _start('leave')
    started = procs.start_time(proc.pid)
    proc.wait(5)
    # The leader is gone (reaped); its child lives on in the session.
    assert not procs.is_running(proc.pid, started)
    assert len(procs.session_members(proc.pid, started)) == 1
    assert procs.terminate({proc.pid: started}, grace=0.3) == []
    procs.wait_for(lambda: _session_gone(proc, started), 5)


def test_a_pid_with_another_start_time_is_left_alone():
    proc = subprocess.Popen([sys.executable, '-c',
                             'import time; time.sleep(60)'])
    try:
        started = procs.start_time(proc.pid)
        # As if the PID had been given to another process since.
        assert not procs.is_running(proc.pid, started - 1)
        assert procs.terminate({proc.pid: started - 1}, grace=0.1) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert procs.start_time(proc.pid) is None
