"""The benchmark command lines refuse what this machine cannot run, in one line."""

from __future__ import annotations

import importlib

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(("module", "device"), [("benchmarks.selection", "cuda"), ("benchmarks.prefill", "cuda:0")])
def test_benchmarks_refuse_a_cuda_device_the_machine_lacks(module, device, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        main(["--device", device])
    assert stop.value.code == 2 and f"--device {device}: this machine has no CUDA device" in capsys.readouterr().err
