"""Clocks for prefill and decode inside ``model.generate``.

``generate`` calls its stopping criteria once after every generated token, so the first
call marks the end of prefill (and of the first token's sampling) and each later call
the end of one decode step.

Two clocks, one per timing mode (``RunConfig.timing``):

* :class:`StepClock` (``batch``): a left-padded batch; on a GPU the clock is read after a
  synchronisation at every step.
* :class:`RequestClock` (``request``): one request at batch 1, serving-style — time to
  first token (from the processor's output on the device, through the vision tower and
  the prefill, to the first token) and time per output token.  On a GPU it records CUDA
  events (``torch.cuda.Event(enable_timing=True)``) on the current stream, with no
  synchronisation inside generation (one at the end, when the times are read); on a CPU
  ``time.perf_counter``.
"""

from __future__ import annotations

import threading
import time

import torch
from transformers import StoppingCriteria


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(StoppingCriteria):
    """A stopping criterion that never stops generation and records step times."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.start = 0.0
        self.stamps: list[float] = []

    def begin(self) -> None:
        _sync(self.device)
        self.stamps = []
        self.start = time.perf_counter()

    def __call__(self, input_ids, scores, **kwargs):
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    @property
    def prefill_s(self) -> float:
        return self.stamps[0] - self.start if self.stamps else float("nan")

    @property
    def decode_steps(self) -> int:
        return max(0, len(self.stamps) - 1)

    @property
    def decode_s(self) -> float:
        return self.stamps[-1] - self.stamps[0] if len(self.stamps) > 1 else 0.0


class RequestClock(StoppingCriteria):
    """A stopping criterion that never stops generation and times one request: CUDA
    events on a GPU, ``time.perf_counter`` on a CPU (see the module doc).  Same read-out
    as :class:`StepClock` (``prefill_s`` is the time to first token)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.cuda = device is not None and device.type == "cuda"
        self._events: list = []
        self._stamps: list[float] = []
        self._times: list[float] | None = None

    @property
    def timer(self) -> str:
        return "cuda_events" if self.cuda else "perf_counter"

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self._events.append(event)
        else:
            self._stamps.append(time.perf_counter())

    def begin(self) -> None:
        self._events, self._stamps, self._times = [], [], None
        self._mark()

    def __call__(self, input_ids, scores, **kwargs):
        self._mark()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def times(self) -> list[float]:
        """Seconds from :meth:`begin` to each generated token (synchronises once on a GPU)."""
        if self._times is None:
            if self.cuda:
                if self._events:
                    self._events[-1].synchronize()
                self._times = [self._events[0].elapsed_time(e) / 1000.0 for e in self._events[1:]]
            else:
                self._times = [t - self._stamps[0] for t in self._stamps[1:]]
        return self._times

    @property
    def prefill_s(self) -> float:
        t = self.times()
        return t[0] if t else float("nan")

    @property
    def decode_steps(self) -> int:
        return max(0, len(self.times()) - 1)

    @property
    def decode_s(self) -> float:
        t = self.times()
        return t[-1] - t[0] if len(t) > 1 else 0.0


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak on a GPU (summed over every GPU
    the model is placed on, for a model spread by ``device_map``); on the CPU the
    process's resident set size, sampled every millisecond by a thread (torch's CPU
    allocator keeps no peak counter).  ``kind`` says which one was read."""

    def __init__(self, device: torch.device, devices: list[torch.device] | None = None) -> None:
        self.device = device
        self.peak = 0
        gpus = [d for d in (devices or [device]) if d.type == "cuda"]
        self.gpus = list(dict.fromkeys(gpus)) or ([device] if device.type == "cuda" else [])
        if device.type == "cuda":
            self.kind = "cuda_max_allocated" if len(self.gpus) == 1 else f"cuda_max_allocated_sum_{len(self.gpus)}_gpus"
        else:
            self.kind = "process_rss_sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            for gpu in self.gpus:
                torch.cuda.reset_peak_memory_stats(gpu)
        else:
            import psutil

            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.001):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = sum(int(torch.cuda.max_memory_allocated(gpu)) for gpu in self.gpus)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            import psutil

            self.peak = max(self.peak, psutil.Process().memory_info().rss)
