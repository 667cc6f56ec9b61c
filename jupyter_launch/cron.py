"""Cron expressions: five fields (minute hour day-of-month month day-of-week) with ranges, steps, lists and names,
and their next times in a time zone (``zoneinfo``).

``Cron("0 6 * * mon-fri").next_after(t, "Europe/Berlin")`` is the first 06:00 Berlin time on a weekday after ``t``
(a Unix time). As in Vixie cron, when both day fields are restricted a day matches either; ``7`` is Sunday too.
A wall time that does not exist (the hour skipped when clocks go forward) does not fire that day; a wall time that
happens twice (clocks going back) fires once, at its first occurrence.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import LocatedError

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, lowest, highest, names counted from lowest)
FIELDS = (("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
          ("month", 1, 12, MONTHS), ("day of week", 0, 7, DAYS))
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
SEARCH_YEARS = 5  # a valid expression with no time in this many years (Feb 30) has none


class CronError(LocatedError, ValueError):
    """An expression that is not five valid cron fields, or an unknown time zone: one line naming the field
    (``cron: minute: ...``, ``tz: ...``)."""

    def __init__(self, message: str, *, field: str = "cron"):
        super().__init__(message, field=field)


def _value(text: str, name: str, low: int, high: int, names: list[str] | None) -> int:
    word = text.lower()
    if names and word in names:
        return names.index(word) + (low if names is MONTHS else 0)
    if not word.isdigit():
        allowed = f" or a name ({names[0]}-{names[-1]})" if names else ""
        raise CronError(f"{name}: {text!r} is not a number from {low} to {high}{allowed}")
    value = int(word)
    if not low <= value <= high:
        raise CronError(f"{name}: {value} is out of range ({low}-{high})")
    return value


def _field(text: str, name: str, low: int, high: int, names: list[str] | None) -> tuple[frozenset[int], bool]:
    """The values ``text`` allows, and whether it is unrestricted (``*``)."""
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{name}: an empty item in {text!r}")
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: the step {step_text!r} must be a whole number above 0")
            step = int(step_text)
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = _value(a, name, low, high, names), _value(b, name, low, high, names)
            if first > last:
                raise CronError(f"{name}: the range {body!r} runs backwards")
        else:
            first = _value(body, name, low, high, names)
            last = high if slash else first
        values.update(range(first, last + 1, step))
    return frozenset(values), text == "*"


class Cron:
    """A parsed expression; ``CronError`` (a ``ValueError``) names the field that is wrong."""

    def __init__(self, expression: str):
        self.expression = expression
        text = MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"{expression!r} has {len(parts)} field(s); give five (minute hour day-of-month "
                            "month day-of-week), e.g. '0 6 * * *'")
        parsed = [_field(p, *spec) for p, spec in zip(parts, FIELDS)]
        (self.minutes, _), (self.hours, _), (self.days, any_day), (self.months, _), (dow, any_dow) = parsed
        self.weekdays = frozenset(d % 7 for d in dow)  # 7 is Sunday too
        self.any_day, self.any_weekday = any_day, any_dow
        self._hours = sorted(self.hours)
        self._minutes = sorted(self.minutes)

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        in_month, in_week = d.day in self.days, (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # only the restricted one counts (both '*': every day)
            return in_month and in_week
        return in_month or in_week

    def next_after(self, after: float, tz: str = "UTC") -> float | None:
        """The first time strictly after ``after`` (Unix seconds) this expression names in ``tz``; ``None`` if it
        names none in the next few years (``0 0 30 2 *``)."""
        zone = zone_info(tz)
        start = datetime.fromtimestamp(after, zone).replace(tzinfo=None)
        day = start.date()
        for _ in range(366 * SEARCH_YEARS):
            if self.day_matches(day):
                for hour in self._hours:
                    if day == start.date() and hour < start.hour:
                        continue
                    for minute in self._minutes:
                        wall = datetime(day.year, day.month, day.day, hour, minute)
                        if wall <= start:
                            continue
                        when = _existing(wall, zone)
                        if when is not None and when > after:
                            return when
            day += timedelta(days=1)
        return None

    def next_times(self, after: float, count: int, tz: str = "UTC") -> list[float]:
        out: list[float] = []
        while len(out) < count:
            nxt = self.next_after(after, tz)
            if nxt is None:
                break
            out.append(nxt)
            after = nxt
        return out


def _existing(wall: datetime, zone: ZoneInfo) -> float | None:
    """The Unix time of a wall-clock time in ``zone`` (its first occurrence), or ``None`` when the clocks skip it."""
    aware = wall.replace(tzinfo=zone, fold=0)
    ts = aware.timestamp()
    if datetime.fromtimestamp(ts, zone).replace(tzinfo=None) != wall:
        return None
    return ts


def zone_info(tz: str) -> ZoneInfo:
    """The time zone named ``tz`` (IANA, e.g. ``Europe/Berlin``); ``CronError`` naming ``tz`` otherwise."""
    if tz.upper() == "UTC":
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"{tz!r} is not a time zone (an IANA name such as Europe/Berlin, or UTC)",
                        field="tz") from None
