"""Small stand-ins the unit tests build model runners and attention backends from.

``Obj`` is a ``SimpleNamespace`` with identity semantics (hashable, equal only to
itself) that can be weakly referenced: the plugin keys its per-runner state and open
stages by the runner and backend objects (weak maps) instead of storing anything on
them, as real SGLang runners and backends allow; a plain ``SimpleNamespace`` is neither
hashable nor weakly referenceable. ``LaunchFails`` is a Triton kernel whose launch fails.
"""

from types import SimpleNamespace


class Obj(SimpleNamespace):
    """A SimpleNamespace that behaves like an ordinary object as a dictionary key."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__


class LaunchFails:
    """Test-only fault: a Triton kernel whose launch fails on this machine (a GPU or Triton
    build the CI never saw). Indexed by a grid it gives a launcher that raises before
    queueing anything, as Triton does when compiling fails."""

    def __init__(self, message: str = "injected: out of resource: shared memory"):
        self.calls, self.message = 0, message

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls += 1
            raise RuntimeError(self.message)
        return launch
