"""Calibration activations between blocks (`capture.park`): on the CPU they stay where they are and the
block call runs where the sample was captured; the GPU side is in tests/hardware/test_cuda.py."""

from __future__ import annotations

import torch

from prunescope.layers import prunable_layers
from prunescope.pruning.capture import capture_block_inputs, find_blocks, park
from tests.helpers import tiny_opt


def test_cpu_hidden_states_are_not_copied_and_advance_through_the_block():
    hidden = torch.randn(1, 4, 8)
    assert park(hidden) is hidden
    model = tiny_opt()
    layers = prunable_layers(model)
    _, blocks = find_blocks(model, layers)
    inputs = capture_block_inputs(model, blocks[0], [torch.randint(0, 320, (1, 10))])
    item = inputs[0]
    assert item.device == torch.device("cpu")
    with torch.no_grad():
        expected = item.call(blocks[0])
        item.advance(blocks[0])
    assert torch.equal(item.hidden, expected)
