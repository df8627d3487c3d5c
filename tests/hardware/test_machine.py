"""Machine facts (caches from sysfs, CPU, ISA path) and cold-cache timing (rotated copies, flushes)."""

from __future__ import annotations

import platform

import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.formats import native
from prunescope.hardware.machine import (
    FALLBACK_LLC_BYTES,
    _sysfs_caches,
    cache_flusher,
    llc_bytes,
    machine_facts,
    machine_line,
    parse_size,
)
from prunescope.hardware.timing import (
    Candidate,
    Rotation,
    TimingPolicy,
    check_cache_mode,
    cold_candidate,
    cold_copies,
    measure_interleaved,
    with_eviction,
)
from prunescope.latency import LatencyConfig


def test_parse_size_units():
    assert parse_size("32768K") == 32 * 2**20
    assert parse_size("32 MiB") == 32 * 2**20
    assert parse_size("512 KiB") == 512 * 2**10
    assert parse_size("480M") == 480 * 2**20
    assert parse_size("1048576") == 2**20
    assert parse_size("lots") is None


def _fake_cache(root, entries):
    for i, (level, kind, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")


def test_sysfs_caches_skip_instruction_caches_and_llc_is_the_largest(tmp_path):
    # the Intel Xeon of issue 17: 2 MiB L2 per core, 480 MiB L3
    _fake_cache(tmp_path, [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
                           (3, "Unified", "491520K")])  # fmt: skip
    caches = _sysfs_caches(tmp_path)
    assert caches == {"L1d": 48 * 2**10, "L2": 2 * 2**20, "L3": 480 * 2**20}
    assert llc_bytes(caches) == 480 * 2**20
    assert llc_bytes({}) == FALLBACK_LLC_BYTES
    assert _sysfs_caches(tmp_path / "missing") == {}


def test_machine_facts_name_the_machine():
    facts = machine_facts(torch.bfloat16, "cold", isa=native.resolve_kernel())
    assert facts["dtype"] == "bfloat16" and facts["cache"] == "cold"
    assert facts["isa"] in native.KERNELS and facts["threads"] == torch.get_num_threads()
    assert facts["llc_bytes"] > 0 and isinstance(facts["thp_mem_alloc"], bool)
    line = machine_line(facts)
    assert facts["cpu"] in line and "cold cache" in line and f"isa {facts['isa']}" in line
    if platform.system() == "Linux" and facts["caches_bytes"]:
        assert facts["llc_bytes"] == max(facts["caches_bytes"].values())


def test_cold_copies_total_exceeds_twice_the_llc():
    llc = 32 * 2**20
    for nbytes in (1, 4096, 10 * 2**20, 2**25, 2**26, 2**26 + 1, 10**9):
        k = cold_copies(nbytes, llc)
        assert k * nbytes > 2 * llc and (k - 1) * nbytes <= 2 * llc, nbytes
    assert cold_copies(10**9, llc) == 1 and cold_copies(0, llc) == 1


def test_rotation_calls_each_copy_in_turn():
    seen = []
    rotation = Rotation([lambda i=i: seen.append(i) for i in range(3)])
    for _ in range(7):
        rotation()
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(PrunescopeError):
        Rotation([])


def test_cold_candidate_rotates_large_sets_and_evicts_small_ones():
    made = []

    def make():
        made.append(len(made))
        return lambda: None

    big = cold_candidate(make, nbytes=10 * 2**20, llc=32 * 2**20, evict=lambda: None)
    assert len(made) == 7 and isinstance(big.run, Rotation) and big.setup is None
    made.clear()
    flushes = []
    small = cold_candidate(make, nbytes=1000, llc=32 * 2**20, evict=lambda: flushes.append(1))
    assert len(made) == 1 and small.setup is not None and small.setup_in_budget
    timing = measure_interleaved({"s": small}, TimingPolicy(warmup=1, min_time=0.0, min_repeats=4))["s"]
    assert timing.inner == 1 and len(flushes) == 1 + 4  # one eviction before every warm-up call and sample


def test_with_eviction_runs_the_setup_then_evicts():
    log = []
    candidate = with_eviction(
        Candidate(lambda: log.append("run"), lambda: log.append("prefill")), 1, lambda: log.append("evict")
    )
    assert not candidate.setup_in_budget  # the prefill setup is not timing budget
    candidate.setup()
    candidate.run()
    assert log == ["prefill", "evict", "run"]
    assert with_eviction(Candidate(lambda: None), 1, lambda: None).setup_in_budget


def test_flush_keeps_the_data_and_the_flusher_falls_back():
    t = torch.arange(100_000, dtype=torch.float32)
    before = t.clone()
    flushed = native.flush_cache([t])
    assert flushed == (native.available() and platform.machine() in ("x86_64", "AMD64", "i686"))
    assert torch.equal(t, before)
    cache_flusher([t], llc=2**20, flush_lines=native.flush_cache)()  # either path runs
    cache_flusher([t], llc=2**20)()  # without the native flush: streams a buffer
    assert torch.equal(t, before)


def test_cache_mode_is_checked():
    assert check_cache_mode(" HOT ") == "hot"
    with pytest.raises(PrunescopeError, match="cache mode"):
        check_cache_mode("warm")
    with pytest.raises(PrunescopeError, match="cache mode"):
        LatencyConfig(cache="lukewarm")
    with pytest.raises(PrunescopeError, match="auto"):
        LatencyConfig(auto_tokens=(0,))
    assert LatencyConfig().cache == "cold"


def test_bench_records_the_machine_and_the_cache_mode(tiny_model_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from prunescope.cli import app

    bad = CliRunner().invoke(app, ["bench", "--cache", "warm", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "cache mode" in bad.output
    out = tmp_path / "hot"
    args = ["bench", "--model", str(tiny_model_dir), "--formats", "bitmask", "--tokens", "1", "--layers-only"]
    args += ["--cache", "hot"]
    result = CliRunner().invoke(app, [*args, "--min-time", "0.001", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "hot cache" in result.output and "machine:" in result.output
    env = json.loads((out / "latency.json").read_text())["environment"]
    assert env["cache"] == "hot" and env["machine"]["cache"] == "hot"
    assert env["machine"]["llc_bytes"] > 0 and env["machine"]["isa"] in native.KERNELS


def test_evicted_microsecond_calls_take_a_bounded_number_of_samples():
    # a 10 us call after an eviction: the budget counts each sample as >= target_sample / 4
    clock = [0.0]

    def tick() -> float:
        return clock[0]

    def call() -> None:
        clock[0] += 1e-5

    policy = TimingPolicy(warmup=1, min_time=0.1, min_repeats=5, max_time=1.0)
    candidate = Candidate(call, setup=lambda: None, setup_in_budget=True)
    timing = measure_interleaved({"c": candidate}, policy, clock=tick)["c"]
    assert timing.repeats == 20 and timing.inner == 1  # 4 x min_repeats
    assert timing.median == pytest.approx(1e-5)


# ------------------------------------------------------------------------ GPU timing, tested with stubs


class _StubEvent:
    """A CUDA event on a fake GPU clock: `record()` stamps the stub's current time."""

    def __init__(self, gpu, enable_timing=False):
        assert enable_timing
        self.gpu = gpu
        self.at = None

    def record(self):
        self.at = self.gpu.now

    def synchronize(self):
        self.gpu.synced += 1

    def elapsed_time(self, end):
        return (end.at - self.at) * 1e3  # milliseconds, as CUDA reports them


class _StubCuda:
    def __init__(self, properties=None, capability=(8, 0)):
        self.now = 0.0
        self.synced = 0
        self.properties = properties
        self.capability = capability
        self.driver = "550.54.15"
        self.driver_cuda = "12.4"

    def Event(self, enable_timing=False):  # noqa: N802 - torch.cuda's name
        return _StubEvent(self, enable_timing)

    def get_device_properties(self, device=None):
        return self.properties

    def get_device_capability(self, device=None):
        return self.capability

    def is_available(self):
        return True


def _h200_properties(**overrides):
    from types import SimpleNamespace

    fields = dict(name="NVIDIA H200", major=9, minor=0, L2_cache_size=60 * 2**20, total_memory=141 * 2**30,
                  multi_processor_count=132)  # fmt: skip
    return SimpleNamespace(**(fields | overrides))


def test_cuda_event_timer_times_on_the_gpu_clock():
    from prunescope.hardware.timing import CudaEventTimer

    gpu = _StubCuda()

    def kernel():
        gpu.now += 0.002  # the GPU's time; the host clock does not move at all

    timer = CudaEventTimer(gpu)
    policy = TimingPolicy(warmup=1, min_time=0.0, min_repeats=3)
    timing = measure_interleaved({"k": Candidate(kernel)}, policy, clock=lambda: 0.0, timer=timer)["k"]
    assert timing.samples == pytest.approx((0.002, 0.002, 0.002)) and timing.inner == 1
    assert gpu.synced == 1 + 3  # one wait on the end event per sample (warm-up included)


def test_timer_choice_follows_the_device_and_an_injected_clock():
    from prunescope.hardware.timing import CudaEventTimer, WallTimer, device_sync, timer_for

    assert isinstance(timer_for(torch.device("cuda")), CudaEventTimer)  # built without touching a GPU
    assert isinstance(timer_for("cpu"), WallTimer)
    injected = timer_for("cuda", clock=lambda: 1.0)  # tests' fake clocks keep working on any device
    assert isinstance(injected, WallTimer) and injected.sync is torch.cuda.synchronize
    assert device_sync("cuda") is torch.cuda.synchronize and device_sync("cpu")() is None


def test_gpu_flush_buffer_exceeds_the_l2():
    from prunescope.hardware import gpu
    from prunescope.hardware.timing import GpuFlusher

    stub = _StubCuda(_h200_properties())
    assert gpu.l2_bytes(0, cuda=stub) == 60 * 2**20
    assert gpu.flush_bytes(60 * 2**20) == 120 * 2**20  # twice the L2, as a write-back cache needs
    assert gpu.flush_bytes(4 * 2**20) == 8 * 2**20  # a T4's 4 MiB
    assert gpu.flush_bytes(1024) == gpu.MIN_FLUSH_BYTES
    unknown = _StubCuda(_h200_properties(L2_cache_size=0))
    assert gpu.l2_bytes(0, cuda=unknown) == gpu.FALLBACK_L2_BYTES
    flusher = GpuFlusher(4096, "cpu")  # the same code on a CPU tensor: one write of the whole buffer
    flusher.buffer.fill_(7)
    flusher()
    assert flusher.buffer.numel() == 1024 and not flusher.buffer.any()


def test_gpu_flusher_is_sized_from_the_l2_and_shared(monkeypatch):
    from prunescope.hardware import gpu, timing

    monkeypatch.setattr(gpu, "l2_bytes", lambda device=None, cuda=None: 3 * 2**20)
    monkeypatch.setattr(timing, "_GPU_FLUSHERS", {})
    first = timing.gpu_flusher("cpu")
    assert first.nbytes == 8 * 2**20 and timing.gpu_flusher("cpu") is first


def test_cold_cache_on_cuda_flushes_the_l2_and_sizes_copies_from_it(monkeypatch):
    from prunescope.hardware import gpu, machine, timing

    monkeypatch.setattr(gpu, "l2_bytes", lambda device=None, cuda=None: 50 * 2**20)
    assert machine.last_level_cache("cuda") == 50 * 2**20
    assert machine.last_level_cache("cpu") == llc_bytes()
    sentinel = object()
    monkeypatch.setattr(timing, "gpu_flusher", lambda device: sentinel)
    assert cache_flusher([torch.ones(4)], 2**20, device="cuda") is sentinel


def test_gpu_facts_name_the_gpu(monkeypatch):
    from prunescope.hardware import gpu

    stub = _StubCuda(_h200_properties())
    facts = gpu.gpu_facts(0, cuda=stub)
    assert facts["name"] == "NVIDIA H200" and facts["compute_capability"] == "9.0"
    assert facts["l2_bytes"] == 60 * 2**20 and facts["memory_bytes"] == 141 * 2**30
    assert facts["driver"] == "550.54.15" and facts["driver_cuda"] == "12.4"
    assert facts["torch"] == torch.__version__ and facts["multiprocessors"] == 132
    line = gpu.gpu_line(facts)
    assert line.startswith("NVIDIA H200 (sm 9.0, L2 60 MiB, 141 GiB, driver 550.54.15")
    assert gpu.compute_capability(0, cuda=_StubCuda(capability=(7, 5))) == (7, 5)

    monkeypatch.setattr(gpu, "gpu_facts", lambda device, cuda=None: facts)
    machine = machine_facts(torch.float16, "cold", device="cuda")
    assert machine["gpu"] == facts and machine["isa"] is None
    assert machine_line(machine).startswith("NVIDIA H200 (sm 9.0")
    assert "gpu" not in machine_facts(torch.float16, "cold", device="cpu")
