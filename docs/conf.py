"""Sphinx configuration for the liteattn docs."""

project = "liteattn"
author = "the liteattn developers"
copyright = "2026, the liteattn developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["triton", "diffusers", "matplotlib"]
exclude_patterns = ["_build", "backend-contract.md"]
html_theme = "alabaster"
nitpicky = False
suppress_warnings = ["autosummary.import_cycle"]
