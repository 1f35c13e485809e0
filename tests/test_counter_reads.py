"""Reading NWOR's device counters without a host wait (``overlay/counter_reads.py``).

On the CPU a read lands at once; the GPU half (a read queued behind a busy stream is
neither waited for nor lost) is in ``test_reads_never_wait_behind_a_busy_stream``,
which runs only with CUDA."""

import pytest
import torch

from sglang_nwor_scv.counter_reads import CounterReads

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_reads_zero_the_counter_and_return_what_it_held(device):
    reads, counter = CounterReads(), torch.tensor([5, 5], dtype=torch.int64, device=device)
    assert reads.start(counter, staged=12)
    assert counter.tolist() == [0, 0]  # zeroed in stream order, after the copy
    counter += torch.tensor([3, 4], device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    assert reads.take_ready() == [(12, 5, 5)]
    assert reads.take_ready() == [] and reads.in_flight == 0


def test_two_reads_in_flight_then_the_counter_keeps_accumulating():
    """Both buffers busy: no third read starts, the counter is left untouched (nothing
    is lost), and the reads come back oldest first."""
    reads, counter = CounterReads(), torch.zeros(2, dtype=torch.int64)
    counter += 1
    assert reads.start(counter, staged=10)
    counter += 2
    assert reads.start(counter, staged=20)
    counter += 3
    assert not reads.start(counter, staged=30) and counter.tolist() == [3, 3]
    assert reads.in_flight == 2
    assert reads.take_ready() == [(10, 1, 1), (20, 2, 2)]
    assert reads.start(counter, staged=30) and reads.take_ready() == [(30, 3, 3)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reads_never_wait_behind_a_busy_stream():
    """A verify forward still running: start and take_ready return at once (torch's
    sync debug mode raises on any synchronizing call), the read is not taken before
    its copy has landed, and it is taken whole after."""
    reads = CounterReads()
    counter = torch.zeros(2, dtype=torch.int64, device="cuda")
    reads.start(counter, staged=0)  # first use allocates the pinned buffers
    torch.cuda.synchronize()
    reads.take_ready()
    counter += torch.tensor([7, 7], device="cuda")
    torch.cuda._sleep(200_000_000)  # keep the stream busy, as a verify forward would
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert reads.start(counter, staged=40)
        assert reads.take_ready() == []  # the copy sits behind the busy stream
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert reads.take_ready() == [(40, 7, 7)]
