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

"""The layer contracts of .importlinter cover every module of the tree.

The contracts name the conductor side module by module (import-linter
cannot say "ironic_bt but not ironic_bt.common"), so a new module would
escape them unnoticed; these tests fail instead.
"""

import configparser
import os
import pkgutil

import pytest

import ironic_bt

ROOT = os.path.dirname(os.path.dirname(ironic_bt.__file__))
#: Packages of ironic_bt that are layers of their own.
NOT_CONDUCTOR = {'common', 'cmd'}


def _contracts():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, '.importlinter'))
    return {name.split(':')[-1]: {
        key: parser[name][key].split() for key in parser[name]}
        for name in parser.sections() if name.startswith('importlinter:')}


def _conductor_side():
    """Import names of ironic_bt's conductor-side modules and packages."""
    return {'ironic_bt.' + info.name
            for info in pkgutil.iter_modules(ironic_bt.__path__)
            if info.name not in NOT_CONDUCTOR}


@pytest.mark.parametrize('contract, key', [
    ('agent', 'forbidden_modules'),
    ('conductor', 'source_modules'),
    ('common', 'forbidden_modules'),
])
def test_every_conductor_module_is_in_the_contract(contract, key):
    listed = set(_contracts()[contract][key])
    assert _conductor_side() - listed == set()


def test_libtorrent_is_forbidden_to_both_packages():
    contract = _contracts()['libtorrent']
    assert set(contract['source_modules']) == {'ironic_bt', 'ipa_extension'}
    assert contract['forbidden_modules'] == ['libtorrent']
