"""What the ``logs`` function reads logs with, one module per concern::

    parsers.py     a line as a record, per format (combined, common, json, syslog3164, syslog5424)
    aggregates.py  counters and histograms in bounded memory, whatever the size of the log
    filters.py     the filter language (``status >= 500 and path ~ "^/api/"``), parsed, never evaluated
"""

from __future__ import annotations

from workers.logformats.aggregates import Histogram, TopCounter
from workers.logformats.filters import FilterError, compile_filter
from workers.logformats.parsers import FORMATS, HTTP_CHUNK, Record, detect, http_time, parser_for

__all__ = ["FORMATS", "HTTP_CHUNK", "FilterError", "Histogram", "Record", "TopCounter", "compile_filter", "detect",
           "http_time", "parser_for"]
