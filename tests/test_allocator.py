"""lira's glibc malloc settings: when they apply, and that they keep freed memory for reuse."""

import json
import os
import subprocess
import sys

import pytest

from lira import allocator, bench


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({}, "linux", True),
        ({"LIRA_MALLOC": "1"}, "linux", True),
        ({"LIRA_MALLOC": "0"}, "linux", False),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "linux", False),  # the user's own wins
        ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}, "linux", True),
        ({}, "darwin", False),
    ],
)  # fmt: skip
def test_wanted(environ, platform, expected):
    assert allocator.wanted(environ, platform) is expected


# Frees a 64 MiB block and allocates one again; counts the page faults the second one takes.
# numpy's own huge-page advice is turned off, as XLA's buffers have none.
_REUSE = """
import json, resource, numpy as np
import lira
from lira import allocator
np._core.multiarray._set_madvise_hugepage(False)
a = np.ones(16 << 20, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 << 20, np.float32)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": allocator.tuned, "faults": faults}))
"""


def _reuse(env):
    result = subprocess.run([sys.executable, "-c", _REUSE], capture_output=True, text=True, timeout=120,
                            env={**env, "GLIBC_TUNABLES": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_malloc_reuses_freed_memory():
    tuned, untuned = _reuse({**os.environ, "LIRA_MALLOC": "1"}), _reuse({**os.environ, "LIRA_MALLOC": "0"})
    assert tuned["tuned"] and not untuned["tuned"]
    pages = (64 << 20) // 4096
    assert untuned["faults"] > pages // 2  # glibc's default maps the block afresh: every page faults
    assert tuned["faults"] < pages // 20  # kept in the heap: touched before, no faults


def test_torch_worker_env():
    nchw = bench.Case("cnn32", "torch", 1, None, malloc="glibc")
    tuned = bench.Case("cnn32", "torch", 1, "channels_last", malloc="lira")
    assert nchw.name == "cnn32/torch/x1" and tuned.name == "cnn32/torch/x1/channels_last/lira-malloc"
    assert nchw.worker_env("PASSIVE") == {"OMP_WAIT_POLICY": "PASSIVE", "LIRA_MALLOC": "0"}
    assert tuned.worker_env() == {"LIRA_MALLOC": "1"}
    assert bench.Case("cnn32", "vmap", 1, "xla").worker_env() == {}  # the parent's own settings
