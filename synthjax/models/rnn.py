"""Recurrent image models (Flax linen): PixelRNN with Row LSTM layers, DRAW, and a ConvLSTM encoder-forecaster.

* `PixelRNN` (van den Oord et al., 2016): a masked 7x7 input convolution
  (mask A), Row LSTM layers with residual connections, and 1x1 masked output
  layers (mask B). Its logits at pixel (i, j, colour c) depend only on pixels
  before it in raster order (rows, then columns, then R -> G -> B), so the
  likelihood is exact and sampling is pixel by pixel. `row_logits` runs the
  same network one row at a time from carried LSTM states; the sampler uses
  it so each new pixel costs one row, not one image.
* `DRAW` (Gregor et al., 2015): encoder and decoder LSTMs unrolled for T
  steps, a canvas accumulated by the decoder's writes, and Gaussian N x N
  read/write attention (or the whole image, without attention).
* `EncoderForecaster` (Shi et al., 2015): stacked ConvLSTMs read the context
  frames; a second stack, started from the encoder's states, generates the
  future frames without further input.

The noise of the latent-variable model is an argument, so every module is a
pure function and the trainer decides how randomness is drawn.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from synthjax.models import formulations
from synthjax.models.layers import depth_to_space, space_to_depth

Dtype = Any
Carry = tuple[jax.Array, jax.Array]  # (cell c, hidden h), both float32

MASK_TYPES = ("A", "B")


# --------------------------------------------------------------------------
# Convolution that differentiates fast on CPU.
# --------------------------------------------------------------------------
def conv2d(
    x_bhwc: jax.Array,
    kernel_hwio: jax.Array,
    padding: tuple[tuple[int, int], tuple[int, int]],
    taps: list[tuple[int, int]] | None = None,
    formulation: str | None = None,
) -> jax.Array:
    """Stride-1 convolution (NHWC input, HWIO kernel) with explicit (rows, columns) zero padding.

    'im2col' stacks the shifted windows along channels and does one matmul.
    It is the same function, but XLA:CPU differentiates it about 100x faster
    than its native convolution when the convolution sits inside a scan
    (measured: a 5x5, 80->256 ConvLSTM gate convolution, 1.8 s vs 160 s).
    `taps` lists the kernel positions that can be nonzero (a causal mask's);
    the others are skipped, which changes nothing but the work done.
    `formulation`: 'native' or 'im2col'; None: the 'recurrent' role's choice
    in `synthjax.models.formulations`.
    """
    formulation = formulation or formulations.plan()["recurrent"].formulation
    if formulation == "native":
        return jax.lax.conv_general_dilated(x_bhwc, kernel_hwio, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    kh, kw, cin, cout = kernel_hwio.shape
    taps = taps if taps is not None else [(i, j) for i in range(kh) for j in range(kw)]
    xp = jnp.pad(x_bhwc, ((0, 0), *padding, (0, 0)))
    h_out, w_out = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    windows = jnp.concatenate([xp[:, i : i + h_out, j : j + w_out] for i, j in taps], axis=-1)
    return windows @ jnp.concatenate([kernel_hwio[i, j] for i, j in taps], axis=0)


def lecun_normal_kernel(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """LeCun-normal init (truncated normal, variance 1/fan_in, fan_in = all axes but the last) for any kernel rank.

    `nn.initializers.lecun_normal()` for convolution kernels, drawn as a flat
    vector and reshaped: XLA:CPU takes ~2 s to compile a 4-D random draw and
    ~0.3 s for a 1-D one, per kernel shape. With JAX's default partitionable
    threefry the numbers are even the same as the 4-D draw's.
    """
    fan_in = int(np.prod(shape[:-1]))
    stddev = np.sqrt(1.0 / fan_in) / 0.87962566103423978  # the std of a unit normal truncated to [-2, 2]
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (int(np.prod(shape)),), jnp.float32) * stddev
    return flat.reshape(shape).astype(dtype)


# --------------------------------------------------------------------------
# Causal masks.
# --------------------------------------------------------------------------
def channel_groups(num_channels: int, colors: int) -> np.ndarray:
    """The colour (0 = R, 1 = G, 2 = B; all 0 for grey) each of `num_channels` feature channels belongs to.

    Channels form `colors` contiguous blocks, so an output layer with
    `colors * K` channels holds colour c's K logits at [c*K, (c+1)*K).
    """
    return np.arange(num_channels) * colors // num_channels


def causal_mask(kernel_hw: tuple[int, int], in_groups: np.ndarray, out_groups: np.ndarray, mask_type: str) -> np.ndarray:
    """0/1 mask (kh, kw, Cin, Cout) that keeps a convolution causal in raster order.

    Rows below the centre and pixels right of it are cut. At the centre pixel
    an output of colour g may read inputs of colour < g (mask 'A', the first
    layer, which must not see the pixel it predicts) or <= g (mask 'B', later
    layers, whose inputs at the centre are already causal features).
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type {mask_type!r}; valid: {MASK_TYPES}")
    kh, kw = kernel_hw
    ch, cw = kh // 2, kw // 2
    mask = np.ones((kh, kw, len(in_groups), len(out_groups)), np.float32)
    mask[ch + 1 :] = 0.0
    mask[ch, cw + 1 :] = 0.0
    visible = np.less if mask_type == "A" else np.less_equal
    mask[ch, cw] = visible(in_groups[:, None], out_groups[None, :])
    return mask


class MaskedConv(nn.Module):
    """A stride-1 'same' convolution whose kernel is multiplied by a causal mask.

    `out_tiles` splits the outputs into equal chunks grouped by colour each
    (the four LSTM gates, so gate unit u has the colour of hidden unit u).
    With `pad_rows=False` the rows are not padded: a window of kh rows gives
    the one output row at its centre (used by the row-at-a-time sampler).
    """

    features: int
    kernel_hw: tuple[int, int]
    mask_type: str
    colors: int = 1
    out_tiles: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jax.Array, pad_rows: bool = True) -> jax.Array:
        cin = x_bhwc.shape[-1]
        kernel = self.param("kernel", lecun_normal_kernel, (*self.kernel_hw, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        out_groups = np.tile(channel_groups(self.features // self.out_tiles, self.colors), self.out_tiles)
        mask = causal_mask(self.kernel_hw, channel_groups(cin, self.colors), out_groups, self.mask_type)
        kh, kw = self.kernel_hw
        rows = (kh // 2, kh // 2) if pad_rows else (0, 0)
        taps = [(int(i), int(j)) for i, j in zip(*np.nonzero(mask.any(axis=(2, 3))))]
        y = conv2d(x_bhwc.astype(self.dtype), (kernel * mask).astype(self.dtype), (rows, (kw // 2, kw // 2)), taps)
        return y + bias.astype(self.dtype)


# --------------------------------------------------------------------------
# PixelRNN (Row LSTM).
# --------------------------------------------------------------------------
def lstm_update(carry: Carry, gates: jax.Array) -> tuple[Carry, jax.Array]:
    """The LSTM cell update from pre-activation gates (..., 4h) in (input, forget, output, cell) order."""
    c, _ = carry
    i, f, o, g = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


def zeros_varying_like(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 zeros of `shape` that vary over the same mapped axes as `x`.

    Under `shard_map` a scan's initial carry must have the type of the carry
    the body returns, which varies over the data axis; zeros made from the
    batch carry that property, plain `jnp.zeros` does not.
    """
    return jnp.zeros_like(x, dtype=jnp.float32, shape=shape)


def zero_row_carries(layers: int, batch: int, width: int, hidden: int) -> list[Carry]:
    """The Row LSTM states above the first row: zeros for every layer."""
    zeros = jnp.zeros((batch, width, hidden), jnp.float32)
    return [(zeros, zeros) for _ in range(layers)]


class RowLSTM(nn.Module):
    """A Row LSTM layer: one LSTM step per image row, all pixels of a row at once.

    The input-to-state part is a 1 x k convolution along the row, masked (B)
    so a pixel reads only itself and its left neighbours; the state-to-state
    part is an unmasked 1-D convolution of width k over the previous row's
    hidden state. A pixel's state therefore sees a triangle of rows above it
    and, through its inputs, the pixels to its left.
    """

    hidden: int
    kernel: int = 3
    colors: int = 1
    dtype: Dtype = jnp.float32

    def setup(self):
        self.input_to_state = MaskedConv(4 * self.hidden, (1, self.kernel), "B", self.colors, 4, self.dtype)
        self.state_to_state = self.param(
            "state_to_state", lecun_normal_kernel, (self.kernel, self.hidden, 4 * self.hidden)
        )

    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        """Hidden states (B, H, W, hidden) of the whole image, scanning over rows."""
        gates_hbwg = jnp.swapaxes(self.input_to_state(x_bhwc), 0, 1)
        zeros = zeros_varying_like(x_bhwc, (x_bhwc.shape[0], x_bhwc.shape[2], self.hidden))
        carry = (zeros, zeros)
        w_ss = self.state_to_state  # read the parameter outside the scan: a plain array inside it
        _, h_hbwc = jax.lax.scan(lambda c, g: self._row(w_ss, c, g), carry, gates_hbwg)
        return jnp.swapaxes(h_hbwc, 0, 1)

    def step(self, carry: Carry, x_bwc: jax.Array) -> tuple[Carry, jax.Array]:
        """One row: the layer's input row (B, W, C) and the previous row's state -> the new state and h."""
        gates = self.input_to_state(x_bwc[:, None])[:, 0]
        return self._row(self.state_to_state, carry, gates)

    def _row(self, w_ss: jax.Array, carry: Carry, gates_is_bwg: jax.Array) -> tuple[Carry, jax.Array]:
        k = self.kernel
        # The width-k 1-D convolution over the previous row, as a 1 x k 2-D one on a 1-row image.
        gates_ss = conv2d(carry[1][:, None].astype(self.dtype), w_ss[None].astype(self.dtype), ((0, 0), (k // 2, k // 2)))[:, 0]
        return lstm_update(carry, gates_is_bwg.astype(jnp.float32) + gates_ss.astype(jnp.float32))


class PixelRNN(nn.Module):
    """Row LSTM PixelRNN: logits (B, H, W, colors, num_logits) of p(x_ij | pixels before it).

    The residual stream has 2*hidden channels (the paper's 2h); each Row LSTM
    layer's h features are projected back by a masked 1x1 convolution and
    added to the stream. Two ReLU + masked 1x1 layers give the logits: one
    Bernoulli logit or a 256-way softmax per colour channel.
    """

    hidden: int
    layers: int
    colors: int
    num_logits: int
    head_features: int
    kernel: int = 3
    input_kernel: int = 7
    dtype: Dtype = jnp.float32

    def setup(self):
        stream, c = 2 * self.hidden, self.colors
        self.input_conv = MaskedConv(stream, (self.input_kernel,) * 2, "A", c, dtype=self.dtype)
        self.row_lstms = [RowLSTM(self.hidden, self.kernel, c, self.dtype) for _ in range(self.layers)]
        self.projections = [MaskedConv(stream, (1, 1), "B", c, dtype=self.dtype) for _ in range(self.layers)]
        self.head_hidden = MaskedConv(self.head_features, (1, 1), "B", c, dtype=self.dtype)
        self.head_out = MaskedConv(c * self.num_logits, (1, 1), "B", c, dtype=self.dtype)

    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        """Teacher-forced logits for every pixel of images in [0, 1]."""
        s = self.input_conv(x_bhwc)
        for row_lstm, projection in zip(self.row_lstms, self.projections):
            s = s + projection(row_lstm(s))
        return self._head(s)

    def row_logits(self, canvas_bhwc: jax.Array, row: jax.Array, carries: list[Carry]) -> tuple[jax.Array, list[Carry]]:
        """Logits (B, W, colors, num_logits) of row `row` and the layers' states after it.

        `carries` are the layers' states after row `row - 1` of the same canvas
        (zeros above row 0). The logits equal `__call__(canvas)[:, row]`, and
        like them ignore what the canvas holds at and after each pixel.
        """
        pad = self.input_kernel // 2
        padded = jnp.pad(canvas_bhwc, ((0, 0), (pad, pad), (0, 0), (0, 0)))
        window = jax.lax.dynamic_slice_in_dim(padded, row, self.input_kernel, axis=1)
        s = self.input_conv(window, pad_rows=False)[:, 0]
        new_carries = []
        for row_lstm, projection, carry in zip(self.row_lstms, self.projections, carries):
            carry, h = row_lstm.step(carry, s)
            s = s + projection(h[:, None])[:, 0]
            new_carries.append(carry)
        return self._head(s[:, None])[:, 0], new_carries

    def _head(self, s_bhwc: jax.Array) -> jax.Array:
        y = self.head_out(nn.relu(self.head_hidden(nn.relu(s_bhwc))))
        return y.astype(jnp.float32).reshape((*y.shape[:-1], self.colors, self.num_logits))


# --------------------------------------------------------------------------
# DRAW.
# --------------------------------------------------------------------------
class LSTMCell(nn.Module):
    """A fully connected LSTM cell: one matmul of [x, h] to the four gates, then `lstm_update`.

    Carry (c, h) as in `flax.linen` cells. One fused gate matmul with LeCun
    init rather than `nn.OptimizedLSTMCell`, whose orthogonal initialiser
    alone costs ~1.5 s of XLA:CPU compile time per cell.
    """

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        inputs = jnp.concatenate([x.astype(jnp.float32), carry[1]], axis=-1)
        return lstm_update(carry, nn.Dense(4 * self.hidden, dtype=self.dtype, name="gates")(inputs))


def gaussian_filterbank(center: jax.Array, delta: jax.Array, sigma2: jax.Array, n: int, size: int) -> jax.Array:
    """DRAW's N x size filterbank (B, n, size): row i a Gaussian at center + (i - n/2 - 0.5) * delta.

    Each row is normalised to sum to one over the pixels (the paper's Z). A
    softmax over pixels computes exactly that, and stays exact when a
    Gaussian lies far outside the image, where exp() underflows to 0 / 0.
    `center`, `delta`, `sigma2` have shape (B, 1).
    """
    mu = center + (jnp.arange(1, n + 1, dtype=jnp.float32) - n / 2 - 0.5) * delta
    pixels = jnp.arange(size, dtype=jnp.float32)
    return jax.nn.softmax(-((pixels[None, None, :] - mu[:, :, None]) ** 2) / (2.0 * sigma2[:, :, None]), axis=-1)


def attention_filterbanks(params_b5: jax.Array, n: int, height: int, width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(F_Y (B, n, H), F_X (B, n, W), intensity gamma (B,)) from the 5 linear outputs of DRAW's attention head.

    The grid centre (g~X, g~Y) is scaled so that -1..1 spans the image, the
    stride and variance are log-parameterised, as in Gregor et al. (eq. 21-24).
    """
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = jnp.split(params_b5.astype(jnp.float32), 5, axis=-1)
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    delta = (max(height, width) - 1) / max(n - 1, 1) * jnp.exp(log_delta_t)
    sigma2 = jnp.exp(log_sigma2)
    fy = gaussian_filterbank(gy, delta, sigma2, n, height)
    fx = gaussian_filterbank(gx, delta, sigma2, n, width)
    return fy, fx, jnp.exp(log_gamma[:, 0])


class AttentionReader(nn.Module):
    """read(): gamma * F_Y x F_X^T of the image and of the error image, N x N glimpses of each."""

    n: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jax.Array, x_hat_bhwc: jax.Array, h_dec: jax.Array) -> jax.Array:
        _, height, width, _ = x_bhwc.shape
        fy, fx, gamma = attention_filterbanks(nn.Dense(5, dtype=self.dtype, name="attention")(h_dec), self.n, height, width)
        both = jnp.concatenate([x_bhwc, x_hat_bhwc], axis=-1)
        glimpse = jnp.einsum("bnh,bhwc,bmw->bnmc", fy, both, fx) * gamma[:, None, None, None]
        return glimpse.reshape((glimpse.shape[0], -1))


class FullReader(nn.Module):
    """read() without attention: the whole image and error image."""

    @nn.compact
    def __call__(self, x_bhwc: jax.Array, x_hat_bhwc: jax.Array, h_dec: jax.Array) -> jax.Array:
        return jnp.concatenate([x_bhwc, x_hat_bhwc], axis=-1).reshape((x_bhwc.shape[0], -1))


class AttentionWriter(nn.Module):
    """write(): an N x N patch from h_dec placed by 1/gamma * F_Y^T w F_X."""

    n: int
    image_shape: tuple[int, int, int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_dec: jax.Array) -> jax.Array:
        height, width, channels = self.image_shape
        fy, fx, gamma = attention_filterbanks(nn.Dense(5, dtype=self.dtype, name="attention")(h_dec), self.n, height, width)
        patch = nn.Dense(self.n * self.n * channels, dtype=self.dtype, name="patch")(h_dec).astype(jnp.float32)
        patch = patch.reshape((-1, self.n, self.n, channels))
        return jnp.einsum("bnh,bnmc,bmw->bhwc", fy, patch, fx) / gamma[:, None, None, None]


class FullWriter(nn.Module):
    """write() without attention: a linear map from h_dec to the whole canvas."""

    image_shape: tuple[int, int, int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h_dec: jax.Array) -> jax.Array:
        out = nn.Dense(int(np.prod(self.image_shape)), dtype=self.dtype, name="canvas")(h_dec).astype(jnp.float32)
        return out.reshape((-1, *self.image_shape))


class DRAW(nn.Module):
    """DRAW: T steps of read -> encoder LSTM -> q(z_t) -> decoder LSTM -> write onto the canvas.

    `__call__(x, eps)` returns the final canvas logits (B, H, W, C) and the
    per-step posterior (mu, logvar), each (T, B, latent); `generate(eps)` runs
    the decoder alone from prior noise and returns all T canvases' logits.
    """

    image_shape: tuple[int, int, int]
    steps: int
    hidden: int
    latent: int
    attention: bool = True
    read_n: int = 2
    write_n: int = 5
    dtype: Dtype = jnp.float32

    def setup(self):
        self.encoder = LSTMCell(self.hidden, self.dtype)
        self.decoder = LSTMCell(self.hidden, self.dtype)
        self.posterior = nn.Dense(2 * self.latent, dtype=self.dtype)
        if self.attention:
            self.reader = AttentionReader(self.read_n, self.dtype)
            self.writer = AttentionWriter(self.write_n, self.image_shape, self.dtype)
        else:
            self.reader = FullReader()
            self.writer = FullWriter(self.image_shape, self.dtype)

    def __call__(self, x_bhwc: jax.Array, eps_tbz: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        carry = (self._zero_canvas(x_bhwc), self._zero_lstm(x_bhwc), self._zero_lstm(x_bhwc))
        scan = nn.scan(
            lambda module, c, eps, x: module._infer_step(c, eps, x),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=(0, nn.broadcast),
        )
        (canvas, _, _), (mu, logvar) = scan(self, carry, eps_tbz, x_bhwc)
        return canvas, mu, logvar

    def generate(self, eps_tbz: jax.Array) -> jax.Array:
        """Canvas logits after each of the T decoder steps, (T, B, H, W, C), from latents eps ~ N(0, I)."""
        scan = nn.scan(
            lambda module, c, eps: module._generate_step(c, eps),
            variable_broadcast="params",
            split_rngs={"params": False},
        )
        _, canvases = scan(self, (self._zero_canvas(eps_tbz[0]), self._zero_lstm(eps_tbz[0])), eps_tbz)
        return canvases

    def _infer_step(self, carry, eps_bz, x_bhwc):
        canvas, enc_carry, dec_carry = carry
        h_dec = dec_carry[1]
        x_hat = x_bhwc - jax.nn.sigmoid(canvas)  # what the canvas still gets wrong
        r = self.reader(x_bhwc, x_hat, h_dec)
        enc_carry, h_enc = self.encoder(enc_carry, jnp.concatenate([r, h_dec], axis=-1))
        mu, logvar = jnp.split(self.posterior(h_enc).astype(jnp.float32), 2, axis=-1)
        z = mu + jnp.exp(0.5 * logvar) * eps_bz
        dec_carry, h_dec = self.decoder(dec_carry, z)
        return (canvas + self.writer(h_dec), enc_carry, dec_carry), (mu, logvar)

    def _generate_step(self, carry, eps_bz):
        canvas, dec_carry = carry
        dec_carry, h_dec = self.decoder(dec_carry, eps_bz)
        canvas = canvas + self.writer(h_dec)
        return (canvas, dec_carry), canvas

    def _zero_canvas(self, batch_ref: jax.Array) -> jax.Array:
        return zeros_varying_like(batch_ref, (batch_ref.shape[0], *self.image_shape))

    def _zero_lstm(self, batch_ref: jax.Array) -> Carry:
        zeros = zeros_varying_like(batch_ref, (batch_ref.shape[0], self.hidden))
        return zeros, zeros


# --------------------------------------------------------------------------
# ConvLSTM encoder-forecaster.
# --------------------------------------------------------------------------
class ConvLSTMCell(nn.Module):
    """Shi et al.'s ConvLSTM: gates from k x k convolutions of [input, h], with peephole weights on c.

    `x_bhwc` may be None (the forecaster has no input): the gates then come
    from the state alone.
    """

    hidden: int
    kernel: int = 5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry: Carry, x_bhwc: jax.Array | None) -> tuple[Carry, jax.Array]:
        c, h = carry
        inputs = h if x_bhwc is None else jnp.concatenate([x_bhwc.astype(h.dtype), h], axis=-1)
        k = self.kernel
        kernel = self.param("kernel", lecun_normal_kernel, (k, k, inputs.shape[-1], 4 * self.hidden))
        bias = self.param("bias", nn.initializers.zeros, (4 * self.hidden,))
        gates = conv2d(inputs.astype(self.dtype), kernel.astype(self.dtype), ((k // 2, k // 2),) * 2) + bias.astype(self.dtype)
        i, f, o, g = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
        # Hadamard peepholes W_ci, W_cf, W_co: one weight per position and channel, as in the paper.
        peep = self.param("peephole", nn.initializers.zeros, (3, *c.shape[1:]))
        c = jax.nn.sigmoid(f + peep[1] * c) * c + jax.nn.sigmoid(i + peep[0] * c) * jnp.tanh(g)
        h = jax.nn.sigmoid(o + peep[2] * c) * jnp.tanh(c)
        return (c, h), h


class ConvLSTMStack(nn.Module):
    """One time step through stacked ConvLSTM layers; returns the states and all layers' h concatenated."""

    hidden: int
    layers: int
    kernel: int = 5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carries: list[Carry], x_bhwc: jax.Array | None) -> tuple[list[Carry], jax.Array]:
        new_carries, outputs = [], []
        for i, carry in enumerate(carries):
            carry, x_bhwc = ConvLSTMCell(self.hidden, self.kernel, self.dtype, name=f"layer{i}")(carry, x_bhwc)
            new_carries.append(carry)
            outputs.append(x_bhwc)
        return new_carries, jnp.concatenate(outputs, axis=-1)


class EncoderForecaster(nn.Module):
    """Context frames (B, Tc, H, W, C) -> logits of the next `future` frames (B, Tf, H, W, C).

    Frames are cut into patch x patch blocks moved to channels (the paper's
    64x64 -> 16x16x16), an encoding stack reads them, the forecasting stack
    starts from its states, and a 1x1 layer on all forecaster layers' h gives
    each future frame's Bernoulli logits.
    """

    hidden: int
    layers: int
    future: int
    kernel: int = 5
    patch: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, context_bthwc: jax.Array) -> jax.Array:
        b, t, height, width, channels = context_bthwc.shape
        p = self.patch
        x = space_to_depth(context_bthwc.reshape((b * t, height, width, channels)), p)
        x = x.reshape((b, t, *x.shape[1:]))
        zeros = zeros_varying_like(x, (b, height // p, width // p, self.hidden))
        carries = [(zeros, zeros) for _ in range(self.layers)]
        scan_stack = nn.scan(ConvLSTMStack, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
        carries, _ = scan_stack(self.hidden, self.layers, self.kernel, self.dtype, name="encoder")(carries, x)
        forecast_stack = nn.scan(
            ConvLSTMStack, variable_broadcast="params", split_rngs={"params": False}, out_axes=1, length=self.future
        )
        _, h_bthwc = forecast_stack(self.hidden, self.layers, self.kernel, self.dtype, name="forecaster")(carries, None)
        logits = nn.Dense(p * p * channels, dtype=self.dtype, name="readout")(h_bthwc).astype(jnp.float32)
        frames = depth_to_space(logits.reshape((b * self.future, *logits.shape[2:])), p)
        return frames.reshape((b, self.future, height, width, channels))
