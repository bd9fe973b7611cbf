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

"""Errors of the agent-side writer; their text is meant for operators.

They are plain Python exceptions, so that ``ironic-bt write`` needs no
ironic-python-agent; the hardware manager maps them to IPA's errors. Each
names the party at fault: the disk (:class:`TargetError`,
:class:`VerifyError`) or the swarm (:class:`DownloadError`), so that a dying
disk is never reported as a network problem.
"""


class WriterError(Exception):
    """An error of the writer."""


class TargetError(WriterError):
    """The target cannot take the image, or writing to it failed."""


class DownloadError(WriterError):
    """The pieces could not be fetched from the swarm."""


class VerifyError(TargetError):
    """What was read back from the target is not the image."""
