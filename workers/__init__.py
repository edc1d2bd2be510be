"""fileproc's built-in functions, written against the public function interface only."""

from workers import thumbnail  # noqa: F401  (importing registers the function)
