"""make bench-gpu's script: on the CPU, the same code path the GPU run takes (train LoRA and QLoRA, predict
with both engines, export), on the tiny model, so the script is known to run before a GPU is lent; and
on CUDA where one is (marked gpu)."""

import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # trains models, runs the pipeline or stages in processes

ON_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
def test_bench_gpu_script_runs(tiny_model_dir, device):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/bench_gpu.py"), "--device", device, "--models", "tiny",
         "--smollm2", str(tiny_model_dir), "--steps", "2", "--batch-size", "4", "--questions", "6"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    precision = "float32" if device == "cpu" else ""
    for line in ("tiny lora: 2 steps", "tiny qlora: 2 steps", "QLoRA peak memory / LoRA peak memory",
                 f"tiny predict {precision}", "identical SQL", "exported model vs base + adapter: 6/6"):  # fmt: skip
        assert line in out, out
    if device == "cpu":
        for line in ("tiny predict float32 (sqlora engine)", "tiny predict float32 (transformers engine)",
                     "identical SQL float32, our engine vs generate(): 6/6"):  # fmt: skip
            assert line in out, out
    assert out.strip().endswith('{"result": "ok"}')
