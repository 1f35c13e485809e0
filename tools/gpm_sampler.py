"""Sample GPU DRAM-bandwidth and SM utilisation with NVML GPM while a block of code runs.

Why: the sweep needs a whole-run view of how hard the GPU's memory system works under each
mode (NWOR writes fewer K/V rows, so DRAM bandwidth should drop), without Nsight Compute's
replay overhead. NVML's GPU Performance Monitoring (GPM, Hopper and newer) gives
`NVML_GPM_METRIC_DRAM_BW_UTIL` (percent of peak DRAM bandwidth) between two samples taken
more than 100 ms apart; a background thread takes one sample every ``interval_s`` and
turns each consecutive pair into one value per metric.

    with GpmSampler(device_index=0, interval_s=0.2) as gpm:
        run_the_workload()
    print(gpm.summary())  # {"dram_bw_util_pct": {"mean", "max", "n"}, "sm_util_pct": ..., ...}

Where GPM cannot be read (no nvidia-ml-py, no driver/GPU, GPM unsupported, MIG enabled) the
block still runs and ``summary()`` returns ``{"unsupported": "<reason>"}``: it never raises
for that. ``device_index`` is NVML's index (nvidia-smi order), which ignores
CUDA_VISIBLE_DEVICES.

Standalone check on a GPU box: ``python tools/gpm_sampler.py --seconds 2``.
"""

from __future__ import annotations

import json
import threading
import time

# metric name -> NVML_GPM_METRIC_* id (stable NVML numbering; see nvml.h)
METRICS = {"graphics_active_pct": 1, "dram_bw_util_pct": 10, "sm_util_pct": 2, "sm_occupancy_pct": 3}
MIN_INTERVAL_S = 0.1  # NVML: GPM samples must be more than 100 ms apart


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "max": None, "n": 0}
    return {"mean": sum(values) / len(values), "max": max(values), "n": len(values)}


class GpmSampler:
    """Context manager: GPM samples every ``interval_s`` seconds in a daemon thread."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.2):
        if interval_s <= MIN_INTERVAL_S:
            raise ValueError(f"interval_s must be > {MIN_INTERVAL_S} s (NVML GPM rule), got {interval_s}")
        self.device_index = device_index
        self.interval_s = interval_s
        self.values: dict[str, list[float]] = {name: [] for name in METRICS}
        self.metric_errors: dict[str, str] = {}
        self.unsupported: str | None = None
        self.error: str | None = None  # sampling started but failed later
        self._nv = None
        self._handle = None
        self._samples: list = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- setup: every reason GPM is unavailable ends here as a string, never an exception ----
    def _open(self) -> str | None:
        try:
            import pynvml as nv
        except ImportError:
            return "nvidia-ml-py (module pynvml) is not installed"
        if not hasattr(nv, "nvmlGpmSampleAlloc"):
            return "this nvidia-ml-py has no GPM bindings (needs nvidia-ml-py >= 12)"
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...
            return f"NVML did not initialise (no NVIDIA driver or GPU?): {exc}"
        self._nv = nv
        try:
            count = nv.nvmlDeviceGetCount()
            if self.device_index >= count:
                return f"NVML device index {self.device_index} out of range ({count} devices)"
            self._handle = nv.nvmlDeviceGetHandleByIndex(self.device_index)
            name = nv.nvmlDeviceGetName(self._handle)
            name = name.decode() if isinstance(name, bytes) else name
            try:
                mig_current = nv.nvmlDeviceGetMigMode(self._handle)[0]
            except Exception:  # not MIG-capable
                mig_current = 0
            if mig_current == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1):
                return f"MIG is enabled on {name}: this sampler reads whole-GPU GPM samples only"
            if not nv.nvmlGpmQueryDeviceSupport(self._handle).isSupportedDevice:
                return f"nvmlGpmQueryDeviceSupport : GPM not supported on {name} (needs Hopper or newer)"
            self._samples = [nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()]
            nv.nvmlGpmSampleGet(self._handle, self._samples[0])
        except Exception as exc:
            return f"GPM setup failed: {type(exc).__name__}: {exc}"
        return None

    def _metrics(self, older, newer) -> None:
        nv = self._nv
        get = nv.c_nvmlGpmMetricsGet_t()
        get.version = nv.NVML_GPM_METRICS_GET_VERSION
        get.numMetrics = len(METRICS)
        get.sample1, get.sample2 = older, newer
        for i, metric_id in enumerate(METRICS.values()):
            get.metrics[i].metricId = metric_id
        nv.nvmlGpmMetricsGet(get)
        for i, name in enumerate(METRICS):
            m = get.metrics[i]
            if m.nvmlReturn == nv.NVML_SUCCESS:
                self.values[name].append(float(m.value))
            else:
                self.metric_errors.setdefault(name, f"nvmlReturn {m.nvmlReturn}")

    def _run(self) -> None:
        nv, last = self._nv, time.monotonic()
        try:
            while True:
                stopping = self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - last)))
                if stopping and time.monotonic() - last <= MIN_INTERVAL_S:
                    return  # the tail is too short for a valid GPM pair
                nv.nvmlGpmSampleGet(self._handle, self._samples[1])
                last = time.monotonic()
                self._metrics(self._samples[0], self._samples[1])
                self._samples.reverse()  # the newer sample starts the next pair
                if stopping:
                    return
        except Exception as exc:
            self.error = f"sampling stopped: {type(exc).__name__}: {exc}"

    def __enter__(self) -> GpmSampler:
        self.unsupported = self._open()
        if self.unsupported is None:
            self._thread = threading.Thread(target=self._run, name="gpm-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        nv = self._nv
        if nv is not None:
            for sample in self._samples:
                try:
                    nv.nvmlGpmSampleFree(sample)
                except Exception:
                    pass
            try:
                nv.nvmlShutdown()
            except Exception:
                pass
        self._samples, self._nv = [], None

    def summary(self) -> dict:
        if self.unsupported is not None:
            return {"unsupported": self.unsupported}
        out = {name: _stats(vals) for name, vals in self.values.items()}
        out["interval_s"] = self.interval_s
        if self.metric_errors:
            out["metric_errors"] = dict(self.metric_errors)
        if self.error:
            out["error"] = self.error
        return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=int, default=0, help="NVML device index")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=0.2)
    args = ap.parse_args()
    with GpmSampler(args.device, args.interval) as gpm:
        time.sleep(args.seconds)
    print(json.dumps(gpm.summary(), indent=1))


if __name__ == "__main__":
    main()
