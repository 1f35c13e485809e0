"""Small stand-ins the unit tests build model runners and attention backends from.

``Obj`` is a ``SimpleNamespace`` with identity semantics (hashable, equal only to
itself) that can be weakly referenced: the plugin keys its per-runner state and open
stages by the runner and backend objects (weak maps) instead of storing anything on
them, as real SGLang runners and backends allow; a plain ``SimpleNamespace`` is neither
hashable nor weakly referenceable.
"""

from types import SimpleNamespace


class Obj(SimpleNamespace):
    """A SimpleNamespace that behaves like an ordinary object as a dictionary key."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__
