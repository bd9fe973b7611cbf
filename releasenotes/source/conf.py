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

"""Sphinx configuration of the ironic-bt release notes."""

# -- General configuration ------------------------------------------------

extensions = [
    'openstackdocstheme',
    'reno.sphinxext',
]

# openstackdocstheme options
openstackdocs_repo_name = 'openstack/ironic-bt'
openstackdocs_use_storyboard = False
openstackdocs_auto_name = False

templates_path = ['_templates']
source_suffix = '.rst'
master_doc = 'index'

project = 'ironic-bt Release Notes'
copyright = 'The ironic-bt Authors'

# Release notes do not need a version number in the title; they cover
# multiple releases.
version = ''
release = ''

pygments_style = 'native'

# -- Options for HTML output ----------------------------------------------

html_theme = 'openstackdocs'
html_static_path = []

# -- Options for Internationalization output ------------------------------

locale_dirs = ['locale/']
