"""fileproc's built-in functions, written against the public function interface only.

Each registers through the ``fileproc.functions`` entry point group (see
``pyproject.toml``), as an installed package would; importing this package
loads none of them.
"""
