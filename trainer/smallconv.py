"""Convolutions on small feature maps as one matrix product, for training on a CPU.

TensorFlow's CPU convolution (oneDNN) is slow on maps of a few positions with many channels: it
spends its time on the kernel rather than the few output pixels. sd-v1's deepest levels are
exactly that (1280 channels on 2 x 2 and 4 x 4 maps at 128 px; on 8 x 8 at 512 px). Measured
here, 2 cores, batch 2, forward + input gradient: 3 x 3, 2560 -> 1280 channels on 2 x 2,
221 ms as KerasCV's convolution, 43 ms as one matrix product; 1280 -> 1280 on 4 x 4, 122 against
36 ms; 640 -> 640 on 8 x 8, 29 against 20 ms; but 320 -> 320 on 16 x 16, 13 against 31 ms.

So :func:`use_small_conv_matmul` rewrites only stride-1 convolutions whose output has at most
:data:`SMALL_MAP_POSITIONS` positions per image, as im2col: the k x k shifted views of the
padded input side by side, times the kernel reshaped to ``[k * k * in, out]``. It computes the
same function, equal to float rounding, from the same weights (variable paths and saved files
are unchanged). Larger maps and the strided downsampling convolutions keep KerasCV's. Like
:mod:`trainer.attention`, it switches an already built model's layers in place by class, and
can switch them back.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D

from trainer.attention import swap_layer_classes

__all__ = ["SMALL_MAP_POSITIONS", "MatmulPaddedConv2D", "use_small_conv_matmul"]

# Output positions per image up to which a convolution runs as a matrix product: 8 x 8, the
# largest map on which the product was faster in both directions (figures above).
SMALL_MAP_POSITIONS = 64


class MatmulPaddedConv2D(PaddedConv2D):  # type: ignore[misc]
    """KerasCV's ``PaddedConv2D`` that runs as im2col + one matmul on small maps."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        conv = self.conv2d
        x = self.padding2d(inputs)
        kh, kw = conv.kernel_size
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        if None in (height, width, channels) or conv.data_format != "channels_last":
            return conv(x)
        if tuple(conv.strides) != (1, 1):
            return conv(x)
        oh, ow = height - kh + 1, width - kw + 1
        if oh * ow > SMALL_MAP_POSITIONS or conv.dilation_rate != (1, 1) or conv.groups != 1:
            return conv(x)
        if kh == kw == 1:
            cols = x
        else:
            views = [x[:, i : i + oh, j : j + ow, :] for i in range(kh) for j in range(kw)]
            cols = tf.concat(views, axis=-1)
        # [kh, kw, in, out] flattens in the order the views are concatenated: (i, j, channel).
        kernel = tf.reshape(tf.cast(conv.kernel, cols.dtype), (kh * kw * channels, conv.filters))
        y = tf.matmul(tf.reshape(cols, (-1, kh * kw * channels)), kernel)
        y = tf.reshape(y, (-1, oh, ow, conv.filters))
        if conv.use_bias:
            y = tf.nn.bias_add(y, tf.cast(conv.bias, y.dtype))
        return conv.activation(y) if conv.activation is not None else y


def use_small_conv_matmul(model: keras.Model, on: bool = True) -> int:
    """Run ``model``'s small-map convolutions as matrix products (or back); returns how many."""
    return swap_layer_classes(model, {PaddedConv2D: MatmulPaddedConv2D}, on)
