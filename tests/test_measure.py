"""CostMeter: the peak memory a block adds, also in a process that held more memory before."""

import torch

from rrhf_lite.core.measure import CostMeter


def test_cost_meter_sees_a_100_mb_tensor_even_after_a_bigger_one_was_freed():
    big = [torch.ones(25_000_000) for _ in range(4)]  # 400 MB, freed again: the allocator may keep it for reuse
    del big
    with CostMeter() as cost:
        x = torch.ones(25_000_000)  # 100 MB (95.4 MiB)
        del x
    assert cost.device == "cuda" or 80 < cost.peak_memory_mb < 200, cost.as_dict()
    with CostMeter() as idle:
        pass
    assert idle.peak_memory_mb < 20, idle.as_dict()
    assert set(cost.as_dict()) == {"seconds", "peak_memory_mb", "memory_measured_on"}
