"""A 2-process jax.distributed run on localhost CPU trains and agrees with a 1-process run.

Two worker processes (2 CPU devices each, mesh data=4, FSDP) each load only their rows of every global
batch and build the global arrays with `make_array_from_process_local_data`; gradients are all-reduced
and FSDP params all-gathered across the processes (gloo). A third subprocess runs the same training on a
single device. Losses, final params, EMA and eval sums must agree.
"""

import jax
import numpy as np
import portpicker
import pytest

from mp_launch import start_worker, worker_result


@pytest.mark.e2e
def test_two_processes_match_one_process():
  port = portpicker.pick_unused_port()
  workers = [start_worker("process", pid, port) for pid in (0, 1)]
  single = start_worker("multiprocess", 1)
  try:
    results = [worker_result(w, timeout=240) for w in workers]
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
  ref = worker_result(single)

  # Each process loaded a different half of the batch.
  assert [r["rows"] for r in results] == [[0, 8], [8, 16]]
  for r in results:  # both processes see the same global result
    np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(r["params"], ref["params"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r["ema"], ref["ema"], rtol=1e-4, atol=1e-6)
    assert r["eval"]["count"] == ref["eval"]["count"] == 13
    assert r["eval"]["correct1"] == ref["eval"]["correct1"]
    assert r["eval"]["loss_sum"] == pytest.approx(ref["eval"]["loss_sum"], rel=1e-5)
    assert all(r["is_finite"])
  assert abs(ref["losses"][-1] - ref["losses"][1]) > 1e-3  # a real trajectory, not a constant
  # FSDP really split the params across the 4 devices of the 2 processes.
  assert results[0]["specs"]["params/fc1/kernel"] == str(jax.sharding.PartitionSpec("data"))
