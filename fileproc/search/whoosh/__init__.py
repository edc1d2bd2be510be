"""The Whoosh engine behind :class:`~fileproc.search.SearchIndex`: everything here knows Whoosh.

The modules, from the index down to Whoosh's files::

    index.py      WhooshIndex: opens, writes, searches and rebuilds the index of ``search.dir``
    files.py      the generations under ``search.dir`` (a rebuild swaps them atomically)
    writing.py    a batch on a Whoosh writer, the merge policy of a commit, a whole generation
    reading.py    one searcher and what is kept for it; a query's best hits on it
    queries.py    a query's text as a Whoosh query (parsed once, pruned of absent words)
    topk.py       the best hits of plain word queries, a posting block at a time (numpy)
    postings.py   Whoosh's posting blocks read with numpy, and what is kept of them between queries
    snippets.py   highlighted snippets of the hits
    readahead.py  the frequent words of new segments read ahead, for a process serving searches
    schema.py     the index's fields, and a Document as those fields (its words analysed as
                  :mod:`fileproc.functions.analysis` does, on the worker that ran the ``index`` step)
    codec.py      how segments are written: Whoosh's format, with less Python

Example::

    >>> from pathlib import Path
    >>> from fileproc.search.whoosh import WhooshIndex
    >>> index = WhooshIndex(Path("fileproc-data/search"))
    >>> index.search("quarterly report", bucket="docs").hits
"""

from __future__ import annotations

# AnalyzedText is exported here because every index's pickled schema names it
# ``fileproc.search.whoosh.AnalyzedText`` (see its docstring): that name must always resolve.
from fileproc.search.whoosh.index import WhooshIndex
from fileproc.search.whoosh.schema import AnalyzedText

__all__ = ["AnalyzedText", "WhooshIndex"]
