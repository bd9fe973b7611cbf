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


"""The test lab: hosts, links, disks and images on one machine.

Functional tests, the end-to-end local cloud harness and the benchmark all
build their "hosts" with this package: network namespaces on a private
bridge (:mod:`tests.lab.net`), loop devices (:mod:`tests.lab.disks`), test
images (:mod:`tests.lab.images`) and process helpers
(:mod:`tests.lab.procs`). It needs root and only the Python standard
library plus the ``ip``, ``tc``, ``losetup``, ``sfdisk`` and ``mkfs.*``
commands.

Safety rules it enforces (see "Safety on a shared machine" in the design
brief): addresses only from 198.18.0.0/15, no default route, writes only to
loop devices backed by files inside the lab's state directory, processes
killed only by their recorded PID, and everything recorded in a state file
so that a crashed run can still be torn down.
"""
