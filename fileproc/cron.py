"""EventBridge's schedule expressions: ``rate(5 minutes)`` and ``cron(0 12 * * ? *)``, in UTC.

:func:`parse` reads one (``ValueError`` naming what is wrong, so a bad
``[[schedules]]`` entry stops fileproc at start) into a :class:`Rate` or a
:class:`Cron`, both of which answer two questions: the first tick after a
time (:meth:`~Rate.next_after`) and the latest one at or before it
(:meth:`~Rate.latest_at`). A tick is a whole minute; there is no tick
before 1970 nor after 2199 (EventBridge's years).

The syntax is EventBridge's (its user guide, "Cron expressions reference")::

    rate(1 minute) | rate(N minutes) | rate(1 hour) | rate(N hours) | rate(1 day) | rate(N days)
    cron(Minutes Hours Day-of-month Month Day-of-week Year)

    Minutes       0-59                , - * /
    Hours         0-23                , - * /
    Day-of-month  1-31                , - * ? / L W     (L: the last day, LW: the last weekday,
                                                         15W: the weekday nearest the 15th)
    Month         1-12 or JAN-DEC     , - * /
    Day-of-week   1-7 or SUN-SAT      , - * ? / L #     (L: Saturday, 6L: the last Friday,
                                                         3#2: the second Tuesday; one # only)
    Year          1970-2199           , - * /

One of Day-of-month and Day-of-week is ``?`` and the other is not. A range
may wrap (``FRI-MON``, hours ``22-2``); ``a/n`` counts from ``a`` to the end
of the field.

Where fileproc differs, on purpose: EventBridge counts a rate from when the
rule was made; here its ticks are whole multiples of the period since
1970-01-01T00:00Z (``rate(5 minutes)``: :00, :05, ...; ``rate(1 day)``:
midnight UTC), so every host computes the same ticks without asking another.

Example::

    >>> parse("cron(0 12 ? * MON-FRI *)").next_after(datetime(2026, 12, 5, 12, tzinfo=UTC))
    datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

FIRST_YEAR, LAST_YEAR = 1970, 2199
EPOCH = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
END = datetime(LAST_YEAR, 12, 31, 23, 59, tzinfo=UTC)
MINUTE = timedelta(minutes=1)

UNITS = {"minute": 60, "hour": 3600, "day": 86400}
MONTHS = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}
WEEKDAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}

_RATE = re.compile(r"^rate\(\s*(\S+)\s+(\S+)\s*\)$")
_CRON = re.compile(r"^cron\((.*)\)$")


def parse(expression: str) -> Rate | Cron:
    """The schedule ``expression`` names; ValueError saying what is wrong with it.

    Example: ``parse("rate(1 hour)").next_after(...)``.
    """
    text = expression.strip()
    if text.startswith("rate("):
        return _parse_rate(text)
    if text.startswith("cron("):
        return _parse_cron(text)
    raise ValueError(f"{expression!r}: use rate(VALUE UNIT), e.g. rate(5 minutes), "
                     "or cron(Minutes Hours Day-of-month Month Day-of-week Year), e.g. cron(0 12 * * ? *)")


def _utc(moment: datetime) -> datetime:
    # Naive times are taken as UTC, as the state database hands them back.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class Rate:
    """``rate(N unit)``: every ``seconds``, on whole multiples of it since 1970-01-01T00:00Z."""

    expression: str
    seconds: int

    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after ``moment`` (None past 2199)."""
        period = timedelta(seconds=self.seconds)
        tick = EPOCH + ((_utc(moment) - EPOCH) // period + 1) * period
        return max(tick, EPOCH) if tick <= END else None

    def latest_at(self, moment: datetime) -> datetime | None:
        """The latest tick at or before ``moment`` (None before 1970)."""
        period = timedelta(seconds=self.seconds)
        elapsed = min(_utc(moment), END) - EPOCH
        return EPOCH + elapsed // period * period if elapsed >= timedelta(0) else None

    def __str__(self) -> str:
        return self.expression


def _parse_rate(text: str) -> Rate:
    found = _RATE.match(text)
    if not found:
        raise ValueError(f"{text!r}: use rate(VALUE UNIT), e.g. rate(5 minutes)")
    value, unit = found.groups()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{text!r}: the value must be a whole number of 1 or more, not {value!r}")
    count = int(value)
    singular = unit.removesuffix("s")
    if singular not in UNITS:
        raise ValueError(f"{text!r}: the unit must be minute(s), hour(s) or day(s), not {unit!r}")
    if count == 1 and unit != singular:
        raise ValueError(f"{text!r}: a value of 1 takes the singular unit: rate(1 {singular})")
    if count > 1 and unit == singular:
        raise ValueError(f"{text!r}: a value above 1 takes the plural unit: rate({count} {singular}s)")
    return Rate(text, count * UNITS[singular])


# -- cron ---------------------------------------------------------------------------

DaysOf = Callable[[int, int], Sequence[int]]
"""The days of (year, month) a cron expression runs on, ascending."""


@dataclass(frozen=True)
class Cron:
    """``cron(...)``: the minutes, hours, months and years it runs in, and which days of each month."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    years: tuple[int, ...]
    days_of: DaysOf

    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after ``moment`` (None if there is none before 2200)."""
        start = max(_utc(moment).replace(second=0, microsecond=0) + MINUTE, EPOCH)
        return next(self._ticks(start, forward=True), None)

    def latest_at(self, moment: datetime) -> datetime | None:
        """The latest tick at or before ``moment`` (None if there is none since 1970)."""
        start = min(_utc(moment), END).replace(second=0, microsecond=0)
        return next(self._ticks(start, forward=False), None) if start >= EPOCH else None

    def _ticks(self, start: datetime, *, forward: bool) -> Iterator[datetime]:
        """The ticks from ``start`` (included) on, forward or back in time: field by field, as an odometer."""
        for year, at_year in _values(self.years, start.year, forward, True):
            for month, at_month in _values(self.months, start.month, forward, at_year):
                days = self.days_of(year, month)
                for day, at_day in _values(days, start.day, forward, at_month):
                    for hour, at_hour in _values(self.hours, start.hour, forward, at_day):
                        for minute, _ in _values(self.minutes, start.minute, forward, at_hour):
                            yield datetime(year, month, day, hour, minute, tzinfo=UTC)

    def __str__(self) -> str:
        return self.expression


def _values(values: Sequence[int], bound: int, forward: bool, bounded: bool) -> Iterator[tuple[int, bool]]:
    """``values`` in order from ``bound`` on if ``bounded`` (else all), each with whether it equals the bound
    (then the next field is bounded by ``start`` too)."""
    ordered = values if forward else list(reversed(values))
    for value in ordered:
        if bounded and (value < bound if forward else value > bound):
            continue
        yield value, bounded and value == bound


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


MINUTES = _Field("Minutes", 0, 59)
HOURS = _Field("Hours", 0, 23)
DAY_OF_MONTH = _Field("Day-of-month", 1, 31)
MONTH = _Field("Month", 1, 12, MONTHS)
DAY_OF_WEEK = _Field("Day-of-week", 1, 7, WEEKDAYS)
YEAR = _Field("Year", FIRST_YEAR, LAST_YEAR)


def _parse_cron(text: str) -> Cron:
    found = _CRON.match(text)
    parts = found.group(1).split() if found else []
    if len(parts) != 6:
        raise ValueError(f"{text!r}: a cron expression has 6 fields, Minutes Hours Day-of-month Month Day-of-week "
                         f"Year (e.g. cron(0 12 * * ? *)); this one has {len(parts)}")
    minutes, hours, dom, month, dow, year = (p.upper() for p in parts)
    try:
        if (dom == "?") == (dow == "?"):
            raise ValueError("one of Day-of-month and Day-of-week must be '?' and the other not "
                             "(e.g. cron(0 12 * * ? *) or cron(0 12 ? * MON-FRI *))")
        days_of = _days_of_week(dow) if dom == "?" else _days_of_month(dom)
        return Cron(text, _numbers(minutes, MINUTES), _numbers(hours, HOURS), _numbers(month, MONTH),
                    _numbers(year, YEAR), days_of)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def _numbers(text: str, field: _Field) -> tuple[int, ...]:
    """The values a plain field (``, - * /`` and names) takes, ascending."""
    found: set[int] = set()
    for item in text.split(","):
        found |= _item(item, field)
    return tuple(sorted(found))


def _item(item: str, field: _Field) -> set[int]:
    """One comma-separated item: ``*``, ``N``, ``A-B``, each optionally ``/STEP``."""
    span = field.high - field.low + 1
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or not 1 <= int(step_text) <= span:
            raise ValueError(f"{field.name} {item!r}: the step after '/' must be a number from 1 to {span}")
        step = int(step_text)
    if base == "*":
        first, last = field.low, field.high
    elif "-" in base:
        low, _, high = base.partition("-")
        first, last = _value(low, field, item), _value(high, field, item)
    else:
        first = _value(base, field, item)
        last = field.high if slash else first
    count = (last - first) % span + 1  # a range may wrap: FRI-MON, hours 22-2
    return {field.low + (first - field.low + offset) % span for offset in range(0, count, step)}


def _value(text: str, field: _Field, item: str) -> int:
    if text in ("?", "L", "W", "LW") or "#" in text:
        raise ValueError(f"{field.name} {item!r}: {text!r} is not allowed here (see EventBridge's cron reference: "
                         "'?' and 'L' only in Day-of-month and Day-of-week, 'W' only in Day-of-month, '#' only "
                         "in Day-of-week)")
    if field.names and text in field.names:
        return field.names[text]
    if not text.isdigit():
        names = f", or {next(iter(field.names))}-{list(field.names)[-1]}" if field.names else ""
        raise ValueError(f"{field.name} {item!r}: {text!r} is not a number{names}")
    value = int(text)
    if not field.low <= value <= field.high:
        raise ValueError(f"{field.name} {item!r}: {value} is outside {field.low}-{field.high}")
    return value


def _days_of_month(text: str) -> DaysOf:
    """Day-of-month: numbers, ranges and steps, ``L`` (the last day), ``LW`` (the last weekday), ``NW``."""
    plain: set[int] = set()
    last = last_weekday = False
    nearest: set[int] = set()
    for item in text.split(","):
        if item == "L":
            last = True
        elif item == "LW":
            last_weekday = True
        elif item.endswith("W"):
            nearest.add(_value(item[:-1], DAY_OF_MONTH, item))
        else:
            plain |= _item(item, DAY_OF_MONTH)

    def days(year: int, month: int) -> list[int]:
        length = calendar.monthrange(year, month)[1]
        found = {day for day in plain if day <= length}
        if last:
            found.add(length)
        if last_weekday:
            found.add(_nearest_weekday(year, month, length, length))
        found |= {_nearest_weekday(year, month, day, length) for day in nearest if day <= length}
        return sorted(found)

    return days


def _nearest_weekday(year: int, month: int, day: int, length: int) -> int:
    """The weekday (Monday-Friday) nearest ``day`` within its month (Quartz's ``W``: 1W on a Saturday is the 3rd)."""
    weekday = calendar.weekday(year, month, day)  # Monday 0 .. Sunday 6
    if weekday == 5:  # Saturday: the Friday before, unless that is last month
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: the Monday after, unless that is next month
        return day + 1 if day < length else day - 2
    return day


def _days_of_week(text: str) -> DaysOf:
    """Day-of-week (1-7 = SUN-SAT): numbers, names, ranges and steps, ``L`` (Saturday), ``5L``, ``3#2``."""
    if "#" in text and "," in text:
        raise ValueError(f"Day-of-week {text!r}: a '#' item must be the field's only one (EventBridge's rule)")
    plain: set[int] = set()
    lasts: set[int] = set()
    nth: tuple[int, int] | None = None
    for item in text.split(","):
        if item == "L":
            plain.add(WEEKDAYS["SAT"])  # the last day of the week
        elif item.endswith("L"):
            lasts.add(_value(item[:-1], DAY_OF_WEEK, item))
        elif "#" in item:
            weekday, _, which = item.partition("#")
            if not which.isdigit() or not 1 <= int(which) <= 5:
                raise ValueError(f"Day-of-week {item!r}: the number after '#' must be 1-5 (which one in the month)")
            nth = (_value(weekday, DAY_OF_WEEK, item), int(which))
        else:
            plain |= _item(item, DAY_OF_WEEK)

    def days(year: int, month: int) -> list[int]:
        length = calendar.monthrange(year, month)[1]
        first = _eventbridge_weekday(year, month, 1)
        found = {day for day in range(1, length + 1) if (first + day - 2) % 7 + 1 in plain}
        for weekday in lasts:
            found.add(length - (_eventbridge_weekday(year, month, length) - weekday) % 7)
        if nth:
            weekday, which = nth
            day = 1 + (weekday - first) % 7 + 7 * (which - 1)
            if day <= length:
                found.add(day)
        return sorted(found)

    return days


def _eventbridge_weekday(year: int, month: int, day: int) -> int:
    """1 (Sunday) to 7 (Saturday)."""
    return (calendar.weekday(year, month, day) + 1) % 7 + 1


__all__ = ["Cron", "Rate", "parse"]
