"""Test-session set-up shared by all test modules.

The test machines are small and shared: with several intra-op threads, every parallel region can
stall on a descheduled worker, which makes tiny ops take hundreds of milliseconds. The suite runs
single-threaded by default; the tests of the multi-threaded kernel paths set the thread count
themselves (see _utils.num_threads). TAYLORNET_TEST_THREADS=k runs the suite with k threads.
"""
import os

import torch


def pytest_configure(config):
    torch.set_num_threads(int(os.environ.get("TAYLORNET_TEST_THREADS", "1")))
