"""How a board's sequence stops, besides the ports' own failures::

    Exception
     ├── Fatal          the board fails here: retrying cannot help (quota, signature mismatch)
     ├── Quarantine     the board holds what it should not (a foreign OTP value, read twice)
     ├── Swapped        the board in the fixture is not the one being provisioned: touch nothing
     └── Parked         the station stops: the board waits at a safe point, its journal open

The ports raise their own: ProbeFailure (probe_worker.py), UartFailure and its SessionLost
(uart.py), CloudError (cloudserver/client.py), nuwire's ProtocolError.
"""

from __future__ import annotations


class Fatal(Exception):
    """The board fails here; retrying cannot help (quota, signature mismatch)."""


class Quarantine(Exception):
    """The board holds something it should not (a foreign OTP value): a person decides."""


class Swapped(Exception):
    """The board in the fixture is not the one being provisioned: stop, touch nothing."""


class Parked(Exception):
    """The station stops (SIGTERM, SIGINT, a reload that removes it): the board waits at a safe
    point with its journal open; the next start of the station resumes it."""
