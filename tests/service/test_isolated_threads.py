"""Each isolated child computes with its share of the cores, so jobs running at once do not fight."""

import os

import torch

from service.queue.isolated import run_isolated, share_cores


def _threads() -> int:
    return torch.get_num_threads()


def test_each_child_gets_its_share_of_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    try:
        assert share_cores(2) == max(1, cores // 2)
        assert run_isolated(_threads) == max(1, cores // 2)
        assert share_cores(1) == cores
        assert run_isolated(_threads) == cores
    finally:
        share_cores(None)
