"""The reference networks of SPEC.md section 8, written once in TensorFlow 1 graph style with the
checkpoints' variable names, so that a checkpoint restores into them as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IN_EPSILON = 1e-3  # the instance normalisation of the DPED code


@dataclass(frozen=True)
class Reference:
    """A checkpoint in models_pretrained/ and the network it holds."""

    name: str
    track: str
    checkpoint: str  # the checkpoint's prefix, relative to models_pretrained/
    kind: str  # resnet | vdsr
    blocks: int = 0
    channels: int = 0


REFERENCES = {
    r.name: r for r in (
        Reference("dped_resnet_12_64", "B", "dped_resnet_12_64", "resnet", 4, 64),
        Reference("dped_resnet_8_32", "B", "dped_resnet_8_32", "resnet", 2, 32),
        Reference("div2k_resnet_6_16", "A", "div2k_resnet_6_16", "resnet", 1, 16),
        Reference("div2k_vdsr", "A", "div2k_vgg19_vdsr.ckpt", "vdsr"),
    )
}


def _conv(tf: Any, x: Any, weights: Any, bias: Any) -> Any:
    return tf.nn.conv2d(x, weights, strides=[1, 1, 1, 1], padding="SAME") + bias


def _variable(tf: Any, name: str, shape: list[int]) -> Any:
    return tf.compat.v1.get_variable(name, shape, dtype=tf.float32)


def build_resnet(tf: Any, x: Any, blocks: int, channels: int) -> Any:
    """conv 9x9 3->C, ReLU; `blocks` x [conv 3x3, IN, ReLU, conv 3x3, IN, ReLU, + input];
    2 x [conv 3x3, ReLU]; conv 9x9 C->3; tanh * 0.58 + 0.5. Weights W1..Wn, b1..bn in layer
    order; the IN layers' shift then scale are Variable, Variable_1, ... in the order they run."""
    layer = iter(range(1, 2 * blocks + 5))
    norms = iter(range(2 * blocks))

    def conv(y: Any, size: int, c_in: int, c_out: int) -> Any:
        index = next(layer)
        return _conv(tf, y, _variable(tf, f"W{index}", [size, size, c_in, c_out]),
                     _variable(tf, f"b{index}", [c_out]))

    def instance_norm(y: Any) -> Any:
        index = 2 * next(norms)
        shift = _variable(tf, "Variable" if index == 0 else f"Variable_{index}", [channels])
        scale = _variable(tf, f"Variable_{index + 1}", [channels])
        mean, variance = tf.nn.moments(y, [1, 2], keepdims=True)
        return scale * (y - mean) / tf.sqrt(variance + IN_EPSILON) + shift

    with tf.compat.v1.variable_scope("generator"):
        y = tf.nn.relu(conv(x, 9, 3, channels))
        for _ in range(blocks):
            inner = tf.nn.relu(instance_norm(conv(y, 3, channels, channels)))
            y = tf.nn.relu(instance_norm(conv(inner, 3, channels, channels))) + y
        for _ in range(2):
            y = tf.nn.relu(conv(y, 3, channels, channels))
        return tf.nn.tanh(conv(y, 9, channels, 3)) * 0.58 + 0.5


VDSR_MIDDLE = 18


def build_vdsr(tf: Any, x: Any) -> Any:
    """VDSR on the grey image g of the input: conv 3x3 1->64, ReLU; 18 x [conv 3x3 64->64,
    ReLU]; conv 3x3 64->1; + g. The output is the input with its grey part replaced by the
    refined one: input - rgb(g) + rgb(refined g)."""
    grey = tf.image.rgb_to_grayscale(x)
    with tf.compat.v1.variable_scope("shared_model"):
        def conv(y: Any, index: int, c_in: int, c_out: int) -> Any:
            return _conv(tf, y, _variable(tf, f"conv_{index:02d}_w", [3, 3, c_in, c_out]),
                         _variable(tf, f"conv_{index:02d}_b", [c_out]))

        y = tf.nn.relu(conv(grey, 0, 1, 64))
        for index in range(1, VDSR_MIDDLE + 1):
            y = tf.nn.relu(conv(y, index, 64, 64))
        refined = conv(y, 20, 64, 1) + grey
    return x - tf.image.grayscale_to_rgb(grey) + tf.image.grayscale_to_rgb(refined)


def build(tf: Any, x: Any, reference: Reference) -> Any:
    if reference.kind == "resnet":
        return build_resnet(tf, x, reference.blocks, reference.channels)
    return build_vdsr(tf, x)
